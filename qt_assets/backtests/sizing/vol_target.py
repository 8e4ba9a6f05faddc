"""``vol_target`` {target_vol, vol_lookback, max_weight}: per position min(max_weight, target_vol / realised
vol), the realised vol being the annualised std of the last ``vol_lookback`` daily log returns (computed from
the whole close history, 0 until there are that many); re-targeted every session."""

import numpy as np

from qt_resources.plugins import Param, sizing_kind


def realised_vol(close, lookback: int) -> np.ndarray:
    """Annualised std of the last ``lookback`` daily log returns (NaN until there are that many); ``close`` a frame
    or an array."""
    import pandas as pd

    from qt_assets.backtests.engine import YEAR_SESSIONS  # here: loading the registry does not load vectorbt

    lr = pd.DataFrame(np.log(np.asarray(close, dtype=float))).diff()
    return lr.rolling(lookback, min_periods=lookback).std().to_numpy() * np.sqrt(YEAR_SESSIONS)


@sizing_kind("vol_target", {"target_vol": Param(0.15, float, 0, 2, "annualised volatility per position", open_lo=True),
                            "vol_lookback": Param(20, int, 2, 252, "sessions of the volatility estimate"),
                            "max_weight": Param(0.5, float, 0, 1, "cap on each position's weight", open_lo=True)},
             description="min(max_weight, target_vol / realised vol) per position, re-targeted each session")
def vol_target(params: dict, close) -> np.ndarray:
    vol = realised_vol(close, int(params["vol_lookback"]))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nan_to_num(np.minimum(params["max_weight"], params["target_vol"] / vol), nan=0.0)
