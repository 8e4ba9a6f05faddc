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


@njit(cache=True)
def first_valid_rows_nb(x):
    """Per column, the first row where ``x`` is not NaN (the number of rows when there is none)."""
    n_t, n_s = x.shape
    out = np.full(n_s, n_t, dtype=np.int64)
    for j in range(n_s):
        for t in range(n_t):
            if not np.isnan(x[t, j]):
                out[j] = t
                break
    return out


@njit(cache=True)
def cross_entries_nb(d, ready):
    """``entry: cross`` in place: column j's directions are 0 until the first row after ``ready[j]`` (the
    signal's first row) where the direction changes; from that event on they are the rule's. A direction that
    already holds when the signal first exists is not acted on until it changes (a crossover, not a state)."""
    n_t, n_s = d.shape
    for j in range(n_s):
        live = False
        prev = 0.0
        for t in range(n_t):
            cur = d[t, j]
            if not live and t > ready[j] and cur != prev:
                live = True
            if not live:
                d[t, j] = 0.0
            prev = cur
