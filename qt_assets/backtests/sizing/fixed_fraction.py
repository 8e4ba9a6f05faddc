"""``fixed_fraction`` {fraction}: each new position gets ``fraction`` of equity at entry, then drifts with its
price until the direction changes (the weight is given only on sessions where the direction changes)."""

import numpy as np

from qt_resources.plugins import Param, sizing_kind


@sizing_kind("fixed_fraction", {"fraction": Param(0.1, float, 0, 1, "weight of each new position", open_lo=True)},
             description="`fraction` of equity at entry, then left to drift until exit", sparse=True)
def fixed_fraction(params: dict, close) -> np.ndarray:
    return np.full(close.shape, params["fraction"])
