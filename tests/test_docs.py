"""The README stays a front page (≤ 150 lines) and every relative link in it and in docs/ leads to a file (and,
with an anchor, to a heading of it)."""

import re

from tests.conftest import REPO

LINK = re.compile(r"\]\(([^)#\s]*)(#[^)\s]*)?\)")


def _anchor(heading: str) -> str:
    return "#" + re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_is_a_front_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move detail to docs/"


def test_every_relative_link_resolves():
    broken = []
    for page in [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target, anchor in LINK.findall(page.read_text()):
            if target.startswith(("http:", "https:", "mailto:")):
                continue
            path = (page.parent / target).resolve() if target else page
            if not path.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and path.suffix == ".md":
                anchors = {_anchor(h[2:].lstrip("#")) for h in path.read_text().splitlines() if h.startswith("#")}
                if anchor not in anchors:
                    broken.append(f"{page.name}: {target}{anchor}")
    assert not broken, broken
