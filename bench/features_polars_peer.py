"""features_daily + labels in polars: an independent speed peer for the dbt/DuckDB models.

Written from the column documentation (dbt_features/models/marts/schema.yml), the math comment of the former
dbt_features/macros/pit_ewm.sql (the SQL implementation's smoothers, in git history), the header of labels.sql and
stg_prices.sql only, without reading the project's feature implementation. Conventions: C, O, H, L = adjusted
close/open/high/low, V = share volume, t = the symbol's own bar number (1 = its first stored bar); every window ends at the current
row and needs all its inputs (warm-up rows are NULL). EMAs (alpha 2/(n+1)) and Wilder smoothers (alpha 1/n) are
SMA-seeded: the seed bar's input is replaced by the mean of the first n inputs, earlier inputs by NULL, and
`ewm_mean(adjust=False)` then runs the plain recursion E_t = (1 - alpha) E_{t-1} + alpha x_t from the seed.
Labels: kinds forward_return_class and vol_scaled_class; for triple_barrier (path-dependent exits) fwd_return,
label_class and barrier_session are left NULL (the other label columns are filled).

bench/bench_features.py runs it in its own process (read + compute timed, then its output written), and compares
its output with the dbt tables column by column.
"""

from __future__ import annotations

import glob
import math

import polars as pl

C, O, H, L, V = (pl.col(c) for c in ("C", "O", "H", "L", "V"))
T = pl.col("t")                   # bar number within the symbol, 1-based
R = pl.col("ret_1d")              # r_t = C_t / C_{t-1} - 1
ANN = math.sqrt(252)
# output columns, in the models' order
FEATURES = (
    "ret_1d ret_5d ret_10d ret_20d ret_60d logret_1d logret_5d logret_10d logret_20d logret_60d vol_20d vol_60d "
    "parkinson_vol_20d gk_vol_20d sma_ratio_5_20 sma_ratio_20_50 sma_ratio_50_200 close_sma_5 close_sma_20 "
    "close_sma_60 close_sma_200 close_ema_12 close_ema_26 rsi_14 macd macd_signal macd_hist bb_pctb_20 bb_width_20 "
    "atr_14 atr_pct_14 stoch_k_14 stoch_d_3 obv obv_chg_20 volume_z_20 dollar_volume_20 kmid klen kup klow ksft "
    "close_to_max_20 close_to_min_20 close_to_max_60 close_to_min_60 range_pos_20 qtlu_20 qtld_20 beta_60 corr_60 "
    "news_count_1d news_sentiment_1d news_sentiment_5d news_pos_share_1d news_neg_share_1d insider_net_buy_30d_adv "
    "insider_net_buy_90d_adv insider_buys_90d insider_sells_90d insider_buyers_90d rank_ret_20d rank_vol_20d").split()
LABELS = ("horizon label_session fwd_return label_class barrier_session fwd_return_cc label_session_cc "
          "fwd_return_oo label_session_oo sigma_20d vol_threshold").split()


def _prep(x) -> pl.LazyFrame | None:
    """Lazy input with typed keys: session ISO string -> pl.Date; symbol -> Categorical (cheaper joins/sort)."""
    if x is None:
        return None
    lf = x.lazy() if isinstance(x, pl.DataFrame) else x
    keys = [pl.col("session").cast(pl.Utf8).str.slice(0, 10).str.to_date("%Y-%m-%d")]
    if "symbol" in lf.collect_schema().names():
        keys.append(pl.col("symbol").cast(pl.Categorical))
    return lf.with_columns(keys)


def read_inputs(root: str):
    """Lazy scans of <root>/<table>/*/data.parquet (the hive key duplicates the session column: ignored)."""
    def scan(table):
        pattern = f"{root}/{table}/*/data.parquet"
        if not glob.glob(pattern):
            return None  # optional table not materialised
        return pl.scan_parquet(pattern, hive_partitioning=False, missing_columns="insert")
    return scan("prices"), scan("benchmark"), scan("news_sentiment"), scan("insider_flow")


def seeded_ewm(x: pl.Expr, n: int, alpha: float, seed_bar: int) -> pl.Expr:
    """SMA-seeded smoother, per symbol: E_s = mean(x over the n bars ending at s), then the recursion.
    NULL before bar s (also when fewer than n inputs exist at s, e.g. the MACD signal's NULL line)."""
    seeded = pl.when(T == seed_bar).then(x.rolling_mean(n)).when(T > seed_bar).then(x)
    return seeded.ewm_mean(alpha=alpha, adjust=False).over("symbol")


def _pct_rank(col: str) -> pl.Expr:
    """(rank - 1) / (n - 1) across the session's symbols, ties at the lowest rank; 0 if n = 1; NULL stays NULL."""
    x = pl.col(col)
    n = x.count().over("session")
    pct = (x.rank("min").over("session") - 1) / (n - 1)
    return pl.when(x.is_null()).then(None).when(n == 1).then(0.0).otherwise(pct)


