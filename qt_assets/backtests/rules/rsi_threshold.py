"""``rsi_threshold`` {window, lower, upper}: Wilder RSI (alpha = 1/window, seeded by the first ``window``
changes' simple means, as the dbt feature ``rsi_14``); enter long when RSI < lower, exit when RSI > upper
(long/short: then go short, and cover/flip long when RSI < lower). The state persists between signals."""

import numpy as np
from numba import njit

from qt_assets.backtests.indicators import indicator
from qt_resources.plugins import Param, rule


@njit(cache=True)
def latch_direction_nb(x, lower, upper, longshort, out):
    """rsi_threshold: +1 from a session with x < lower until one with x > upper (then -1 for long/short, 0 for
    long-only), and back; 0 before the first signal (NaN x carries the state)."""
    n_t, n_s = x.shape
    for j in range(n_s):
        state = 0.0
        for t in range(n_t):
            v = x[t, j]
            if v < lower:
                state = 1.0
            elif v > upper:
                state = -1.0 if longshort else 0.0
            out[t, j] = state


def _lower_below_upper(p: dict) -> str | None:
    return f"lower: {p['lower']:g} is not below upper ({p['upper']:g})" if p["lower"] >= p["upper"] else None


@rule("rsi_threshold", {"window": Param(14, int, 2, 500, "Wilder RSI window, sessions"),
                        "lower": Param(30.0, float, 0, 100, "enter long below this RSI"),
                        "upper": Param(70.0, float, 0, 100, "exit (long/short: go short) above this RSI")},
      description="long from RSI < lower until RSI > upper (long/short: then short)",
      check=_lower_below_upper, kernel="latch")
def rsi_threshold(params: dict, close, longshort: bool, cache: dict) -> np.ndarray:
    out = np.empty(close.shape)
    latch_direction_nb(indicator("rsi", int(params["window"]), close, cache), float(params["lower"]),
                       float(params["upper"]), longshort, out)
    return out
