"""The generated parts of docs/: the config reference (docs/config.md, from the config models) and the metric
formulas in docs/backtests.md (between markers, from ``qt_assets.backtests.metrics``' docstring, the formulas' one source);
then dbt's own docs of the feature library (``dbt docs generate``, offline, into dbt_features/target/).

    .venv/bin/python -m qt_jobs.docs          (make docs)      write them
    .venv/bin/python -m qt_jobs.docs --check                   exit 1 naming each stale page (a test does this)
    .venv/bin/python -m qt_jobs.docs --no-dbt                  the pages only"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import qt_assets.backtests.metrics
from qt_resources.config import REPO_ROOT
from qt_resources.config_reference import render

DOCS = REPO_ROOT / "docs"
BEGIN, END = "<!-- generated from qt_assets/backtests/metrics.py: begin -->", "<!-- generated: end -->"


def metrics_section() -> str:
    return f"{BEGIN}\n```text\n{qt_assets.backtests.metrics.__doc__.strip()}\n```\n{END}"


def pages() -> dict[Path, str]:
    """{page: its content as generated}."""
    backtests = (DOCS / "backtests.md").read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(backtests):
        raise SystemExit(f"docs/backtests.md has no {BEGIN} ... {END} block")
    return {DOCS / "config.md": render(), DOCS / "backtests.md": pattern.sub(lambda _: metrics_section(), backtests)}


def dbt_docs() -> Path:
    """``dbt docs generate`` for the project's warehouse (the catalog lists the tables a demo has built)."""
    from qt_assets.features.assets import dbt_env, dbt_project, dbt_resource
    from qt_resources.config import load_config

    cfg = load_config()
    project = dbt_project(cfg.warehouse_dir)
    with dbt_env(cfg.warehouse_dir):
        dbt_resource(project).cli(["docs", "generate"], target_path=Path("target")).wait()
    return project.project_dir / "target" / "index.html"


def stale() -> list[str]:
    return [str(p.relative_to(REPO_ROOT)) for p, text in pages().items() if p.read_text() != text]


if __name__ == "__main__":
    if "--check" in sys.argv:
        bad = stale()
        print("stale: " + ", ".join(bad) + " (run make docs)" if bad else "docs are current")
        sys.exit(1 if bad else 0)
    for page, text in pages().items():
        page.write_text(text)
        print(f"wrote {page.relative_to(REPO_ROOT)}")
    if "--no-dbt" not in sys.argv:
        print(f"dbt docs: {dbt_docs()} (make dbt-docs-ui serves them on http://127.0.0.1:8080)")
