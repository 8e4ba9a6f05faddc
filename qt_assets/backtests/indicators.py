"""Indicators on wide frames (sessions x symbols) of adjusted closes, each at session D from closes <= D only;
computed once per (kind, window) for a whole sweep through :func:`indicator`."""

from __future__ import annotations

import numpy as np
import pandas as pd


def sma(close: pd.DataFrame, n: int) -> pd.DataFrame:
    return close.rolling(n, min_periods=n).mean()


def wilder_rsi(close: pd.DataFrame, n: int) -> pd.DataFrame:
    """Wilder's RSI: average gain/loss seeded with the simple mean of the first n changes, then
    avg_t = avg_{t-1} + (x_t - avg_{t-1}) / n. NaN for the first n sessions of each column."""
    d = close.diff().to_numpy()
    out = np.full(d.shape, np.nan)
    for j in range(d.shape[1]):
        x = d[:, j]
        ok = np.flatnonzero(~np.isnan(x))
        if len(ok) < n:
            continue
        s = ok[0]
        g, lo = np.clip(x, 0, None), np.clip(-x, 0, None)
        ag, al = g[s:s + n].mean(), lo[s:s + n].mean()
        for t in range(s + n - 1, len(x)):
            if t > s + n - 1:
                if np.isnan(x[t]):
                    continue
                ag += (g[t] - ag) / n
                al += (lo[t] - al) / n
            out[t, j] = 100.0 if al == 0 else 100.0 - 100.0 / (1.0 + ag / al)
    return pd.DataFrame(out, index=close.index, columns=close.columns)


INDICATORS = {"sma": sma, "rsi": wilder_rsi}


def indicator(kind: str, n: int, close: pd.DataFrame, cache: dict) -> np.ndarray:
    """``INDICATORS[kind](close, n)`` as an array, computed once per ``cache`` (keyed by kind and window)."""
    if (kind, n) not in cache:
        cache[(kind, n)] = INDICATORS[kind](close, n).to_numpy()
    return cache[(kind, n)]


