"""data.warmup_sessions: with the warm-up the features need (qt_assets/features/warmup.py) before the first used
session, every feature's value on that session equals its value on a much longer history to 1e-6, on real bars
(the bundled AAPL, GOOG, IBM, MSFT) and on synthetic ones; and the warm-up is what the config resolves to."""

import numpy as np
import pandas as pd
import pytest

from qt_assets.features import kernels
from qt_assets.features.warmup import RECURSIVE, WARMUP, needed

TOL = 1e-6


def _bundled(symbol):
    from bokeh_sampledata import stocks

    d = stocks.data[stocks.data["ticker"] == symbol].sort_values("date")
    f = d["adj_close"] / d["close"]
    return pd.DataFrame({"o": d["open"] * f, "h": d["high"] * f, "l": d["low"] * f, "px": d["adj_close"],
                         "raw_close": d["close"], "volume": d["volume"].astype(float)}).reset_index(drop=True)


def _synthetic(symbol):
    from qt_resources.synthetic import synthetic_bars

    d = synthetic_bars([symbol], "2001-01-02", "2012-12-31", 11).sort_values("session")
    f = d["adj_close"] / d["close"]
    return pd.DataFrame({"o": d["open"] * f, "h": d["high"] * f, "l": d["low"] * f, "px": d["adj_close"],
                         "raw_close": d["close"], "volume": d["volume"].astype(float)}).reset_index(drop=True)


def _compute(bars: pd.DataFrame, bench: np.ndarray) -> pd.DataFrame:
    n = len(bars)
    inputs = {k: bars[k].to_numpy(np.float64) for k in ("o", "h", "l", "px", "raw_close", "volume")}
    inputs.update(bench_ret=bench, net_buy_value_30d=np.full(n, np.nan), net_buy_value_90d=np.full(n, np.nan))
    out = kernels.compute(np.array([0, n]), np.array([1]), np.array([0.0]), **inputs)
    return pd.DataFrame(out.T, columns=kernels.KERNEL_COLUMNS)


@pytest.mark.parametrize("source,symbol", [("bundled", "AAPL"), ("bundled", "GOOG"), ("bundled", "IBM"),
                                           ("bundled", "MSFT"), ("synthetic", "SYN1"), ("synthetic", "SYN2")])
def test_every_feature_has_converged_after_its_warmup(source, symbol):
    bars = _bundled(symbol) if source == "bundled" else _synthetic(symbol)
    bench = np.random.default_rng(5).normal(0.0003, 0.01, len(bars))
    long = _compute(bars, bench)
    rng = np.random.default_rng(len(symbol))
    rows = sorted(rng.integers(max(w for w in WARMUP.values() if w) + 50, len(bars), 6))
    checked = 0
    for warm in sorted({w for f, w in WARMUP.items() if w is not None and f in kernels.KERNEL_COLUMNS}):
        feats = [f for f in kernels.KERNEL_COLUMNS if WARMUP.get(f) == warm]
        for d in rows:
            short = _compute(bars.iloc[d - warm:d + 1].reset_index(drop=True), bench[d - warm:d + 1])
            for f in feats:
                a, b = short[f].iloc[-1], long[f].iloc[d]
                if np.isnan(b):  # undefined on the long history too (the insider features: no filings here)
                    assert np.isnan(a), (f, d)
                    continue
                scale = max(abs(b), float(np.nanmedian(np.abs(long[f].to_numpy()))))
                assert abs(a - b) <= TOL * scale, (f"{symbol} {f}: after {warm} warm-up sessions {a!r}, on the whole "
                                                   f"history {b!r} (row {d})")
                checked += 1
    assert checked > 6 * 40  # every kernel feature but obv, on every sampled row


def test_one_session_less_is_not_enough_for_the_windowed_features():
    """The table is tight for the windows: one session less leaves the value undefined or different."""
    bars = _bundled("IBM")
    bench = np.random.default_rng(5).normal(0.0003, 0.01, len(bars))
    long = _compute(bars, bench)
    d = 2500
    for f, warm in WARMUP.items():
        if not warm or warm >= RECURSIVE or f not in kernels.KERNEL_COLUMNS or f.startswith("insider"):
            continue
        short = _compute(bars.iloc[d - warm + 1:d + 1].reset_index(drop=True), bench[d - warm + 1:d + 1])
        a, b = short[f].iloc[-1], long[f].iloc[d]
        assert np.isnan(a) or abs(a - b) > 1e-12 * max(abs(b), 1.0), f


def test_the_default_warmup_is_what_the_configured_features_need():
    from qt_assets.market_data.assets import warmup_sessions
    from qt_resources.config import parse_config
    from tests.conftest import repo_config

    raw = repo_config()
    cfg = parse_config(raw)
    warm = warmup_sessions(cfg)
    assert len(warm) == needed(list(cfg.features.set)) == RECURSIVE  # rsi_14 is configured
    assert warm[-1] < cfg.data.start.isoformat() and len(set(warm)) == len(warm)
    raw["features"]["set"] = ["ret_1d", "ret_20d", "vol_20d"]
    assert len(warmup_sessions(parse_config(raw))) == 20
    raw["data"]["warmup_sessions"] = 0
    assert warmup_sessions(parse_config(raw)) == []
