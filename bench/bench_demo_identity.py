"""Are the demo's outputs bit-identical between two commits? For a refactor that must not change behaviour
(e.g. the move to stage packages): run ``make demo``'s runs on REF and on the working tree, each from its own
checkout, on a fresh warehouse / MLflow store / Dagster instance, and compare everything they wrote:

* every Parquet partition, every table of ``qtos.duckdb`` and ``paper_broker.sqlite``: row by row, floats by
  their exact repr (so 1 ulp differs);
* the backtest reports (trades.csv and the equity PNGs): byte by byte;
* every asset materialisation's and check's metadata in the Dagster event log (per asset, partition and key);
* every MLflow run's params and metrics (by experiment and run name; logged models are compared through the
  scores and metrics they produce, since their pickles name the module a class lives in).

Both demos write to the same folder (moved aside after each run), so paths and the config fingerprint are the
same. Differences that are not behaviour are normalised, and listed in ``VOLATILE`` with the reason: run ids,
timestamps, durations and the audit log's hash chain (it hashes timestamps); tables are compared as sets of
rows (DuckDB's threads insert in any order).

    .venv/bin/python bench/bench_demo_identity.py [--ref HEAD] [--keep]

Prints one line per compared output kind and every difference (at most 20 per kind); exits 1 on a difference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PY = REPO / ".venv" / "bin" / "python"

# what is not behaviour, by output kind: (pattern of the column / metadata key / param, why)
VOLATILE = {
    "column": [(r"^(ts|created_at|updated_at|submitted_at|filled_at|recorded_at|decided_at|at|timestamp|"
                r"fetched_at|reconciled_at|materialized_at)$", "wall-clock time of the run"),
               (r"^(run_id|dagster_run_id|mlflow_run_id)$", "run ids are random"),
               (r"^(hash|prev_hash|chain)$", "the audit chain hashes timestamps")],
    "metadata": [(r"(seconds|duration|_s$|elapsed|per_second|ms$|rss)", "timings"),
                 (r"(run_id|mlflow_run|dagster/run)", "run ids are random"),
                 (r"(timestamp|_at$|^at$|when)", "wall-clock time"),
                 (r"(code_version|data_version)", "Dagster hashes of the run's inputs and code location")],
    "param": [(r"(run_id|git|source|path|uri|dir)", "where the run was made"),
              (r"(seconds|duration|timestamp)", "timings")],
}


def volatile(kind: str, name: str) -> bool:
    return any(re.search(p, name, re.IGNORECASE) for p, _ in VOLATILE[kind])


def run_demo(src: Path, out: Path) -> float:
    """``python -m qt_jobs.demo`` from checkout ``src`` (its own packages first on the path) into ``out``."""
    raw = yaml.safe_load((src / "qtos.yaml").read_text())
    raw["storage"] = {"warehouse_dir": str(out / "warehouse"), "mlflow_dir": str(out / "mlflow"),
                      "reports_dir": str(out / "reports")}
    (out / "home").mkdir(parents=True)
    (out / "qtos.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    shutil.copy(src / "dagster.yaml", out / "home" / "dagster.yaml")
    env = {**os.environ, "PYTHONPATH": str(src), "QTOS_CONFIG": str(out / "qtos.yaml"),
           "DAGSTER_HOME": str(out / "home")}
    t0 = time.perf_counter()
    with open(out / "demo.log", "w") as log:
        rc = subprocess.run([str(PY), "-m", "qt_jobs.demo"], cwd=src, env=env, stdout=log, stderr=subprocess.STDOUT)
    if rc.returncode:
        raise SystemExit(f"the demo of {src} failed: see {out / 'demo.log'}")
    return time.perf_counter() - t0


def _cell(v, out: Path) -> str:
    import pandas as pd

    if isinstance(v, float):
        return repr(v)
    try:
        if v is None or pd.isna(v) is True:
            return "NA"
    except (TypeError, ValueError):  # arrays, lists
        pass
    return _scrub(str(v).replace(str(out), "<OUT>"))


def _frame_lines(df, out: Path) -> list[str]:
    cols = [c for c in df.columns if not volatile("column", str(c))]
    df = df[cols]
    lines = ["|".join(_cell(v, out) for v in row) for row in df.itertuples(index=False)]
    return [",".join(map(str, cols))] + lines


def tables(out: Path) -> dict[str, str]:
    """Every table the run stored -> a digest of its rows (volatile columns left out)."""
    import duckdb
    import pandas as pd

    res: dict[str, str] = {}
    wh = out / "warehouse"
    for p in sorted(wh.rglob("*.parquet")):
        res[str(p.relative_to(out))] = _digest(_frame_lines(pd.read_parquet(p), out))
    for db in sorted(wh.rglob("*.duckdb")):
        con = duckdb.connect(str(db), read_only=True)
        for (schema, name) in con.execute("select table_schema, table_name from information_schema.tables "
                                          "order by 1, 2").fetchall():
            df = con.execute(f'select * from "{schema}"."{name}"').df()
            res[f"{db.relative_to(out)}:{schema}.{name}"] = _digest(_frame_lines(df, out))
        con.close()
    for db in sorted(wh.rglob("*.sqlite")):
        con = sqlite3.connect(db)
        for (name,) in con.execute("select name from sqlite_master where type = 'table' order by 1").fetchall():
            df = pd.read_sql_query(f'select * from "{name}"', con)
            res[f"{db.relative_to(out)}:{name}"] = _digest(_frame_lines(df, out))
        con.close()
    for p in sorted((out / "reports").rglob("*")):
        if p.is_file():
            res[str(p.relative_to(out))] = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    return res


def _digest(lines: list[str]) -> str:
    """The header, then the rows sorted: a table's row order is not behaviour (DuckDB stores a set; its threads
    insert in any order)."""
    return hashlib.sha256("\n".join(lines[:1] + sorted(lines[1:])).encode()).hexdigest()[:16] + f" ({len(lines) - 1} rows)"


def metadata(out: Path) -> dict[str, str]:
    """(asset, partition, metadata key) -> value, from every materialisation and check evaluation."""
    res: dict[str, str] = {}
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(out / "home")
    with dg.DagsterInstance.get() as inst:
        for etype in (dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            recs = inst.get_event_records(dg.EventRecordsFilter(event_type=etype), limit=10_000_000)
            for r in recs:
                ev = r.event_log_entry.dagster_event
                data = ev.event_specific_data
                if etype == dg.DagsterEventType.ASSET_MATERIALIZATION:
                    m = data.materialization
                    key, part, md = m.asset_key.to_user_string(), m.partition or "", m.metadata
                else:
                    key = f"{data.asset_key.to_user_string()}:{data.check_name}"
                    part, md = data.partition or "", {**data.metadata, "passed": dg.MetadataValue.bool(data.passed)}
                for k, v in md.items():
                    if volatile("metadata", k):
                        continue
                    val = getattr(v, "value", v)
                    if isinstance(val, float):
                        val = repr(val)
                    text = json.dumps(val, sort_keys=True, default=str) if not isinstance(val, str) else val
                    res[f"{key}[{part}].{k}"] = _scrub(text.replace(str(out), "<OUT>"))
    return res


_RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\b[0-9a-f]{32}\b")
_CLOCK = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?(\+00:00|Z)?")


def _scrub(text: str) -> str:
    """Run ids and wall-clock instants inside a value (e.g. a report's path or a 'decided at' line)."""
    return _CLOCK.sub("<TIME>", _RUN_ID.sub("<ID>", text))


def mlflow_runs(out: Path) -> dict[str, str]:
    """(experiment, run name, param/metric) -> value, from the tracking store's database."""
    res: dict[str, str] = {}
    con = sqlite3.connect(out / "mlflow" / "mlflow.db")
    q = """select e.name, r.name, r.run_uuid from runs r join experiments e using (experiment_id)"""
    names: dict[tuple, int] = {}
    for exp, run, uuid in sorted(con.execute(q).fetchall(), key=lambda x: (x[0], x[1] or "")):
        run = re.sub(r"-[0-9a-f]{8}$", "-<RUN>", run or "")  # run names end in the Dagster run id's prefix
        n = names[(exp, run)] = names.get((exp, run), -1) + 1
        at = f"{exp}/{run}#{n}"
        for k, v in con.execute("select key, value from params where run_uuid = ?", (uuid,)):
            if not volatile("param", k):
                res[f"{at}.param.{k}"] = _scrub(str(v).replace(str(out), "<OUT>"))
        for k, v, step in con.execute("select key, value, step from metrics where run_uuid = ? order by key, step",
                                      (uuid,)):
            if not volatile("metadata", k):
                res[f"{at}.metric.{k}@{step}"] = repr(float(v))
    return res


def compare(kind: str, a: dict[str, str], b: dict[str, str]) -> int:
    keys = sorted(set(a) | set(b))
    diffs = [k for k in keys if a.get(k) != b.get(k)]
    print(f"{kind:<10} {len(keys):>8} compared  {len(diffs):>5} differ")
    for k in diffs[:20]:
        print(f"   {k}: {a.get(k, '<missing>')} -> {b.get(k, '<missing>')}")
    return len(diffs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default="HEAD", help="the commit to compare the working tree with (default HEAD)")
    ap.add_argument("--keep", action="store_true", help="keep the two output directories")
    ap.add_argument("--outputs", nargs=2, metavar=("A", "B"), help="only compare two finished demo outputs")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="qtos-identity-"))
    if args.outputs:
        a_out, b_out = map(Path, args.outputs)
    else:
        sha = subprocess.check_output(["git", "rev-parse", args.ref], cwd=REPO, text=True).strip()
        src = tmp / "ref-src"
        subprocess.run(["git", "worktree", "add", "--detach", str(src), sha], cwd=REPO, check=True,
                       capture_output=True)
        a_out, b_out = tmp / "ref", tmp / "tree"
        try:  # both into the same folder, then moved aside: the paths (in the config fingerprint) are the same
            ta = run_demo(src, tmp / "out")
            (tmp / "out").rename(a_out)
            tb = run_demo(REPO, tmp / "out")
            (tmp / "out").rename(b_out)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(src)], cwd=REPO, capture_output=True)
        print(f"demo of {args.ref} ({sha[:10]}): {ta:.0f} s; of the working tree: {tb:.0f} s")
    n = compare("tables", tables(a_out), tables(b_out))
    n += compare("metadata", metadata(a_out), metadata(b_out))
    n += compare("mlflow", mlflow_runs(a_out), mlflow_runs(b_out))
    print("bit-identical" if n == 0 else f"{n} differences")
    if not args.keep and not args.outputs:
        shutil.rmtree(tmp, ignore_errors=True)
    elif not args.outputs:
        print(f"outputs kept in {tmp}")
    return 1 if n else 0


if __name__ == "__main__":
    sys.exit(main())
