"""``make demo``: materialise the whole graph offline for the configured session range, in one run, and
print the time per stage and where to look. Usage: ``python -m qt_jobs.demo [--start S --end E]``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from qt_resources.config import REPO_ROOT


def ensure_dagster_home() -> Path:
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    link = home / "dagster.yaml"
    if not link.exists():
        link.symlink_to(REPO_ROOT / "dagster.yaml")
    return home


def full_graph_job():
    from qt_jobs.definitions import defs
    from qt_jobs.jobs import FULL_GRAPH

    return defs.resolve_job_def(FULL_GRAPH)


def run_full_graph(start: str | None = None, end: str | None = None, instance=None, log_level: str = "INFO",
                   executor: str = "in_process"):
    """Execute ``full_graph`` over [start, end] (default: every configured session) in one run.
    ``executor``: in_process (the job's default) or multiprocess."""
    import dagster as dg

    job = full_graph_job()
    keys = job.partitions_def.get_partition_keys()
    start, end = start or keys[0], end or keys[-1]
    tags = {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}
    instance = instance or dg.DagsterInstance.get()
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}},
                  "execution": {"config": {executor: {}}}}
    return dg.execute_job(dg.reconstructable(full_graph_job), instance=instance, tags=tags,
                          run_config=run_config), instance


def step_times(instance, run_id: str) -> list[tuple[str, str, float]]:
    stats = sorted(instance.get_run_step_stats(run_id), key=lambda s: s.start_time or 0)
    return [(s.step_key, s.status.value, (s.end_time or 0) - (s.start_time or 0)) for s in stats]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--start")
    ap.add_argument("--end")
    args = ap.parse_args(argv)
    home = ensure_dagster_home()
    t0 = time.perf_counter()
    result, instance = run_full_graph(args.start, args.end)
    wall = time.perf_counter() - t0
    print("\nQTOS demo: full_graph run", result.run_id, "SUCCESS" if result.success else "FAILED")
    print(f"{'stage':<28}{'status':<10}{'seconds':>8}")
    for step, status, dur in step_times(instance, result.run_id):
        print(f"{step:<28}{status:<10}{dur:>8.1f}")
    print(f"{'total (incl. start-up)':<38}{wall:>8.1f}")
    if not result.success:
        return 1
    from qt_resources.config import load_config

    c = load_config()
    reports = sorted(c.reports_dir.glob("backtest_*.png"), key=lambda p: p.stat().st_mtime)
    print(f"""
Where to look
  Dagster UI : DAGSTER_HOME={home} .venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000
  MLflow UI  : .venv/bin/mlflow ui --backend-store-uri sqlite:///{c.mlflow_dir / 'mlflow.db'} --host 127.0.0.1 --port 5000
  Backtest   : {reports[-1] if reports else '(none)'}
  Warehouse  : {c.warehouse_dir} (Parquet per session, qtos.duckdb, paper_broker.sqlite)
""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
