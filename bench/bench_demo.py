"""Time the demo's stages (research run over every configured session, then the trading run over the
out-of-sample sessions), once with the in-process executor (the jobs' default) and once with Dagster's
multiprocess executor (its stock default), in the same run of this script, each on a fresh warehouse /
MLflow store / Dagster instance.

    .venv/bin/python bench/bench_demo.py [--start 2007-01-03 --end 2013-02-28]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def one_run(executor: str, start: str | None, end: str | None) -> tuple[float, list, bool]:
    import dagster as dg

    tmp = Path(tempfile.mkdtemp(prefix=f"qtos-bench-{executor}-"))
    raw = yaml.safe_load((REPO / "qtos.yaml").read_text())
    raw["storage"] = {"warehouse_dir": str(tmp / "warehouse"), "mlflow_dir": str(tmp / "mlflow"),
                      "reports_dir": str(tmp / "reports")}
    (tmp / "qtos.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (tmp / "home").mkdir()
    shutil.copy(REPO / "dagster.yaml", tmp / "home" / "dagster.yaml")
    os.environ["QTOS_CONFIG"] = str(tmp / "qtos.yaml")
    os.environ["DAGSTER_HOME"] = str(tmp / "home")
    for mod in [m for m in sys.modules if m.startswith("qt_jobs.definitions")]:
        del sys.modules[mod]  # reload definitions against this run's config
    from qt_jobs.demo import RESEARCH_GROUPS, TRADING_GROUPS, out_of_sample_start, run_full_graph, step_times

    t0 = time.perf_counter()
    steps, ok = [], True
    with dg.DagsterInstance.get() as instance:
        for groups, s, e in ((RESEARCH_GROUPS, start, end), (TRADING_GROUPS, max(out_of_sample_start(), start or ""), end)):
            result, _ = run_full_graph(s, e, instance=instance, log_level="WARNING", executor=executor, groups=groups)
            steps += step_times(instance, result.run_id)
            ok &= result.success
        wall = time.perf_counter() - t0
    shutil.rmtree(tmp, ignore_errors=True)
    return wall, steps, ok


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--start")
    ap.add_argument("--end")
    args = ap.parse_args()
    results = {ex: one_run(ex, args.start, args.end) for ex in ("in_process", "multiprocess")}
    names = [s[0] for s in results["in_process"][1]]
    print(f"\n{'stage':<26}{'in_process s':>14}{'multiprocess s':>16}")
    for name in names:
        cells = [{s[0]: s[2] for s in results[ex][1]}.get(name, float("nan")) for ex in results]
        print(f"{name:<26}{cells[0]:>14.1f}{cells[1]:>16.1f}")
    print(f"{'wall (2 runs + start-up)':<26}{results['in_process'][0]:>14.1f}{results['multiprocess'][0]:>16.1f}")
    ok = all(r[2] for r in results.values())
    print("both runs succeeded" if ok else "A RUN FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
