"""`make install` as a newcomer meets it: a clean clone of HEAD and an empty package cache (uv's and pip's), timed;
then the venv's size, what fills it, a second `make install`, the test environment (`make install-test`) and,
with --demo, the first `make demo` and the venv after it. The baseline, measured in the same run: pip installing
the same lock into a new venv with no cache (what `make install` did before uv, and still does without uv).

    .venv/bin/python bench/bench_install.py [--runs 2] [--demo] [--no-pip]

Each run uses its own clone and its own empty caches under a temporary folder (removed afterwards)."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def du(path: Path, suffix: str = "") -> int:
    """Bytes on disk (as du counts them) of the files under path, or of those ending in suffix."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            if f.endswith(suffix):
                try:
                    total += os.lstat(os.path.join(root, f)).st_blocks * 512
                except OSError:
                    pass
    return total


def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return time.perf_counter() - t0


def clone(into: Path) -> Path:
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(into)], check=True)
    return into


# what each heavy distribution of the default install is there for (the floor of its size)
NEEDED_BY = r"""
import os, re, sys
from importlib import metadata
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
from packaging.requirements import Requirement
need, todo = {}, [("qtos", None)]
while todo:
    name, parent = todo.pop()
    if name in need:
        need[name].add(parent)
        continue
    need[name] = {parent}
    for spec in metadata.distribution(name).requires or []:
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append((norm(req.name), name))
def size(d):
    s = 0
    for f in d.files or []:
        try: s += os.path.getsize(d.locate_file(f))
        except OSError: pass
    return s
rows = sorted(((size(metadata.distribution(n)), n, p) for n, p in need.items()), reverse=True)
print(f"TOTAL {sum(r[0] for r in rows)} {len(rows)}")
for s, n, p in rows[:int(sys.argv[1])]:
    print(f"{s} {n} {','.join(sorted(p, key=lambda x: (x != 'qtos', x)))}")
"""


def one_run(i: int, tmp: Path, demo: bool) -> dict:
    repo = clone(tmp / f"clone{i}")
    env = {**os.environ, "UV_CACHE_DIR": str(tmp / f"uv-cache{i}"), "PIP_NO_CACHE_DIR": "1"}
    out = {"install": timed(["make", "install"], repo, env)}
    venv = repo / ".venv"
    out["venv"], out["pyc"] = du(venv), du(venv, ".pyc")
    out["again"] = timed(["make", "install"], repo, env)
    top = subprocess.run([str(venv / "bin" / "python"), "-c", NEEDED_BY, "15"], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    out["files"], out["dists"] = (int(x) for x in top[0].split()[1:])
    out["top"] = [line.split() for line in top[1:]]
    if demo:
        out["demo"] = timed(["make", "demo"], repo, env)
        out["venv_after_demo"], out["pyc_after_demo"] = du(venv), du(venv, ".pyc")
    out["install_test"] = timed(["make", "install-test"], repo, env)
    out["venv_test"] = du(venv)
    return out


def pip_baseline(i: int, tmp: Path) -> tuple[float, int]:
    """The same lock, default install, with pip into a new venv, no cache: the fallback and the old way."""
    repo = clone(tmp / f"pip{i}")
    env = {**os.environ, "PIP_NO_CACHE_DIR": "1"}
    t = timed(["python3", "-m", "venv", ".venv"], repo, env)
    t += timed([".venv/bin/pip", "install", "--quiet", "--disable-pip-version-check", "-c", "requirements.lock",
                "-e", "."], repo, env)
    return t, du(repo / ".venv")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--demo", action="store_true", help="also time the first make demo and size the venv after it")
    ap.add_argument("--no-pip", action="store_true", help="skip the pip baseline")
    args = ap.parse_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    print(f"make install on a clean clone of {head.strip()} with empty caches, {args.runs} run(s); "
          f"{os.cpu_count()} cores; load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="qtos-install-") as d:
        tmp = Path(d)
        runs = [one_run(i, tmp, args.demo) for i in range(args.runs)]
        pips = [] if args.no_pip else [pip_baseline(i, tmp) for i in range(args.runs)]
    for i, r in enumerate(runs):
        print(f"\nrun {i + 1}: make install {r['install']:.1f} s (cold caches); again {r['again']:.2f} s; "
              f"venv {gb(r['venv'])} ({gb(r['pyc'])} of it .pyc)")
        if "demo" in r:
            print(f"       first make demo {r['demo']:.1f} s; venv after it {gb(r['venv_after_demo'])} "
                  f"({gb(r['pyc_after_demo'])} .pyc written by the imports)")
        print(f"       make install-test (adds the test extra) {r['install_test']:.1f} s; test venv {gb(r['venv_test'])}")
    for i, (t, size) in enumerate(pips):
        print(f"baseline {i + 1}: pip, same lock, default install, no cache: {t:.1f} s, venv {gb(size)}")
    if pips:
        ratio = sum(t for t, _ in pips) / sum(r["install"] for r in runs)
        print(f"pip / make install: {ratio:.1f}x")
    r = runs[-1]
    print(f"\nthe default install's {r['dists']} distributions: {gb(r['files'])} of files before any .pyc "
          f"(the floor of its size); the largest, and what needs each:")
    for size, name, parent in r["top"]:
        print(f"  {int(size) / 1e6:7.1f} MB  {name:<22} <- {parent.replace(',', ', ')}")


if __name__ == "__main__":
    main()
