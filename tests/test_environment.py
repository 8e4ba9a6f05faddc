"""The environment `make install` builds is the lock file's, whichever installer made it (uv, or pip when uv
cannot be had): every distribution the installed extras need, at its locked version, and nothing unlocked besides
the project itself and the installers. The default install (the demo and the UIs) carries none of the extras'
packages, and loads the definitions on its own."""

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPO

INSTALLERS = {"pip", "setuptools", "wheel", "uv"}
# what only an extra may bring (pyproject.toml): the GPU build of xgboost alone was 700 MB of the 2.6 GB default
NOT_DEFAULT = {"dagster-celery", "celery", "redis", "kombu", "dagster-postgres", "psycopg2-binary", "alpaca-py",
               "yfinance", "curl-cffi", "openai", "selenium", "pytest", "pytest-xdist", "backtesting", "xgboost",
               "nvidia-nccl-cu12"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked() -> dict[str, str]:
    locked = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].split(";")[0].strip()
        if line:
            name, _, version = line.partition("==")
            locked[_norm(name)] = version.strip()
    return locked


def _requires(dist_name: str, extras: set[str]) -> list[Requirement]:
    out = []
    for spec in metadata.distribution(dist_name).requires or []:
        req = Requirement(spec)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
            out.append(req)
    return out


def closure(root: str = "qtos", extras: frozenset[str] = frozenset()) -> dict[str, set[str]]:
    """Every distribution ``root[extras]`` needs, from the installed metadata: {name: the extras asked of it}.
    Raises PackageNotFoundError naming a needed distribution that is not installed."""
    need: dict[str, set[str]] = {}
    todo = [(_norm(root), set(extras))]
    while todo:
        name, ex = todo.pop()
        if name in need and ex <= need[name]:
            continue
        need.setdefault(name, set()).update(ex)
        for req in _requires(name, need[name]):
            todo.append((_norm(req.name), set(req.extras)))
    return need


def test_installed_versions_are_the_locked_ones():
    locked = _locked()
    installed = {_norm(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = {n: (locked.get(n), v) for n, v in installed.items() if n in locked and locked[n] != v}
    assert not wrong, f"locked vs installed: {wrong}"
    extra = sorted(set(installed) - set(locked) - INSTALLERS - {"qtos"})
    assert not extra, f"installed but not in requirements.lock: {extra}"
    # the test extra (what `make test` installs) is complete: every distribution it needs is installed and locked
    needed = set(closure("qtos", frozenset({"test"}))) - {"qtos"}
    assert not needed - set(locked), f"needed but not locked: {sorted(needed - set(locked))}"


def test_the_default_install_has_no_extra_packages():
    default = set(closure("qtos"))
    assert not default & NOT_DEFAULT, f"in the default install: {sorted(default & NOT_DEFAULT)}"
    with_test = set(closure("qtos", frozenset({"test"})))
    assert {"dagster-celery", "selenium", "alpaca-py", "openai", "dagster-postgres"} <= with_test


def test_every_extra_is_locked():
    """`make lock` resolves every extra: installing any of them with -c requirements.lock adds no unlocked version."""
    locked = _locked()
    extras = metadata.distribution("qtos").metadata.get_all("Provides-Extra") or []
    assert {"live", "production", "dev", "test", "bench"} <= set(extras)
    unlocked = {}
    for extra in extras:
        for req in _requires("qtos", {extra}):
            if _norm(req.name) != "qtos" and _norm(req.name) not in locked:
                unlocked.setdefault(extra, []).append(req.name)
    assert not unlocked, f"extras with unlocked requirements: {unlocked}"


def _uv() -> str | None:
    local = REPO / ".tools" / "bin" / "uv"
    return str(local) if local.exists() else shutil.which("uv")


@pytest.mark.skipif(_uv() is None, reason="uv is not installed (make install fell back to pip)")
def test_the_default_install_loads_the_graph_and_names_the_missing_extra(tmp_path):
    """A venv with the default install only (uv, offline from the cache `make install` filled) loads the
    definitions of the shipped qtos.yaml; a config selecting Alpaca is refused naming the extra; the scale-out job
    is in the graph and says what to install."""
    uv, venv = _uv(), tmp_path / "venv"
    env = {**os.environ, "UV_NO_PROGRESS": "1"}
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, env=env, timeout=120)
    r = subprocess.run([uv, "pip", "install", "--quiet", "--offline", "--python", str(venv / "bin" / "python"),
                        "-c", str(REPO / "requirements.lock"), "-e", str(REPO)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    installed = subprocess.run([str(venv / "bin" / "python"), "-c",
                                "from importlib import metadata; print('\\n'.join(d.metadata['Name'] for d in "
                                "metadata.distributions()))"], capture_output=True, text=True, check=True).stdout
    assert not {_norm(n) for n in installed.split()} & NOT_DEFAULT
    alpaca = tmp_path / "alpaca.yaml"
    alpaca.write_text((REPO / "qtos.yaml").read_text().replace("broker: {kind: paper,", "broker: {kind: alpaca,"))
    script = f"""
import dagster as dg
from qt_jobs.definitions import load_definitions
from qt_resources.config import ConfigError
defs = load_definitions()
job = defs.resolve_job_def("spine_celery")
try:
    job.executor_def.executor_creation_fn(None)  # what a launch of the job calls first
except dg.DagsterInvariantViolationError as exc:
    print("CELERY:", exc)
try:
    load_definitions({str(alpaca)!r})
except ConfigError as exc:
    print("ALPACA:", exc)
"""
    r = subprocess.run([str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "DAGSTER_HOME": str(tmp_path)}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "CELERY: job spine_celery needs dagster-celery, which is in the 'production' extra" in r.stdout, r.stdout
    assert "broker.kind: 'alpaca' needs alpaca-py, which is in the 'live' extra" in r.stdout, r.stdout
    assert "make install EXTRAS=live" in r.stdout
