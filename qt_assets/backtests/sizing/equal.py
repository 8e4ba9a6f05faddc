"""``equal``: 1 / slots per position (slots: the top-k picks, or one per symbol for per-symbol rules),
re-targeted every session."""

import numpy as np

from qt_resources.plugins import sizing_kind


@sizing_kind("equal", {}, description="1/slots per position, re-targeted each session", per_slot=True)
def equal(params: dict, close) -> np.ndarray:
    return np.ones(close.shape)
