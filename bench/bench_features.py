"""Features + labels at scale: the dbt models vs a polars peer and a per-symbol pandas reference, on a seeded
synthetic universe.

Generates N symbols x Y years of XNYS sessions (default 500 x 20 = 2.5 M rows) of realistic daily bars (market
factor + idiosyncratic GBM, consistent OHLC, lognormal volume, dividends and splits in the adjustment factor),
an equal-weight benchmark and, when `sources.yml` declares them, the alternative-data tables `news_sentiment`
and `insider_flow` (every (symbol, session) pair, as their assets write them). Then, in the same run and each in
its own subprocess (so each one's peak RSS is its own):

  * dbt:    `dbt run` of every model of the project (stg_prices, benchmark_daily, features_daily, labels, ...)
            against a fresh DuckDB file, with the vars the Dagster asset passes (`qt_assets/features/assets.py`).
            `dbt parse` runs first (untimed, printed): the timed run starts from a parsed project, as the
            Dagster asset's runs do (the project's manifest is prepared when the code location loads);
            `--tests` also times `dbt test`;
  * polars: the peer a quant would write today (`bench/features_polars_peer.py`, written from the column docs
            without reading the project's implementation): lazy Parquet scans, `.over("symbol")` windows,
            SMA-seeded `ewm_mean`, per-session ranks; read + compute timed, then (separately) writing its
            features and labels to Parquet, i.e. persisting them as a feature store must;
  * pandas: the per-symbol numpy/pandas reference of `tests/qt_assets/features/test_features.py` (`reference`,
            `cross_sectional_ranks`, `alt_reference`: imported, not re-implemented) plus the labels in pandas,
            from the same Parquet files (read through `DuckDBWarehouse.read_partitions`, as the assets do).

The dbt output is compared with the pandas reference and with the polars peer over every row (NULL positions, max
abs / relative difference per column). Last, the next session is appended (one new partition per table) and
`dbt run` is timed again: the staging models, features_daily and labels are incremental, so this is the daily path
(`--no-incremental` skips it; it is repeated `--incremental-runs` times from the same state, median reported).
The goals of issue 20 are printed at the end.

Layout: the warehouse stores one Parquet file per session (`<table>/session=YYYY-MM-DD/data.parquet`); the
default `--layout year` writes one file per year into the same glob (`<table>/session=YYYY/data.parquet`),
`--layout session` writes the production layout (~5,000 files per table). Timings are wall clock on a shared
machine: the script prints the load average before and after; run it with nothing else running.

    .venv/bin/python bench/bench_features.py [--symbols 500 --years 20 --seed 7] [--layout year|session]
                                             [--tests] [--quick] [--baseline-symbols N] [--no-incremental]
                                             [--incremental-runs 5]
                                             [--no-peer] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DBT_DIR = REPO / "dbt_features"
KEYS = ("symbol", "session")
ALT_TABLES = ("news_sentiment", "insider_flow")


def hwm_mb(pid: int | str = "self") -> float:
    """Peak RSS (VmHWM) of a live process, MiB. Not getrusage's ru_maxrss: Linux carries the forking parent's
    RSS over fork + exec into the child's maxrss, which would charge this script's arrays to dbt and pandas."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


# ------------------------------------------------------------------------------------------------ data
def source_tables() -> list[str]:
    import yaml

    src = yaml.safe_load((DBT_DIR / "models" / "staging" / "sources.yml").read_text())
    return [t["name"] for s in src["sources"] for t in s.get("tables", [])]