def compute(prices, benchmark, news, flow, label: dict) -> tuple[pl.DataFrame, pl.DataFrame]:
    """returns (features, labels): features has symbol, session (pl.Date) and every column of features_daily
    (except input_hash); labels has symbol, session and every column of the labels model."""
    ln2 = math.log(2)
    # ---- stg_prices: drop bad closes, adjust OHLC with adj_close / close (same operation order as the SQL)
    px = (_prep(prices).filter(pl.col("close").is_not_null() & (pl.col("close") > 0))
          .select("symbol", "session", "close", V=pl.col("volume").cast(pl.Float64), C=pl.col("adj_close"),
                  O=pl.col("open") * pl.col("adj_close") / pl.col("close"),
                  H=pl.col("high") * pl.col("adj_close") / pl.col("close"),
                  L=pl.col("low") * pl.col("adj_close") / pl.col("close")))
    # ---- point-in-time side inputs, joined on session / (symbol, session) as they are (no shift)
    bench = _prep(benchmark).select("session", rb=pl.col("ret_1d")).unique("session", keep="first")
    px = px.join(bench, on="session", how="left")
    if news is not None:
        px = px.join(_prep(news).select(
            "symbol", "session", news_count_1d=pl.col("news_count"), news_sentiment_1d=pl.col("sentiment_mean"),
            news_sentiment_5d=pl.col("sentiment_mean_5d"), news_pos_share_1d=pl.col("positive_share"),
            news_neg_share_1d=pl.col("negative_share")), on=["symbol", "session"], how="left")
    if flow is not None:
        px = px.join(_prep(flow).select(
            "symbol", "session", "net_buy_value_30d", "net_buy_value_90d", insider_buys_90d=pl.col("buy_count_90d"),
            insider_sells_90d=pl.col("sell_count_90d"), insider_buyers_90d=pl.col("distinct_buyers_90d")),
            on=["symbol", "session"], how="left")
    px = px.sort("symbol", "session").with_columns(t=pl.int_range(1, pl.len() + 1).over("symbol"))

    # ---- stage 1: one-bar inputs (lags within the symbol)
    c1 = C.shift(1).over("symbol")
    d = C - c1                                                    # NULL on bar 1
    hl2 = (H / L).log() ** 2
    r, rb = C / c1 - 1, pl.col("rb")
    pair = r.is_not_null() & rb.is_not_null()
    px = px.with_columns(
        ret_1d=r,
        gain=d.clip(lower_bound=0), loss=(-d).clip(lower_bound=0),
        tr=pl.when(c1.is_not_null()).then(pl.max_horizontal(H - L, (H - c1).abs(), (L - c1).abs())),
        obv=(d.sign() * V).fill_null(0.0).cum_sum().over("symbol"),
        hl2=hl2, gk=0.5 * hl2 - (2 * ln2 - 1) * (C / O).log() ** 2,
        # beta/corr need complete (r, r_b) pairs: mask both sides where either is missing
        rp=pl.when(pair).then(r), bp=pl.when(pair).then(rb),
    )

    # ---- stage 2: rolling windows and smoothers, all per symbol
    def w(e: pl.Expr) -> pl.Expr:
        return e.over("symbol")

    sma = {n: w(C.rolling_mean(n)) for n in (5, 20, 50, 60, 200)}
    hi14, lo14 = w(H.rolling_max(14)), w(L.rolling_min(14))
    max20, min20 = w(C.rolling_max(20)), w(C.rolling_min(20))
    sd20p = w(C.rolling_std(20, ddof=0))
    ema12, ema26 = seeded_ewm(C, 12, 2 / 13, 12), seeded_ewm(C, 26, 2 / 27, 26)
    avg_gain = seeded_ewm(pl.col("gain"), 14, 1 / 14, 15)
    avg_loss = seeded_ewm(pl.col("loss"), 14, 1 / 14, 15)
    vmean, vsd = w(V.rolling_mean(20)), w(V.rolling_std(20))
    feats = {
        **{f"ret_{n}d": C / w(C.shift(n)) - 1 for n in (5, 10, 20, 60)},
        **{f"logret_{n}d": (C / w(C.shift(n))).log() for n in (1, 5, 10, 20, 60)},
        "vol_20d": w(R.rolling_std(20)) * ANN,
        "vol_60d": w(R.rolling_std(60)) * ANN,
        "parkinson_vol_20d": (252 / (4 * ln2) * w(pl.col("hl2").rolling_mean(20))).sqrt(),
        "gk_vol_20d": (252 * w(pl.col("gk").rolling_mean(20)).clip(lower_bound=0)).sqrt(),
        "sma_ratio_5_20": sma[5] / sma[20],
        "sma_ratio_20_50": sma[20] / sma[50],
        "sma_ratio_50_200": sma[50] / sma[200],
        **{f"close_sma_{n}": C / sma[n] for n in (5, 20, 60, 200)},
        "close_ema_12": C / ema12,
        "close_ema_26": C / ema26,
        "macd_line": ema12 - ema26,                                  # price units, helper
        "rsi_14": 100 - 100 / (1 + avg_gain / avg_loss),
        "stoch_k_14": pl.when(hi14 > lo14).then((100 * (C - lo14) / (hi14 - lo14)).clip(0, 100)),
        "bb_pctb_20": pl.when(sd20p > 0).then((C - (sma[20] - 2 * sd20p)) / (4 * sd20p)),
        "bb_width_20": 4 * sd20p / sma[20],
        "atr_14": seeded_ewm(pl.col("tr"), 14, 1 / 14, 15),
        "obv_chg_20": (pl.col("obv") - w(pl.col("obv").shift(20))) / w(V.rolling_sum(20)),
        "volume_z_20": pl.when(vsd > 0).then((V - vmean) / vsd),
        "dollar_volume_20": w((pl.col("close") * V).rolling_mean(20)),
        "kmid": (C - O) / O,
        "klen": (H - L) / O,
        "kup": (H - pl.max_horizontal(O, C)) / O,
        "klow": (pl.min_horizontal(O, C) - L) / O,
        "ksft": (2 * C - H - L) / O,
        "close_to_max_20": C / max20,
        "close_to_min_20": C / min20,
        "close_to_max_60": C / w(C.rolling_max(60)),
        "close_to_min_60": C / w(C.rolling_min(60)),
        "range_pos_20": pl.when(max20 > min20).then((C - min20) / (max20 - min20)),
        "qtlu_20": w(C.rolling_quantile(0.8, "linear", 20)) / C,
        "qtld_20": w(C.rolling_quantile(0.2, "linear", 20)) / C,
        "beta_60": w(pl.rolling_cov("rp", "bp", window_size=60) / pl.col("bp").rolling_var(60)),
        "corr_60": w(pl.rolling_corr("rp", "bp", window_size=60)),
    }
    px = px.with_columns(**feats)

    # ---- stage 3: what builds on stage 2 (MACD signal, %D, ATR %, insider flow over ADV)
    line = pl.col("macd_line")
    signal = seeded_ewm(line, 9, 2 / 10, 34)
    px = px.with_columns(
        macd=line / C, macd_signal=signal / C, macd_hist=(line - signal) / C,
        stoch_d_3=w(pl.col("stoch_k_14").rolling_mean(3)),
        atr_pct_14=pl.col("atr_14") / C,
        **({"insider_net_buy_30d_adv": pl.col("net_buy_value_30d") / pl.col("dollar_volume_20"),
            "insider_net_buy_90d_adv": pl.col("net_buy_value_90d") / pl.col("dollar_volume_20")}
           if flow is not None else {}),
    )
    # ---- stage 4: cross-section per session
    px = px.with_columns(rank_ret_20d=_pct_rank("ret_20d"), rank_vol_20d=_pct_rank("vol_20d"))

    # ---- labels (forward-looking: lead = negative shift within the symbol)
    h, k = int(label["h"]), float(label.get("k") or 0.0)
    def lead(e: pl.Expr, n: int) -> pl.Expr:
        return e.shift(-n).over("symbol")

    sigma = w(R.rolling_std(20))
    px = px.with_columns(**{
        "horizon": pl.lit(h, pl.Int32),
        "fwd_return_cc": lead(C, h) / C - 1, "label_session_cc": lead(pl.col("session"), h),
        "fwd_return_oo": lead(O, h + 1) / lead(O, 1) - 1, "label_session_oo": lead(pl.col("session"), h + 1),
        "sigma_20d": sigma, "vol_threshold": k * sigma * math.sqrt(h),
    })
    sfx = "oo" if label["price"] == "open" else "cc"
    fwd, thr = pl.col(f"fwd_return_{sfx}"), pl.col("vol_threshold")
    if label["kind"] == "forward_return_class":
        up, down = pl.lit(float(label["up"])), pl.lit(float(label["down"]))
    elif label["kind"] == "vol_scaled_class":
        up, down = thr, -thr
    else:  # triple_barrier: path-dependent exits, not implemented in this peer -> NULL
        up = down = fwd = pl.lit(None, pl.Float64)
    cls = pl.when(fwd > up).then(2).when(fwd < down).then(0).when(fwd.is_not_null() & up.is_not_null()).then(1)
    px = px.with_columns(label_session=pl.col(f"label_session_{sfx}"), fwd_return=fwd,
                         label_class=cls.cast(pl.Int32), barrier_session=pl.lit(None, pl.Date))

    # ---- outputs (alt-data columns NULL when their table is absent); NaN (0/0) -> NULL as SQL gives
    have = set(px.collect_schema().names())
    cols = [pl.col(c) if c in have else pl.lit(None, pl.Float64).alias(c) for c in FEATURES]
    out = (px.select(pl.col("symbol").cast(pl.Utf8), "session", *cols, *LABELS)
           .with_columns(pl.col(pl.Float64).fill_nan(None)).collect())
    return out.select("symbol", "session", *FEATURES), out.select("symbol", "session", *LABELS)
