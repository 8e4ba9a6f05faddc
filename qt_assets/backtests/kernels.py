"""The compiled direction kernels of the built-in rules that run inside the sweep's kernel (``rules/sma_cross.py``:
``kernel="sma"``, ``rules/rsi_threshold.py``: ``kernel="latch"``); kept out of the rules package so that loading
the registry (every config validation) does not load numba."""

import numpy as np
from numba import njit


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
