"""``sma_cross`` {fast, slow}: long while SMA(fast) > SMA(slow); long/short: short while below; flat until
SMA(slow) exists. A state rule: it holds the position for as long as the condition holds."""

import numpy as np
from numba import njit

from qt_assets.backtests.indicators import indicator
from qt_resources.plugins import Param, rule


@njit(cache=True)
def sma_direction_nb(fast, slow, longshort, out):
    """sma_cross: +1 while SMA(fast) > SMA(slow), -1 below (long/short), 0 until SMA(slow) exists."""
    n_t, n_s = slow.shape
    for t in range(n_t):
        for j in range(n_s):
            f, s = fast[t, j], slow[t, j]
            if np.isnan(s):
                out[t, j] = 0.0
            elif f > s:
                out[t, j] = 1.0
            elif longshort and f < s:
                out[t, j] = -1.0
            else:
                out[t, j] = 0.0


def _fast_below_slow(p: dict) -> str | None:
    return f"fast: {p['fast']:g} is not below slow ({p['slow']:g})" if p["fast"] >= p["slow"] else None


@rule("sma_cross", {"fast": Param(20, int, 1, 1000, "fast SMA window, sessions"),
                    "slow": Param(50, int, 2, 2000, "slow SMA window, sessions")},
      description="long while SMA(fast) > SMA(slow); long/short: short while below",
      check=_fast_below_slow, kernel="sma")
def sma_cross(params: dict, close, longshort: bool, cache: dict) -> np.ndarray:
    out = np.empty(close.shape)
    sma_direction_nb(indicator("sma", int(params["fast"]), close, cache),
                     indicator("sma", int(params["slow"]), close, cache), longshort, out)
    return out
