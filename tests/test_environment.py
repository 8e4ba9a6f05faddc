"""The environment `make install` builds is the lock file's, whichever installer made it (uv, or pip when uv
cannot be had): every locked distribution at its locked version, nothing unlocked besides the project itself and
the installers."""

import re
from importlib import metadata

from tests.conftest import REPO

INSTALLERS = {"pip", "setuptools", "wheel", "uv"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_installed_versions_are_the_locked_ones():
    locked = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            locked[_norm(name)] = version
    installed = {_norm(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = {n: (v, installed.get(n)) for n, v in locked.items() if installed.get(n) != v}
    assert not wrong, f"locked vs installed: {wrong}"
    extra = sorted(set(installed) - set(locked) - INSTALLERS - {"qtos"})
    assert not extra, f"installed but not in requirements.lock: {extra}"