def make_universe(n_symbols: int, years: int, seed: int, end: str = "2023-12-29"):
    """Seeded synthetic bars in the canonical PRICE_COLUMNS shape (session = ISO string), as an Arrow table
    sorted by (session, symbol), plus the equal-weight benchmark and the session list: the XNYS sessions of
    `years` calendar years ending at `end`, and one more (the next session, for the incremental run)."""
    import pyarrow as pa

    from qt_resources.calendar import sessions as xnys_sessions

    start = f"{int(end[:4]) - years + 1}-01-01"
    n_main = len(xnys_sessions(start, end))
    sess = np.array(xnys_sessions(start, (np.datetime64(end) + np.timedelta64(10, "D")).astype(str))[:n_main + 1])
    T, N = len(sess), n_symbols
    rng = np.random.default_rng(seed)
    # market factor with a slowly varying volatility regime; per-symbol drift, beta, idiosyncratic vol
    regime = np.exp(np.cumsum(rng.normal(0, 0.02, T)) * 0.5)
    regime = regime / regime.mean()
    r_m = rng.normal(0.0003, 0.010, T) * regime
    beta = rng.uniform(0.4, 1.6, N)
    alpha = rng.normal(0.0, 0.0002, N)
    sig_i = rng.uniform(0.008, 0.025, N)
    r = alpha + r_m[:, None] * beta + rng.standard_normal((T, N)) * sig_i * regime[:, None]  # log returns
    adj_close = rng.lognormal(np.log(40), 0.8, N) * np.exp(np.cumsum(r, axis=0))
    sig_t = np.sqrt((beta * 0.010) ** 2 + sig_i ** 2) * regime[:, None]
    gap = rng.normal(0, 0.3, (T, N)) * sig_t
    prev = np.vstack([adj_close[:1] * np.exp(-r[:1]), adj_close[:-1]])
    adj_open = prev * np.exp(gap)
    top, bot = np.maximum(adj_open, adj_close), np.minimum(adj_open, adj_close)
    adj_high = top * np.exp(np.abs(rng.normal(0, 0.5, (T, N))) * sig_t)
    adj_low = bot * np.exp(-np.abs(rng.normal(0, 0.5, (T, N))) * sig_t)
    # adjustment factor f_t = adj / raw: quarterly dividends and 0-2 splits per symbol, applied to earlier bars
    step = np.ones((T, N))
    q = rng.uniform(0.0, 0.01, N)  # quarterly dividend yield
    step[62::63, :] *= 1 - q
    for j in range(N):
        for t in rng.choice(np.arange(250, T), size=rng.integers(0, 3), replace=False):
            step[t, j] /= rng.choice([2.0, 3.0])
    # factor for bar t = product of the steps strictly after t
    f = np.flip(np.cumprod(np.flip(step, 0), axis=0), 0)
    f = np.vstack([f[1:], np.ones((1, N))])
    raw = {k: np.round(v / f, 4) for k, v in
           (("open", adj_open), ("high", adj_high), ("low", adj_low), ("close", adj_close))}
    raw["high"] = np.maximum.reduce([raw["high"], raw["open"], raw["close"]])
    raw["low"] = np.minimum.reduce([raw["low"], raw["open"], raw["close"]])
    adj = np.round(raw["close"] * f, 6)
    volume = np.round(rng.lognormal(np.log(rng.uniform(2e5, 5e6, N)), 0.5, (T, N))
                      * (1 + 20 * np.abs(r))).astype(np.int64)
    symbols = np.array([f"S{j:04d}" for j in range(N)], dtype=object)
    prices = pa.table({
        "symbol": np.tile(symbols, T), "session": np.repeat(sess, N).astype(object),
        "open": raw["open"].ravel(), "high": raw["high"].ravel(), "low": raw["low"].ravel(),
        "close": raw["close"].ravel(), "adj_close": adj.ravel(), "volume": volume.ravel(),
    })
    rets = adj[1:] / adj[:-1] - 1
    bench = pa.table({"session": sess.astype(object), "benchmark": ["equal_weight"] * T,
                      "ret_1d": pa.array(np.concatenate([[np.nan], rets.mean(axis=1)]), from_pandas=True)})
    return prices, bench, sess, symbols, rng


def make_alt(name: str, sess, symbols, rng):
    """Full (symbol, session) grid of the alternative-data table, in its asset's output columns."""
    import pyarrow as pa

    T, N = len(sess), len(symbols)
    cols = {"symbol": np.tile(symbols, T), "session": np.repeat(sess, N).astype(object)}
    if name == "news_sentiment":
        from qt_resources.news import SENTIMENT_COLUMNS

        n = rng.poisson(0.4, (T, N))
        pos = rng.binomial(n, 0.45)
        neg = rng.binomial(n - pos, 0.6)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, (pos - neg) / np.maximum(n, 1) * rng.uniform(0.3, 0.9, (T, N)), np.nan)
            tot, cnt = np.nan_to_num(mean) * n, n.astype(float)
            k = np.ones(5)
            rt = np.apply_along_axis(lambda x: np.convolve(x, k)[:T], 0, tot)
            rn = np.apply_along_axis(lambda x: np.convolve(x, k)[:T], 0, cnt)
            cols |= {"news_count": n.ravel().astype(np.int64), "sentiment_mean": mean.ravel(),
                     "positive_share": np.where(n > 0, pos / np.maximum(n, 1), np.nan).ravel(),
                     "negative_share": np.where(n > 0, neg / np.maximum(n, 1), np.nan).ravel(),
                     "sentiment_mean_5d": np.where(rn > 0, rt / np.maximum(rn, 1), np.nan).ravel()}
        assert list(cols) == SENTIMENT_COLUMNS, list(cols)
    elif name == "insider_flow":
        from qt_resources.filings import _COUNT_COLUMNS, FLOW_COLUMNS

        active = rng.random((T, N)) < 0.03
        for c in FLOW_COLUMNS:
            if c in _COUNT_COLUMNS:
                cols[c] = (rng.poisson(1.5, (T, N)) * active).ravel().astype(np.int64)
            else:
                v = rng.lognormal(11, 1.5, (T, N)) * active
                cols[c] = (v * np.where(c.startswith("net_") & (rng.random((T, N)) < 0.6), -1, 1)).ravel()
    else:
        raise SystemExit(f"sources.yml declares '{name}': this bench does not know how to synthesise it")
    # NaN -> NULL, as the assets' pandas -> Arrow writes do
    return pa.table({k: pa.array(v, from_pandas=True) for k, v in cols.items()})


