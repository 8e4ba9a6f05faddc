"""Backfill of ~252 sessions x 5 symbols (AAPL, GOOG, IBM, MSFT and FB, listed mid-range) of the bundled
provider: one single run over the range (BackfillPolicy.single_run) vs one run per partition, both timed
here on fresh storage, through the same `prices_backfill` job and a persistent SQLite Dagster instance.

    .venv/bin/python bench/bench_backfill.py [--start 2012-02-29 --end 2013-02-28]
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


def fresh(tag: str, start: str, end: str):
    import dagster as dg

    tmp = Path(tempfile.mkdtemp(prefix=f"qtos-backfill-{tag}-"))
    raw = yaml.safe_load((REPO / "qtos.yaml").read_text())
    raw["universe"] = {"symbols": ["AAPL", "GOOG", "IBM", "MSFT", "FB"], "benchmark": "equal_weight"}
    raw["data"] = {"provider": "bundled", "start": start, "end": end}
    raw["research"]["split"]["train_end"] = end[:4] + "-01-31"
    raw["storage"] = {k: str(tmp / k) for k in ("warehouse_dir", "mlflow_dir", "reports_dir")}
    (tmp / "qtos.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (tmp / "home").mkdir()
    shutil.copy(REPO / "dagster.yaml", tmp / "home" / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(tmp / "home")
    from qt_jobs.definitions import load_definitions

    defs = load_definitions(str(tmp / "qtos.yaml"))
    return tmp, defs.resolve_job_def("prices_backfill"), dg.DagsterInstance.get()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--start", default="2012-02-29")
    ap.add_argument("--end", default="2013-02-28")
    args = ap.parse_args()
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

    tmp, job, inst = fresh("single", args.start, args.end)
    keys = job.partitions_def.get_partition_keys()
    t0 = time.perf_counter()
    res = job.execute_in_process(instance=inst, run_config=quiet,
                                 tags={"dagster/asset_partition_range_start": keys[0],
                                       "dagster/asset_partition_range_end": keys[-1]})
    single = time.perf_counter() - t0
    files_single = len(list((tmp / "warehouse_dir" / "prices").glob("session=*/data.parquet")))
    ok = res.success
    shutil.rmtree(tmp, ignore_errors=True)

    tmp, job, inst = fresh("per-partition", args.start, args.end)
    t0 = time.perf_counter()
    for k in keys:
        ok &= job.execute_in_process(instance=inst, run_config=quiet, partition_key=k).success
    per = time.perf_counter() - t0
    files_per = len(list((tmp / "warehouse_dir" / "prices").glob("session=*/data.parquet")))
    shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nbackfill of {len(keys)} sessions x 5 symbols ({keys[0]}..{keys[-1]})")
    print(f"{'mode':<22}{'runs':>6}{'seconds':>10}{'s/session':>11}{'files':>7}")
    print(f"{'single run (range)':<22}{1:>6}{single:>10.1f}{single / len(keys):>11.3f}{files_single:>7}")
    print(f"{'one run per partition':<22}{len(keys):>6}{per:>10.1f}{per / len(keys):>11.3f}{files_per:>7}")
    print(f"speed-up: {per / single:.1f}x; all runs succeeded: {ok}")
    return 0 if ok and files_single == files_per == len(keys) else 1


if __name__ == "__main__":
    sys.exit(main())
