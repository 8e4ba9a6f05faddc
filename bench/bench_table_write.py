"""The feature store's persistence floor: what writing the dbt models' tables costs, against the polars peer's whole
in-memory computation on the same warehouse, in one run.

Needs a warehouse built by `bench/bench_features.py --keep` (it prints its path; the defaults give 500 symbols x 20
years). The models' tables (the staging tables, features_daily, labels) are read into Arrow first (not timed), then
each is written `--repeat` times into a fresh DuckDB file with the dbt profile's settings (DuckDB's default threads =
the cores, memory_limit 512MB, preserve_insertion_order false), as dbt-duckdb writes a model's result
(`create table ... as select * from <arrow>`). For comparison, in the same run: features_daily written to Parquet
by DuckDB's COPY and by polars' write_parquet (the peer's own output format), and, first and in its own process as
`bench_features.py` runs it, the polars peer (`bench/features_polars_peer.py`) reading its inputs and computing
every feature and label. Prints the fastest of the repeats of each.

    .venv/bin/python bench/bench_features.py --keep --no-incremental      # prints "kept: <dir>"
    .venv/bin/python bench/bench_table_write.py <dir> [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
TABLES = ("stg_prices", "stg_benchmark", "stg_news_sentiment", "stg_insider_flow", "features_daily", "labels")
SETTINGS = "set memory_limit = '512MB'; set preserve_insertion_order = false"  # as dbt_features/profiles.yml


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("warehouse", type=Path, help="a warehouse kept by bench/bench_features.py --keep")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    import duckdb
    import polars as pl

    from bench_features import run_worker
    from qt_resources.config import load_config

    # the peer first, in its own process (as bench_features runs it), before this one holds the tables in memory
    lab = load_config(REPO / "qtos.yaml").label
    label = {"h": lab.horizon, "up": lab.up, "down": lab.down, "price": lab.price, "kind": lab.kind, "k": lab.vol_k}
    tmp = Path(tempfile.mkdtemp(prefix="qtos-bench-write-"))
    peer_runs = [run_worker("--peer-worker", args.warehouse, tmp / "peer.parquet", {"label": label})[0]
                 for _ in range(args.repeat)]
    if any(r is None for r in peer_runs):
        return 1
    peer_s = min(r["t"] for r in peer_runs)
    print("polars peer: read + every feature and label " + ", ".join(f"{r['t']:.2f}" for r in peer_runs) + " s",
          flush=True)

    src = duckdb.connect(str(args.warehouse / "qtos.duckdb"), read_only=True)
    data = {t: src.sql(f"select * from {t}").to_arrow_table() for t in TABLES}
    src.close()
    sizes = ", ".join(f"{t} {a.num_rows:,} x {a.num_columns} ({a.nbytes / 2**20:,.0f} MiB)" for t, a in data.items())
    print(f"warehouse {args.warehouse}: {sizes}"
          + f"; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)

    rows = []

    def to_table(name: str, db: str) -> float:
        def run():
            if db != ":memory:" and Path(db).exists():
                Path(db).unlink()
            con = duckdb.connect(db)
            con.execute(SETTINGS)
            arrow = data[name]  # noqa: F841 (read by DuckDB's replacement scan)
            con.execute(f"create table {name} as select * from arrow")
            con.execute("checkpoint")
            con.close()
        return best(run, args.repeat)

    for t in TABLES:
        rows.append((f"{t}: DuckDB table (file)", to_table(t, str(tmp / "w.duckdb"))))
        print(f"{rows[-1][0]}: {rows[-1][1]:.2f} s", flush=True)

    def copy_parquet():
        con = duckdb.connect()
        con.execute(SETTINGS)
        arrow = data["features_daily"]  # noqa: F841
        con.execute(f"copy (select * from arrow) to '{tmp / 'f.parquet'}' (format parquet)")
        con.close()
    rows.append(("features_daily: DuckDB COPY to Parquet", best(copy_parquet, args.repeat)))
    frame = pl.from_arrow(data["features_daily"])
    rows.append(("features_daily: polars write_parquet", best(lambda: frame.write_parquet(tmp / "p.parquet"),
                                                               args.repeat)))
    del frame

    for name, s in rows[len(TABLES):]:
        print(f"{name}: {s:.2f} s")
    floor = sum(s for name, s in rows[:len(TABLES)])
    print()
    print("| write | s (best of %d) |" % args.repeat)
    print("|---|---:|")
    for name, s in rows:
        print(f"| {name} | {s:.2f} |")
    print(f"| **the models' tables, written (sum)** | **{floor:.2f}** |")
    print(f"| polars peer: read + every feature and label, in memory | {peer_s:.2f} |")
    print()
    print(f"writing the models' tables alone takes {floor / peer_s:.2f}x the peer's whole computation")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