def write_layout(root: Path, table: str, tbl, layout: str) -> int:
    """Write an Arrow table (sorted by session) into <root>/<table>/session=<key>/data.parquet; key = the
    session (production layout) or its year. Returns the number of files."""
    import pyarrow.parquet as pq

    s = np.asarray(tbl.column("session").to_numpy(zero_copy_only=False)).astype(str)
    key = s if layout == "session" else np.array([x[:4] for x in s])
    change = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    bounds = list(change) + [len(key)]
    for i, a in enumerate(change):
        d = root / table / f"session={key[a]}"
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(tbl.slice(a, bounds[i + 1] - a), d / "data.parquet")
    return len(change)


# -------------------------------------------------------------------------------------------- baseline
def label_reference(g, sessions, h: int, up: float, down: float, price: str, kind: str, k: float) -> dict:
    """labels.sql in pandas for one symbol's rows (sorted by session)."""
    import pandas as pd

    c = pd.Series(g["adj_close"].to_numpy(float))
    o = pd.Series(g["adj_open"].to_numpy(float))
    s = pd.Series(sessions)
    ret = c / c.shift(1) - 1
    out = {"fwd_return_cc": (c.shift(-h) / c - 1).to_numpy(), "label_session_cc": s.shift(-h).to_numpy(),
           "fwd_return_oo": (o.shift(-(h + 1)) / o.shift(-1) - 1).to_numpy(),
           "label_session_oo": s.shift(-(h + 1)).to_numpy(),
           "sigma_20d": ret.rolling(20).std().to_numpy()}
    out["barrier_session"] = np.full(len(c), None, dtype=object)  # triple_barrier only (not in the baseline)
    sfx = "oo" if price == "open" else "cc"
    fwd, out["label_session"] = out[f"fwd_return_{sfx}"], out[f"label_session_{sfx}"]
    out["fwd_return"] = fwd
    out["vol_threshold"] = k * out["sigma_20d"] * math.sqrt(h)
    lo, hi = (-out["vol_threshold"], out["vol_threshold"]) if kind == "vol_scaled_class" else (down, up)
    cls = np.where(fwd > hi, 2.0, np.where(fwd < lo, 0.0, 1.0))
    cls[np.isnan(fwd) | (np.isnan(out["vol_threshold"]) if kind == "vol_scaled_class" else False)] = np.nan
    out["label_class"] = cls
    if kind == "triple_barrier":  # path-dependent exits: not in this baseline, so not compared
        for c_ in ("fwd_return", "label_class", "barrier_session"):
            del out[c_]
    out["horizon"] = np.full(len(c), h)
    return out


