"""How much history each feature needs before the first session it is used on (``data.warmup_sessions``).

A windowed feature is exact once its window is full: it needs the window's sessions before the row. A recursive
one (EMAs, MACD, Wilder's RSI and ATR) is seeded with the mean of its first inputs and then forgets the seed
geometrically, the slowest by (25/27)^k (EMA 26, in MACD) and (13/14)^k (RSI, ATR): after ``RECURSIVE`` sessions
its value is within 1e-6 of the value on an unlimited history (relative to the value, or to the feature's typical
magnitude where the value crosses 0: tests/qt_assets/features/test_warmup.py checks every feature on real and
synthetic bars). ``obv`` is a running sum from the symbol's first bar: it never converges, by definition, so it
is left out (``obv_chg_20`` is its 20-session change, which does). The alternative-data features (news, Form 4)
are computed from their own sources' partitions, which the warm-up does not fetch: 0.

Pure Python (no numba, no pandas): the config's default is resolved here when the definitions load.
"""

from __future__ import annotations

RECURSIVE = 300  # sessions: (13/14)^284 and (25/27)^274 < 1e-9 after the 15- / 26-bar seed
NEVER = None  # obv: a running sum from the first bar

WARMUP: dict[str, int | None] = {
    **{f"{kind}_{n}d": n for kind in ("ret", "logret") for n in (1, 5, 10, 20, 60)},
    "vol_20d": 20, "vol_60d": 60, "parkinson_vol_20d": 19, "gk_vol_20d": 19,
    "sma_ratio_5_20": 19, "sma_ratio_20_50": 49, "sma_ratio_50_200": 199,
    "close_sma_5": 4, "close_sma_20": 19, "close_sma_60": 59, "close_sma_200": 199,
    "close_ema_12": RECURSIVE, "close_ema_26": RECURSIVE, "rsi_14": RECURSIVE, "macd": RECURSIVE,
    "macd_signal": RECURSIVE, "macd_hist": RECURSIVE, "atr_14": RECURSIVE, "atr_pct_14": RECURSIVE,
    "bb_pctb_20": 19, "bb_width_20": 19, "stoch_k_14": 13, "stoch_d_3": 15,
    "obv": NEVER, "obv_chg_20": 20, "volume_z_20": 19, "dollar_volume_20": 19,
    "kmid": 0, "klen": 0, "kup": 0, "klow": 0, "ksft": 0,
    "close_to_max_20": 19, "close_to_min_20": 19, "close_to_max_60": 59, "close_to_min_60": 59,
    "range_pos_20": 19, "qtlu_20": 19, "qtld_20": 19, "beta_60": 60, "corr_60": 60,
    "insider_net_buy_30d_adv": 19, "insider_net_buy_90d_adv": 19,
    "rank_ret_20d": 20, "rank_vol_20d": 20,
}


def needed(features: list[str]) -> int:
    """Sessions of history the configured ``features`` need before the first used session (0 for features
    without a price window: alternative data)."""
    return max([WARMUP.get(f) or 0 for f in features] + [0])
