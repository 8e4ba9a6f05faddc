"""``target_percent`` {weight}: ``weight`` per position, re-targeted every session."""

import numpy as np

from qt_resources.plugins import Param, sizing_kind


@sizing_kind("target_percent", {"weight": Param(0.1, float, 0, 1, "weight of each position", open_lo=True)},
             description="`weight` per position, re-targeted each session")
def target_percent(params: dict, close) -> np.ndarray:
    return np.full(close.shape, params["weight"])
