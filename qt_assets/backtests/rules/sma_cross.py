"""``sma_cross`` {fast, slow}: long while SMA(fast) > SMA(slow); long/short: short while below; flat until
SMA(slow) exists. A state rule: it holds the position for as long as the condition holds; with ``entry: cross``
it enters only on a crossover after SMA(slow) exists (the classic SMA-cross of other engines)."""

import numpy as np

from qt_resources.plugins import Param, rule


def _fast_below_slow(p: dict) -> str | None:
    return f"fast: {p['fast']:g} is not below slow ({p['slow']:g})" if p["fast"] >= p["slow"] else None


def _ready(params: dict, close, cache: dict):
    from qt_assets.backtests.indicators import indicator
    from qt_assets.backtests.kernels import first_valid_rows_nb

    return first_valid_rows_nb(indicator("sma", int(params["slow"]), close, cache))


@rule("sma_cross", {"fast": Param(20, int, 1, 1000, "fast SMA window, sessions"),
                    "slow": Param(50, int, 2, 2000, "slow SMA window, sessions")},
      description="long while SMA(fast) > SMA(slow); long/short: short while below",
      check=_fast_below_slow, kernel="sma", ready=_ready)
def sma_cross(params: dict, close, longshort: bool, cache: dict) -> np.ndarray:
    from qt_assets.backtests.indicators import indicator
    from qt_assets.backtests.kernels import sma_direction_nb

    out = np.empty(close.shape)
    sma_direction_nb(indicator("sma", int(params["fast"]), close, cache),
                     indicator("sma", int(params["slow"]), close, cache), longshort, out)
    return out
