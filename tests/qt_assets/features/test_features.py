"""features_daily (dbt): parity with a plain numpy/pandas reference, no lookahead, feature count."""

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from qt_assets.features.assets import DBT_DIR, available_features
from tests.conftest import ON_SHORT_RUN


LN2 = np.log(2.0)


# ----------------------------------------------------------------------------------------- reference
def ewm_recursive(x: np.ndarray, alpha: float, seed_row: int, seed: float) -> np.ndarray:
    """E_{seed_row} = seed, E_t = (1 - alpha) E_{t-1} + alpha x_t after it; NaN before (0-based rows)."""
    out = np.full(len(x), np.nan)
    if seed_row >= len(x):
        return out
    e = seed
    out[seed_row] = e
    for i in range(seed_row + 1, len(x)):
        e = (1 - alpha) * e + alpha * x[i]
        out[i] = e
    return out


def ema(x: np.ndarray, n: int, first: int = 0) -> np.ndarray:
    """EMA(n), alpha = 2/(n+1), seeded with the SMA of the first n values of x[first:]."""
    s = first + n - 1
    return ewm_recursive(x, 2 / (n + 1), s, x[first:s + 1].mean() if s < len(x) else np.nan)


def wilder(x: np.ndarray, n: int = 14) -> np.ndarray:
    """Wilder smoothing of x[1:] (x[0] undefined): seed = mean of x[1..n] at row n, alpha = 1/n."""
    return ewm_recursive(x, 1 / n, n, x[1:n + 1].mean() if n < len(x) else np.nan)


