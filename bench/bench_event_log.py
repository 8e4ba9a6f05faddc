"""Event bookkeeping per partition: one single-run backfill of a partitioned asset with a blocking and a
non-blocking check plus a downstream partitioned asset (tests/event_log_defs.py), for N partitions, on
Dagster's stock SQLite event log and on QTOS's batched one (dagster.yaml), each on a fresh instance, in the
same run of this script. Optionally also Dagster's Postgres event log with batching (--postgres, needs the
local server on 127.0.0.1:5432). Reports seconds per run and milliseconds per partition event (3 partition
events per partition: alpha, beta, gamma), and checks both stored every event.

    .venv/bin/python bench/bench_event_log.py [--partitions 1299] [--repeat 2] [--postgres]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STOCK_YAML = "telemetry: {enabled: false}\n"


def child(kind: str, n: int) -> None:
    """One run in this (fresh) process; prints seconds and the stored materialisation count."""
    import dagster as dg

    from tests.event_log_defs import run_range

    inst = dg.DagsterInstance.get()
    t0 = time.perf_counter()
    res = run_range(inst)
    dt = time.perf_counter() - t0
    stored = sum(len(inst.get_materialized_partitions(dg.AssetKey(k))) for k in ("alpha", "beta", "gamma"))
    print(f"RESULT {dt:.4f} {stored} {int(res.success)} {type(inst.event_log_storage).__name__}")


def measure(kind: str, n: int) -> tuple[float, int, bool, str]:
    home = Path(tempfile.mkdtemp(prefix=f"qtos-evlog-{kind}-"))
    env = {**os.environ, "DAGSTER_HOME": str(home), "QTOS_TOY_PARTITIONS": str(n),
           # identical Dagster settings for every storage: batches handed to storage, one planned event per asset
           "DAGSTER_EVENT_BATCH_SIZE": "10000", "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true"}
    if kind == "stock":
        (home / "dagster.yaml").write_text(STOCK_YAML)
    elif kind == "batched":
        (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    else:  # postgres
        from tests.pg import PG_HOST, PG_PORT, PG_USER, ensure_postgres, fresh_database

        ensure_postgres()
        db = fresh_database("evlog").rsplit("/", 1)[1]
        env.update(DAGSTER_PG_HOST=PG_HOST, DAGSTER_PG_PORT=str(PG_PORT), DAGSTER_PG_USER=PG_USER,
                   DAGSTER_PG_PASSWORD="unused-with-trust-auth", DAGSTER_PG_DB=db)
        (home / "dagster.yaml").write_text((REPO / "deploy" / "production" / "dagster.yaml").read_text())
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--partitions", str(n)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=3600)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT")), None)
    if line is None:
        raise SystemExit(f"{kind}: child failed:\n{out.stderr[-3000:]}")
    _, dt, stored, ok, cls = line.split()
    return float(dt), int(stored), ok == "1", cls


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--partitions", type=int, default=1299)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.partitions)
        return 0
    kinds = ["stock", "batched"] + (["postgres"] if args.postgres else [])
    n, events = args.partitions, 3 * args.partitions
    rows, ok = [], True
    for kind in kinds:
        runs = [measure(kind, n) for _ in range(args.repeat)]
        ok &= all(r[2] and r[1] == events for r in runs)
        rows.append((kind, runs[0][3], min(r[0] for r in runs), max(r[0] for r in runs)))
    print(f"\nsingle-run backfill of {n} partitions x 3 partitioned assets ({events} partition events), "
          f"best/worst of {args.repeat}")
    print(f"{'storage':<10}{'class':<34}{'run s (best)':>13}{'worst':>8}{'ms/event':>10}")
    for kind, cls, best, worst in rows:
        print(f"{kind:<10}{cls:<34}{best:>13.2f}{worst:>8.2f}{1000 * best / events:>10.2f}")
    stock = rows[0][2]
    for kind, _, best, _ in rows[1:]:
        print(f"{kind} vs stock: {stock / best:.1f}x faster per run")
    print("every event stored by every storage" if ok else "A RUN FAILED OR LOST EVENTS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
