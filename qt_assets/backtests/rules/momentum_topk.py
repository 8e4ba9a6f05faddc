"""``momentum_topk`` {lookback, k, rebalance, skip}: every ``rebalance`` sessions rank the symbols by their
return over ``lookback`` sessions ending ``skip`` sessions ago; long the top k (long/short: short the bottom k);
hold until the next rebalance."""

import numpy as np

from qt_resources.plugins import Param, rule


def _ready(params: dict, close, cache: dict):
    from qt_assets.backtests.engine import f64
    from qt_assets.backtests.kernels import first_valid_rows_nb

    lb, skip = int(params["lookback"]), int(params["skip"])
    return first_valid_rows_nb(f64(close.shift(skip) / close.shift(skip + lb)))


@rule("momentum_topk", {"lookback": Param(60, int, 1, 1000, "return window, sessions"),
                        "k": Param(2, int, 1, 500, "positions per side"),
                        "rebalance": Param(21, int, 1, 252, "sessions between re-rankings"),
                        "skip": Param(0, int, 0, 60, "the window ends this many sessions ago")},
      description="every `rebalance` sessions, long the top k by momentum (long/short: short the bottom k)",
      slots="k", ready=_ready)
def momentum_topk(params: dict, close, longshort: bool, cache: dict) -> np.ndarray:
    import pandas as pd

    lb, k, reb, skip = (int(params[p]) for p in ("lookback", "k", "rebalance", "skip"))
    mom = close.shift(skip) / close.shift(skip + lb) - 1
    d = (mom.rank(axis=1, ascending=False, method="first") <= k).astype(float)
    if longshort:
        d = d - (mom.rank(axis=1, ascending=True, method="first") <= k).astype(float)
    d = d.where(mom.notna(), 0.0)
    first = int(np.argmax(mom.notna().any(axis=1).to_numpy())) if mom.notna().any().any() else len(close)
    on = np.zeros(len(close), dtype=bool)
    on[first::reb] = True
    return d.where(pd.Series(on, index=close.index), np.nan, axis=0).ffill().fillna(0.0).to_numpy()