def reference(g: pd.DataFrame) -> dict[str, np.ndarray]:
    """All features for one symbol's rows (sorted by session) from adjusted OHLC, raw close, volume, bench."""
    o, h, l, c = (pd.Series(g[k].to_numpy(float)) for k in ("adj_open", "adj_high", "adj_low", "adj_close"))
    v = pd.Series(g["volume"].to_numpy(float))
    b = pd.Series(g["bench_ret"].to_numpy(float))
    r = {}
    ret = c.pct_change()
    for n in (1, 5, 10, 20, 60):
        r[f"ret_{n}d"] = c.pct_change(n)
        r[f"logret_{n}d"] = np.log(c / c.shift(n))
    r["vol_20d"] = ret.rolling(20).std() * np.sqrt(252)
    r["vol_60d"] = ret.rolling(60).std() * np.sqrt(252)
    hl2 = np.log(h / l) ** 2
    r["parkinson_vol_20d"] = np.sqrt(252 * hl2.rolling(20).mean() / (4 * LN2))
    gk = 0.5 * hl2 - (2 * LN2 - 1) * np.log(c / o) ** 2
    r["gk_vol_20d"] = np.sqrt(252 * gk.rolling(20).mean().clip(lower=0))
    sma = {n: c.rolling(n).mean() for n in (5, 20, 50, 60, 200)}
    r["sma_ratio_5_20"] = sma[5] / sma[20]
    r["sma_ratio_20_50"] = sma[20] / sma[50]
    r["sma_ratio_50_200"] = sma[50] / sma[200]
    for n in (5, 20, 60, 200):
        r[f"close_sma_{n}"] = c / sma[n]
    px = c.to_numpy()
    e12, e26 = ema(px, 12), ema(px, 26)
    r["close_ema_12"], r["close_ema_26"] = px / e12, px / e26
    d = np.diff(px, prepend=np.nan)
    ag, al = wilder(np.maximum(d, 0)), wilder(np.maximum(-d, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        r["rsi_14"] = np.where(al == 0, 100.0, 100 - 100 / (1 + ag / al))
    r["rsi_14"][np.isnan(ag)] = np.nan
    line = e12 - e26
    sig = ema(line, 9, first=25)
    r["macd"], r["macd_signal"], r["macd_hist"] = line / px, sig / px, (line - sig) / px
    # two-pass std over each window: pandas' rolling std updates running moments along the whole series, which
    # drifts by up to ~1e-7 relative where the 20-day price spread is tiny (bb_pctb_20 divides by it)
    sd = pd.Series(np.full(len(c), np.nan))
    if len(c) >= 20:
        sd.iloc[19:] = np.lib.stride_tricks.sliding_window_view(c.to_numpy(), 20).std(axis=1, ddof=0)
    r["bb_pctb_20"] = (c - (sma[20] - 2 * sd)) / (4 * sd)
    r["bb_width_20"] = 4 * sd / sma[20]
    pc = c.shift(1)
    tr = pd.concat([h - l, (h - pc).abs(), (l - pc).abs()], axis=1).max(axis=1, skipna=False).to_numpy()
    atr = wilder(tr)
    r["atr_14"], r["atr_pct_14"] = atr, atr / px
    hh, ll = h.rolling(14).max(), l.rolling(14).min()
    k = (100 * (c - ll) / (hh - ll)).clip(0, 100)
    r["stoch_k_14"], r["stoch_d_3"] = k, k.rolling(3).mean()
    obv = (np.sign(c.diff()).fillna(0) * v).cumsum()
    r["obv"] = obv
    r["obv_chg_20"] = (obv - obv.shift(20)) / v.rolling(20).sum()
    r["volume_z_20"] = (v - v.rolling(20).mean()) / v.rolling(20).std()
    r["dollar_volume_20"] = (g["close"].to_numpy(float) * v).rolling(20).mean()
    r["kmid"], r["klen"] = (c - o) / o, (h - l) / o
    r["kup"], r["klow"] = (h - np.maximum(o, c)) / o, (np.minimum(o, c) - l) / o
    r["ksft"] = (2 * c - h - l) / o
    for n in (20, 60):
        r[f"close_to_max_{n}"] = c / c.rolling(n).max()
        r[f"close_to_min_{n}"] = c / c.rolling(n).min()
    r["range_pos_20"] = (c - c.rolling(20).min()) / (c.rolling(20).max() - c.rolling(20).min())
    r["qtlu_20"] = c.rolling(20).quantile(0.8, interpolation="linear") / c
    r["qtld_20"] = c.rolling(20).quantile(0.2, interpolation="linear") / c
    full = (ret.notna() & b.notna()).rolling(60).sum().eq(60)  # all 60 (r, r_b) pairs present
    r["beta_60"] = (ret.rolling(60).cov(b) / b.rolling(60).var()).where(full)
    r["corr_60"] = ret.rolling(60).corr(b).where(full)
    return {k: np.asarray(v, dtype=float) for k, v in r.items()}


def cross_sectional_ranks(f: pd.DataFrame) -> dict[str, np.ndarray]:
    """Percent rank per session among non-NULL values: (min-rank - 1) / (n - 1), 0 when n = 1."""
    out = {}
    for src, name in (("ret_20d", "rank_ret_20d"), ("vol_20d", "rank_vol_20d")):
        grp = f.groupby("session")[src]
        n = grp.transform("count")
        rk = grp.rank(method="min")
        out[name] = np.where(n > 1, (rk - 1) / (n - 1).where(n > 1, 1), np.where(rk.notna(), 0.0, np.nan))
    return out


FAMILIES = {
    "returns": [f"{p}_{n}d" for p in ("ret", "logret") for n in (1, 5, 10, 20, 60)],
    "volatility": ["vol_20d", "vol_60d", "parkinson_vol_20d", "gk_vol_20d"],
    "moving_averages": ["sma_ratio_5_20", "sma_ratio_20_50", "sma_ratio_50_200", "close_sma_5", "close_sma_20",
                        "close_sma_60", "close_sma_200", "close_ema_12", "close_ema_26"],
    "oscillators": ["rsi_14", "macd", "macd_signal", "macd_hist", "stoch_k_14", "stoch_d_3"],
    "bands_range": ["bb_pctb_20", "bb_width_20", "atr_14", "atr_pct_14"],
    "volume": ["obv", "obv_chg_20", "volume_z_20", "dollar_volume_20"],
    "candles": ["kmid", "klen", "kup", "klow", "ksft"],
    "position": ["close_to_max_20", "close_to_min_20", "close_to_max_60", "close_to_min_60", "range_pos_20",
                 "qtlu_20", "qtld_20"],
    "benchmark": ["beta_60", "corr_60"],
    "cross_section": ["rank_ret_20d", "rank_vol_20d"],
    "alt_data": ["news_count_1d", "news_sentiment_1d", "news_sentiment_5d", "news_pos_share_1d",
                 "news_neg_share_1d", "insider_net_buy_30d_adv", "insider_net_buy_90d_adv", "insider_buys_90d",
                 "insider_sells_90d", "insider_buyers_90d"],
}
RELATIVE = {"obv", "dollar_volume_20", "atr_14", "insider_net_buy_30d_adv", "insider_net_buy_90d_adv"}  # large magnitudes: compare relatively

QUERY = ("select f.*, p.adj_open, p.adj_high, p.adj_low, p.adj_close, p.close, p.volume, b.ret_1d as bench_ret "
         "from features_daily f join stg_prices p using (symbol, session) "
         "left join benchmark_daily b using (session) order by symbol, session")


def load_features(db: Path) -> pd.DataFrame:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(QUERY).df()
    finally:
        con.close()


def alt_reference(f: pd.DataFrame, dvol: np.ndarray, news: pd.DataFrame, flow: pd.DataFrame) -> dict:
    """Alternative-data features: the asset tables' row for the same (symbol, session), no shift; insider
    values scaled by the reference dollar_volume_20."""
    key = pd.MultiIndex.from_arrays([f["symbol"], f["session"].dt.strftime("%Y-%m-%d")])
    n = news.set_index(["symbol", "session"]).reindex(key)
    fl = flow.set_index(["symbol", "session"]).reindex(key)
    return {"news_count_1d": n["news_count"], "news_sentiment_1d": n["sentiment_mean"],
            "news_sentiment_5d": n["sentiment_mean_5d"], "news_pos_share_1d": n["positive_share"],
            "news_neg_share_1d": n["negative_share"],
            "insider_net_buy_30d_adv": fl["net_buy_value_30d"].to_numpy(float) / dvol,
            "insider_net_buy_90d_adv": fl["net_buy_value_90d"].to_numpy(float) / dvol,
            "insider_buys_90d": fl["buy_count_90d"], "insider_sells_90d": fl["sell_count_90d"],
            "insider_buyers_90d": fl["distinct_buyers_90d"]}


def reference_frame(f: pd.DataFrame, news: pd.DataFrame | None = None, flow: pd.DataFrame | None = None) -> pd.DataFrame:
    parts = []
    for _, g in f.groupby("symbol", sort=True):
        parts.append(pd.DataFrame(reference(g), index=g.index))
    ref = pd.concat(parts).loc[f.index]
    ranks = cross_sectional_ranks(f)
    for k, v in ranks.items():
        ref[k] = v
    if news is not None:
        for k, v in alt_reference(f, ref["dollar_volume_20"].to_numpy(float), news, flow).items():
            ref[k] = np.asarray(v, dtype=float)
    return ref


def assert_parity(f: pd.DataFrame, ref: pd.DataFrame, cols: list[str]) -> None:
    for col in cols:
        got, want = f[col].to_numpy(float), ref[col].to_numpy(float)
        assert (np.isnan(got) == np.isnan(want)).all(), (
            f"{col}: NULL positions differ at {f.loc[np.isnan(got) != np.isnan(want), ['symbol', 'session']].head()}")
        m = ~np.isnan(want)
        assert m.any(), f"{col}: no values to compare"
        if col in RELATIVE:
            np.testing.assert_allclose(got[m], want[m], rtol=1e-9, atol=1e-6, err_msg=col)
        else:
            np.testing.assert_allclose(got[m], want[m], rtol=0, atol=1e-6, err_msg=col)


@pytest.fixture(scope="module")
def feats(short_run):
    from qt_resources.warehouse import DuckDBWarehouse

    wh = DuckDBWarehouse(root=str(short_run["tmp"] / "warehouse"))
    f = load_features(short_run["tmp"] / "warehouse" / "qtos.duckdb")
    news, flow = (wh.read_partitions(t, wh.stored_sessions(t)) for t in ("news_sentiment", "insider_flow"))
    return f, reference_frame(f, news, flow)


def test_every_documented_feature_is_covered():
    covered = [c for cols in FAMILIES.values() for c in cols]
    assert sorted(covered) == sorted(available_features())
    assert len(set(covered)) == len(covered)


@ON_SHORT_RUN
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_features_match_numpy_reference(feats, family):
    f, ref = feats
    assert f["symbol"].nunique() >= 2
    assert_parity(f, ref, FAMILIES[family])


def test_feature_count():
    assert len(available_features()) >= 40


# ----------------------------------------------------------------------------------------- lookahead
FEATURE_MODELS = ["warehouse_files", "stg_prices", "stg_benchmark", "stg_news_sentiment", "stg_insider_flow",
                  "benchmark_daily", "features_daily"]


def write_tables(root: Path, **tables: pd.DataFrame) -> None:
    """Replace the given session partitions of warehouse tables (prices=..., benchmark=..., news_sentiment=...)."""
    from qt_resources.warehouse import DuckDBWarehouse

    wh = DuckDBWarehouse(root=str(root))
    for name, frame in tables.items():
        wh.write_partitions(name, frame, sorted(set(frame["session"])))


def dbt_features(root: Path, *extra: str, vars: dict | None = None, command: str = "build",
                 models: list[str] = FEATURE_MODELS) -> pd.DataFrame:
    """``dbt build`` of the feature models on the warehouse in ``root``; returns features_daily. ``extra``:
    more dbt arguments (e.g. --full-refresh). Range data tests may fail on corrupted data; models must build."""
    env = {**os.environ, "QTOS_WAREHOUSE_DIR": str(root), "QTOS_DUCKDB_PATH": str(root / "qtos.duckdb"),
           "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DO_NOT_TRACK": "true"}
    dbt = Path(sys.executable).parent / "dbt"
    res = subprocess.run([str(dbt) if dbt.exists() else "dbt", command, "--select", *models,
                          "--project-dir", str(DBT_DIR), "--profiles-dir", str(DBT_DIR),
                          "--target-path", str(root / "target"), "--log-path", str(root / "logs"),
                          *(["--vars", json.dumps(vars)] if vars else []), *extra],
                         env=env, capture_output=True, text=True)
    results = json.loads((root / "target" / "run_results.json").read_text())["results"]
    built = {r["unique_id"].split(".")[-1]: r["status"] for r in results if r["unique_id"].startswith("model.")}
    assert built == dict.fromkeys(models, "success"), res.stdout[-3000:]
    con = duckdb.connect(str(root / "qtos.duckdb"), read_only=True)
    try:
        return con.execute("select * from features_daily order by symbol, session").df()
    finally:
        con.close()


def synthetic_alt_data(prices: pd.DataFrame, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded news_sentiment / insider_flow rows (the assets' schemas) for every (symbol, session) of prices."""
    keys = prices[["symbol", "session"]].reset_index(drop=True)
    n = len(keys)
    count = rng.integers(0, 4, n)
    mean = np.where(count > 0, rng.uniform(-1, 1, n), np.nan)
    pos = np.where(count > 0, rng.uniform(0, 1, n), np.nan)
    news = keys.assign(news_count=count, sentiment_mean=mean, positive_share=pos, negative_share=(1 - pos) / 2,
                       sentiment_mean_5d=rng.uniform(-1, 1, n))
    buys, sells = rng.integers(0, 5, n), rng.integers(0, 5, n)
    flow = keys.assign(net_buy_value_30d=rng.normal(0, 1e6, n), net_buy_value_90d=rng.normal(0, 3e6, n),
                       buy_count_30d=buys // 2, buy_count_90d=buys, sell_count_30d=sells // 2, sell_count_90d=sells,
                       distinct_buyers_90d=np.minimum(buys, 2), officer_buy_value_90d=rng.uniform(0, 1e6, n),
                       director_buy_value_90d=rng.uniform(0, 1e6, n))
    return news, flow


def _build(root: Path, prices: pd.DataFrame, bench: pd.DataFrame, **alt: pd.DataFrame) -> pd.DataFrame:
    write_tables(root, prices=prices, benchmark=bench, **alt)
    return dbt_features(root)


def test_no_lookahead_corrupting_the_future_leaves_the_past_unchanged(tmp_path):
    from qt_resources.prices import BundledPriceProvider

    prices = BundledPriceProvider().fetch(["AAPL", "IBM"], "2009-01-02", "2010-03-31")  # ~310 sessions
    sessions = sorted(prices["session"].unique())
    px = prices.pivot(index="session", columns="symbol", values="adj_close")
    bench = pd.DataFrame({"session": px.index, "benchmark": "equal_weight",
                          "ret_1d": px.pct_change().mean(axis=1).to_numpy()})
    cut = sessions[230]  # D: late enough that every warm-up (incl. SMA 200) is full before it

    # corrupt every bar after D: scale by 1.5, shuffle each symbol's OHLCV among its later sessions, NaN some
    rng = np.random.default_rng(7)
    bad = prices.astype({"volume": float})
    cols = ["open", "high", "low", "close", "adj_close", "volume"]
    for sym in bad["symbol"].unique():
        later = (bad["session"] > cut) & (bad["symbol"] == sym)
        vals = bad.loc[later, cols].to_numpy(float) * 1.5
        vals = vals[rng.permutation(len(vals))]
        vals[rng.random(len(vals)) < 0.2] = np.nan
        bad.loc[later, cols] = vals
    bad_bench = bench.copy()
    blater = bad_bench["session"] > cut
    bad_bench.loc[blater, "ret_1d"] = rng.permutation(bad_bench.loc[blater, "ret_1d"].to_numpy() * 1.5)

    # alternative data for every (symbol, session); after D: shuffled and scaled like the prices
    news, flow = synthetic_alt_data(prices, rng)
    bad_news, bad_flow = news.copy(), flow.copy()
    for frame in (bad_news, bad_flow):
        later = frame["session"] > cut
        cols_ = [c for c in frame.columns if c not in ("symbol", "session")]
        frame.loc[later, cols_] = frame.loc[later, cols_].sample(frac=1, random_state=7).to_numpy()
    bad_flow.loc[bad_flow["session"] > cut, "net_buy_value_30d"] *= 3

    clean = _build(tmp_path / "clean", prices, bench, news_sentiment=news, insider_flow=flow)
    dirty = _build(tmp_path / "dirty", bad, bad_bench, news_sentiment=bad_news, insider_flow=bad_flow)
    feats = available_features()
    a = clean[clean["session"] <= pd.Timestamp(cut)].reset_index(drop=True)
    b = dirty[dirty["session"] <= pd.Timestamp(cut)].reset_index(drop=True)
    assert len(a) == len(b) > 400
    assert (a[["symbol", "session"]] == b[["symbol", "session"]]).all().all()
    for col in feats:
        assert a[col].notna().any(), f"{col}: never warm before D; the canary would not test it"
        # same NULLs; values equal up to float summation order (window segment trees depend on partition size)
        pd.testing.assert_series_equal(a[col], b[col], check_exact=False, rtol=1e-10, atol=1e-12, obj=col)
    # the corruption did reach the future rows
    after = clean[clean["session"] > pd.Timestamp(cut)].set_index(["symbol", "session"])["ret_1d"]
    after2 = dirty[dirty["session"] > pd.Timestamp(cut)].set_index(["symbol", "session"])["ret_1d"]
    assert not after.reindex(after2.index).equals(after2)