def baseline_worker(root: Path, out: Path, label: dict, alt: list[str], only: int, seed: int) -> None:
    """The pandas peer, timed phase by phase; prints one JSON line. Runs in its own process."""
    import pandas as pd

    from qt_resources.warehouse import DuckDBWarehouse
    import tests.qt_assets.features.test_features as tf

    reference, cross_sectional_ranks = tf.reference, tf.cross_sectional_ranks
    alt_reference = getattr(tf, "alt_reference", None)  # alternative-data features, when the tests have them

    rss_imports = hwm_mb()
    t = {}
    t0 = time.perf_counter()
    wh = DuckDBWarehouse(root=str(root))
    px = wh.read_partitions("prices")
    bench = wh.read_partitions("benchmark")
    alts = {a: wh.read_partitions(a) for a in alt}
    t["read"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    # stg_prices + the benchmark join, in pandas
    px = px[px["close"].notna() & (px["close"] > 0)]
    f = px["adj_close"] / px["close"]
    px = px.assign(adj_open=px["open"] * f, adj_high=px["high"] * f, adj_low=px["low"] * f)
    px = px.merge(bench[["session", "ret_1d"]].rename(columns={"ret_1d": "bench_ret"}), on="session", how="left")
    px = px.sort_values(["symbol", "session"], ignore_index=True)
    t["prepare"] = time.perf_counter() - t1

    syms = np.array(sorted(px["symbol"].unique()))
    n_all = len(syms)
    if only and only < n_all:  # a seeded subset, extrapolated linearly (stated in the output)
        syms = np.sort(np.random.default_rng(seed).choice(syms, only, replace=False))
        px = px[px["symbol"].isin(set(syms))].reset_index(drop=True)
    t2 = time.perf_counter()
    parts = []
    for sym, g in px.groupby("symbol", sort=True):
        sess = g["session"].to_numpy()
        d = {"symbol": g["symbol"].to_numpy(), "session": sess}
        d |= reference(g)
        d |= label_reference(g, sess, **label)
        parts.append(pd.DataFrame(d, index=g.index))
    res = pd.concat(parts)
    t["per_symbol"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    for k, v in cross_sectional_ranks(res).items():
        res[k] = v
    if alt_reference is not None and set(alts) == set(ALT_TABLES):
        keys = pd.DataFrame({"symbol": res["symbol"], "session": pd.to_datetime(res["session"])})
        for k, v in alt_reference(keys, res["dollar_volume_20"].to_numpy(float), alts["news_sentiment"],
                                  alts["insider_flow"]).items():
            res[k] = np.asarray(v, dtype=float)
    else:  # no reference for them: joined as they are (their feature columns are then not compared)
        for a, df in alts.items():
            res = res.merge(df, on=["symbol", "session"], how="left")
    t["ranks_joins"] = time.perf_counter() - t3
    t["total"] = time.perf_counter() - t0
    rss = hwm_mb()
    # output for the parity check (not timed)
    res.to_parquet(out, index=False)
    print(json.dumps({"t": t, "rows": len(res), "symbols": len(syms), "symbols_all": n_all,
                      "rss_imports_mb": rss_imports, "rss_mb": rss}))


def peer_worker(root: Path, out: Path, label: dict) -> None:
    """The polars peer (bench/features_polars_peer.py, written from the column docs without reading the
    project's implementation), timed: lazy scans of the warehouse Parquet, every feature and label, collected.
    Prints one JSON line; writes its output (not timed) for the parity check. Runs in its own process."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import polars as pl

    import features_polars_peer as peer

    rss_imports = hwm_mb()
    t0 = time.perf_counter()
    feats, labels = peer.compute(*peer.read_inputs(str(root)), label)
    t = time.perf_counter() - t0
    rss = hwm_mb()
    t0 = time.perf_counter()  # persisting what it computed, as a feature store must (features and labels)
    feats.write_parquet(out.with_name("peer_features.parquet"))
    labels.write_parquet(out.with_name("peer_labels.parquet"))
    t_write = time.perf_counter() - t0
    rss_write = hwm_mb()
    feats.join(labels, on=["symbol", "session"], how="left").write_parquet(out)
    print(json.dumps({"t": t, "t_write": t_write, "rss_write_mb": rss_write, "rows": feats.height, "threads": pl.thread_pool_size(), "version": pl.__version__,
                      "rss_imports_mb": rss_imports, "rss_mb": rss}))


# ----------------------------------------------------------------------------------------------- dbt
def dbt_executable() -> str:
    local = Path(sys.executable).parent / "dbt"
    return str(local) if local.exists() else "dbt"


def run_worker(flag: str, root: Path, out: Path, cfg: dict) -> tuple[dict | None, float]:
    """This script in its own process as the pandas or polars worker (flag); its JSON line (None when it failed:
    its stderr is printed) and its process wall seconds."""
    log = root / f"{flag.strip('-')}.out"
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        p = subprocess.Popen([sys.executable, __file__, flag, str(root), str(out), "--worker-config", json.dumps(cfg)],
                             stdout=subprocess.PIPE, stderr=fh, text=True, cwd=REPO)
        stdout = p.stdout.read()
        p.wait()
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        print(log.read_text()[-4000:], file=sys.stderr)
        return None, wall
    return json.loads(stdout.strip().splitlines()[-1]), wall


def run_child(cmd: list[str], env: dict, log: Path) -> tuple[float, int, float]:
    """Run a subprocess; its wall seconds, exit code and peak RSS (MiB: its VmHWM, polled every 20 ms)."""
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        peak = 0.0
        while p.poll() is None:
            peak = max(peak, hwm_mb(p.pid))
            time.sleep(0.02)
        wall = time.perf_counter() - t0
    return wall, p.returncode, peak


def run_dbt(verb: str, root: Path, dbt_vars: str, tag: str = "") -> dict:
    verb_tag = verb + (f"_{tag}" if tag else "")
    tgt = root / "target"  # one target dir, as the project's: later runs reuse dbt's partial parse
    env = {**os.environ, "QTOS_WAREHOUSE_DIR": str(root), "QTOS_DUCKDB_PATH": str(root / "qtos.duckdb"),
           "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DO_NOT_TRACK": "true"}
    cmd = [dbt_executable(), verb, "--vars", dbt_vars, "--project-dir", str(DBT_DIR), "--profiles-dir",
           str(DBT_DIR), "--target-path", str(tgt), "--log-path", str(root / f"logs_{verb_tag}")]
    wall, rc, rss = run_child(cmd, env, root / f"dbt_{verb_tag}.out")
    rr = json.loads((tgt / "run_results.json").read_text()) if (tgt / "run_results.json").exists() else {}
    nodes = {r["unique_id"].split(".", 1)[1]: {"status": r["status"], "s": r["execution_time"]}
             for r in rr.get("results", []) if not r["unique_id"].startswith("operation.")}  # not the run hooks
    if rc != 0:
        print((root / f"dbt_{verb_tag}.out").read_text()[-4000:], file=sys.stderr)
    return {"wall": wall, "rc": rc, "rss_mb": rss, "elapsed": rr.get("elapsed_time"), "nodes": nodes}


# ------------------------------------------------------------------------------------------- parity
def parity(db: Path, base: Path) -> tuple[list[tuple], dict]:
    """Per column: rows compared, NULL-position mismatches, max |diff| and max relative diff
    |diff| / max(|base|, mean |base| over the column) (sessions: the number of differing values). The floor keeps
    values that are differences near 0 (kup, klow: H - max(O, C)) from turning a 1e-17 rounding of the adjusted
    prices into a large relative figure; away from 0 it is the plain relative difference."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        bcols = {r[0] for r in con.execute(f"describe select * from read_parquet('{base}')").fetchall()}
        rows = []
        info = {}
        for model in ("features_daily", "labels"):
            mcols = [r[0] for r in con.execute(f"describe {model}").fetchall()]
            cols = [c for c in mcols if c in bcols and c not in KEYS]
            info[model] = {"not_in_baseline": [c for c in mcols if c not in bcols and c not in KEYS],
                           "rows": con.execute(f"select count(*) from {model}").fetchone()[0]}
            sub = f"(select distinct symbol from read_parquet('{base}'))"
            joined = (f"from (select * from {model} where symbol in {sub}) m full join read_parquet('{base}') b "
                      f"on m.symbol = b.symbol and m.session = cast(b.session as date)")
            info[model]["unmatched"] = con.execute(
                f"select count(*) {joined} where m.symbol is null or b.symbol is null").fetchone()[0]
            exprs = []
            for c in cols:
                if "session" in c:
                    bv, mv = f"cast(b.{c} as date)", f"m.{c}"
                    exprs += [f"sum(case when (m.{c} is null) <> (b.{c} is null) then 1 else 0 end)",
                              f"sum(case when {mv} <> {bv} then 1.0 else 0.0 end)", "0.0", f"count({mv})"]
                    continue
                bv = f"(case when isnan(b.{c}::double) then null else b.{c}::double end)"
                mv = f"m.{c}::double"
                exprs += [f"sum(case when ({mv} is null) <> ({bv} is null) then 1 else 0 end)",
                          f"max(abs({mv} - {bv}))", f"max(abs({mv} - {bv}) / greatest(abs({bv}), (select avg(abs({c}::double)) from read_parquet('{base}') "
                          f"where not isnan({c}::double)), 1e-300))",
                          f"count({mv})"]
            vals = con.execute(f"select {', '.join(exprs)} {joined}").fetchone()
            for i, c in enumerate(cols):
                nullx, mx, rel, n = vals[4 * i:4 * i + 4]
                rows.append((model, c, n, nullx, mx or 0.0, rel or 0.0, "count" if "session" in c else "value"))
        return rows, info
    finally:
        con.close()


def report_parity(what: str, db: Path, base: Path, tol_rel: float = 1e-9) -> bool:
    """Print the worst columns of a parity check; True when every column's NULLs match and its max relative
    difference is within tol_rel (session columns: identical)."""
    rows, info = parity(db, base)
    ok_all = True
    for model in ("features_daily", "labels"):
        lst = [r for r in rows if r[0] == model]
        bad = [r for r in lst if r[3] != 0 or (r[4] != 0 if r[6] == "count" else r[5] > tol_rel)]
        ok_all &= not bad and info[model]["unmatched"] == 0
        vals = [r for r in lst if r[6] == "value"]
        top = max(vals, key=lambda r: r[4], default=None)
        topr = max(vals, key=lambda r: r[5], default=None)
        print(f"parity {what}, {model}: {len(lst)} columns over {info[model]['rows']:,} rows, unmatched keys "
              f"{info[model]['unmatched']}, NULL mismatches {sum(r[3] for r in lst)}"
              + (f"; max abs diff {top[4]:.2e} ({top[1]}), max rel diff {topr[5]:.2e} ({topr[1]})" if top else "")
              + (f"; not compared: {info[model]['not_in_baseline']}" if info[model]["not_in_baseline"] else "")
              + ("" if not bad else f"; BEYOND {tol_rel:g}: {[(r[1], r[3], f'{r[5]:.1e}') for r in bad]}"),
              flush=True)
    return ok_all


# ---------------------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--years", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--layout", choices=["year", "session"], default="year",
                    help="one Parquet file per year (default) or per session (the warehouse's layout)")
    ap.add_argument("--tests", action="store_true", help="also time `dbt test` (the project's data tests)")
    ap.add_argument("--quick", action="store_true", help="small run: 40 symbols x 3 years")
    ap.add_argument("--baseline-symbols", type=int, default=0,
                    help="time the pandas baseline on a seeded subset of symbols and extrapolate linearly")
    ap.add_argument("--no-incremental", dest="incremental", action="store_false",
                    help="skip the second `dbt run` after appending the next session")
    ap.add_argument("--incremental-runs", type=int, default=5,
                    help="times the +1 session run is repeated from the same state (the median is reported)")
    ap.add_argument("--keep", action="store_true", help="keep the temp warehouse")
    ap.add_argument("--no-peer", dest="peer", action="store_false", help="skip the polars peer")
    ap.add_argument("--peer-worker", nargs=2, metavar=("ROOT", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--baseline-worker", nargs=2, metavar=("ROOT", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--worker-config", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peer_worker:
        peer_worker(Path(args.peer_worker[0]), Path(args.peer_worker[1]), **json.loads(args.worker_config))
        return 0
    if args.baseline_worker:
        cfg = json.loads(args.worker_config)
        baseline_worker(Path(args.baseline_worker[0]), Path(args.baseline_worker[1]), **cfg)
        return 0
    if args.quick:
        args.symbols, args.years = 40, 3
    if args.peer:
        import importlib.util

        if importlib.util.find_spec("polars") is None:
            raise SystemExit("the polars peer needs polars, from the bench extra: make install EXTRAS=test,bench "
                             "(or run with --no-peer)")

    from qt_resources.config import load_config

    lab = load_config(REPO / "qtos.yaml").label
    label = {"h": lab.horizon, "up": lab.up, "down": lab.down, "price": lab.price, "kind": lab.kind, "k": lab.vol_k}
    dbt_vars = {"label_horizon": lab.horizon, "label_up": lab.up, "label_down": lab.down,
                "label_price": lab.price, "label_kind": lab.kind, "label_vol_k": lab.vol_k}
    import qt_assets.features.assets as qf

    if hasattr(qf, "feature_code_version"):  # as the Dagster asset passes it
        dbt_vars["features_code_version"] = qf.feature_code_version()
    dbt_vars = json.dumps(dbt_vars)
    tables = source_tables()
    alt = [t for t in tables if t not in ("prices", "benchmark")]

    root = Path(tempfile.mkdtemp(prefix="qtos-bench-features-"))
    print(f"warehouse: {root}  (sources: {', '.join(tables)}); load average {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} cores", flush=True)
    t0 = time.perf_counter()
    prices, bench, sess_all, symbols, rng = make_universe(args.symbols, args.years, args.seed)
    tbls = {"prices": prices, "benchmark": bench, **{a: make_alt(a, sess_all, symbols, rng) for a in alt}}
    del prices, bench
    t_gen = time.perf_counter() - t0
    # the last session is held out for the incremental run
    sess, new_session = sess_all[:-1], sess_all[-1]
    held = {}
    t0 = time.perf_counter()
    files = {}
    for name, tb in tbls.items():
        n_keep = int(np.searchsorted(np.asarray(tb.column("session").to_numpy(zero_copy_only=False)).astype(str),
                                     new_session))
        files[name] = write_layout(root, name, tb.slice(0, n_keep), args.layout)
        held[name] = tb.slice(n_keep)
    t_write = time.perf_counter() - t0
    n_rows = tbls["prices"].num_rows - held["prices"].num_rows
    del tbls
    print(f"generated {n_rows:,} price rows ({args.symbols} symbols x {len(sess)} sessions "
          f"{sess[0]}..{sess[-1]}, seed {args.seed}) in {t_gen:.1f} s; wrote "
          f"{sum(files.values()):,} Parquet files ({args.layout} layout: "
          f"{', '.join(f'{k} {v}' for k, v in files.items())}) in {t_write:.1f} s", flush=True)

    # ---- dbt: parse first (untimed), as a code location prepares the manifest; then the timed run
    parse = run_dbt("parse", root, dbt_vars)
    print(f"dbt parse (not in the timings below): rc={parse['rc']} wall {parse['wall']:.1f} s", flush=True)
    dbt = run_dbt("run", root, dbt_vars)
    models = {k.split(".")[-1]: v for k, v in dbt["nodes"].items()}
    print(f"dbt run: rc={dbt['rc']} wall {dbt['wall']:.1f} s, peak RSS {dbt['rss_mb']:.0f} MiB; models: "
          + ", ".join(f"{k} {v['s']:.1f} s ({v['status']})" for k, v in models.items()), flush=True)
    if dbt["rc"] != 0 or any(v["status"] != "success" for v in models.values()):
        print("dbt run failed; see", root / "dbt_run.out", file=sys.stderr)
        return 1
    dbt_test = run_dbt("test", root, dbt_vars) if args.tests else None
    if dbt_test:
        fails = {k: v["status"] for k, v in dbt_test["nodes"].items() if v["status"] != "pass"}
        print(f"dbt test: rc={dbt_test['rc']} wall {dbt_test['wall']:.1f} s, {len(dbt_test['nodes'])} tests, "
              f"peak RSS {dbt_test['rss_mb']:.0f} MiB" + (f"; not passing: {fails}" if fails else ""), flush=True)

    # ---- pandas baseline, own process
    out = root / "baseline.parquet"
    base, b_wall = run_worker("--baseline-worker", root, out, {"label": label, "alt": alt,
                                                               "only": args.baseline_symbols, "seed": args.seed})
    if base is None:
        return 1
    bt = base["t"]
    scale = base["symbols_all"] / base["symbols"]
    pandas_s = bt["read"] + bt["prepare"] + (bt["per_symbol"] + bt["ranks_joins"]) * scale
    note = (f" (per-symbol part timed on a seeded {base['symbols']}-symbol subset, x{scale:.2f} extrapolated)"
            if scale != 1 else "")
    print(f"pandas: read {bt['read']:.1f} s, prepare {bt['prepare']:.1f} s, per-symbol reference + labels "
          f"{bt['per_symbol']:.1f} s, ranks/joins {bt['ranks_joins']:.1f} s{note}; process wall {b_wall:.1f} s "
          f"(incl. imports and writing its output for the parity check); peak RSS {base['rss_mb']:.0f} MiB "
          f"at the end of the timed part ({base['rss_imports_mb']:.0f} MiB after imports)", flush=True)

    # ---- parity with the pandas reference
    all_ok = report_parity("dbt vs pandas reference", root / "qtos.duckdb", out)

    # ---- the polars peer, own process
    peer = None
    if args.peer:
        pout = root / "peer.parquet"
        peer, p_wall = run_worker("--peer-worker", root, pout, {"label": label})
        if peer is None:
            return 1
        print(f"polars peer (polars {peer['version']}, {peer['threads']} threads): read + every feature and label "
              f"{peer['t']:.1f} s, then writing them to Parquet {peer['t_write']:.1f} s; process wall {p_wall:.1f} s "
              f"(incl. imports and writing its output for the parity check); peak RSS {peer['rss_mb']:.0f} MiB "
              f"({peer['rss_write_mb']:.0f} MiB after the write)", flush=True)
        # the peer computes the same thing (reported, not gated: its EWMs and windows are its own)
        report_parity("dbt vs polars peer", root / "qtos.duckdb", pout)

    # ---- incremental: the next session arrives (one new partition per table), `dbt run` again; repeated from a copy
    # of the warehouse's DuckDB file as it was before, the median is the figure (one run is noisy at ~3 s)
    inc = None
    if args.incremental:
        import statistics

        import duckdb

        for name, tb in held.items():
            write_layout(root, name, tb, "session")
        db, before = root / "qtos.duckdb", root / "qtos.before.duckdb"
        shutil.copyfile(db, before)
        runs = []
        for i in range(args.incremental_runs):
            if i:
                shutil.copyfile(before, db)
            r = run_dbt("run", root, dbt_vars, tag="incremental")
            r["models_s"] = sum(v["s"] for v in r["nodes"].values())
            con = duckdb.connect(str(db), read_only=True)
            r["rows_after"] = con.execute("select count(*) from features_daily").fetchone()[0]
            con.close()
            runs.append(r)
            print(f"incremental dbt run {i + 1} (+1 session {new_session}): rc={r['rc']} wall {r['wall']:.1f} s, "
                  f"peak RSS {r['rss_mb']:.0f} MiB; features_daily now {r['rows_after']:,} rows (expected "
                  f"{n_rows + held['prices'].num_rows:,}); models {r['models_s']:.2f} s: "
                  + ", ".join(f"{k.split('.')[-1]} {v['s']:.2f} s ({v['status']})" for k, v in r["nodes"].items()),
                  flush=True)
        before.unlink()
        inc = {"models_s": statistics.median(r["models_s"] for r in runs),
               "wall": statistics.median(r["wall"] for r in runs), "rss_mb": max(r["rss_mb"] for r in runs),
               "all_models_s": [r["models_s"] for r in runs],
               "ok": all(r["rc"] == 0 and r["rows_after"] == n_rows + held["prices"].num_rows for r in runs)}

    # ---- table
    model_s = sum(v["s"] for v in models.values())
    peer_s = peer["t"] if peer else float("nan")
    print()
    peer_w = peer_s + peer["t_write"] if peer else float("nan")
    print("| rows | dbt models s | dbt run s (incl. start-up) | polars peer s (+ writing its output) | pandas s "
          "| dbt peak RSS MiB | peer / pandas peak RSS MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {n_rows:,} | {model_s:.1f} | {dbt['wall']:.1f} | {peer_s:.1f} ({peer_w:.1f}) | "
          f"{pandas_s:.1f}{'*' if scale != 1 else ''} | {dbt['rss_mb']:.0f} | "
          f"{peer['rss_mb'] if peer else float('nan'):.0f} / {base['rss_mb']:.0f} |")
    if inc:
        print(f"| +1 session, incremental (median of {len(inc['all_models_s'])}) | {inc['models_s']:.2f} | "
              f"{inc['wall']:.1f} | - | - | {inc['rss_mb']:.0f} | - |")
    print()
    goals = [("full build: dbt models <= polars peer", model_s <= peer_s,
              f"{model_s:.1f} s vs {peer_s:.1f} s; {peer_w:.1f} s with the peer writing its output"),
             ("full build: dbt run incl. start-up <= 1.5x the peer", dbt["wall"] <= 1.5 * peer_s,
              f"{dbt['wall']:.1f} s = {dbt['wall'] / peer_s:.2f}x"),
             ("dbt peak RSS <= 3 GiB", max(dbt["rss_mb"], inc["rss_mb"] if inc else 0) <= 3072,
              f"{max(dbt['rss_mb'], inc['rss_mb'] if inc else 0):.0f} MiB"),
             ("parity with the pandas reference (NULLs, max rel diff <= 1e-9)", all_ok, "")]
    if inc:
        goals.insert(2, ("+1 session incremental: models <= 3 s", inc["models_s"] <= 3,
                         f"median {inc['models_s']:.2f} s of " + ", ".join(f"{x:.2f}" for x in inc["all_models_s"])))
    for name, met, val in goals:
        print(f"goal {name}: {'met' if met else 'NOT met'}{f' ({val})' if val else ''}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if args.keep:
        print("kept:", root)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if all_ok and (inc is None or inc["ok"]) else 2


if __name__ == "__main__":
    sys.exit(main())
