"""Strategies -> target weights, for the backtest engine (and the agents): rule strategies from the config and
model strategies (scores) through the same path: desired direction per session and symbol (+1 long, -1 short,
0 flat, decided from data up to and including that session's close) -> sizing -> risk caps -> weights.

Rules (adjusted closes; every indicator at session D uses closes <= D only):
- ``sma_cross``   {fast, slow}: long while SMA(fast) > SMA(slow); long/short: short while below.
- ``rsi_threshold`` {window, lower, upper}: Wilder RSI (alpha = 1/window, seeded by the first ``window``
  changes' simple means, as the dbt feature ``rsi_14``); enter long when RSI < lower, exit when RSI > upper
  (long/short: then go short, and cover/flip long when RSI < lower). The state persists between signals.
- ``momentum_topk`` {lookback, k, rebalance, skip}: every ``rebalance`` sessions rank the symbols by their return
  over ``lookback`` sessions ending ``skip`` sessions ago; long the top k (long/short: short the bottom k); hold
  until the next rebalance.
- model: per session, the top_k scores above ``min_score`` are long (long/short: the bottom top_k below
  ``-min_score`` short).

Sizing (``SizingSection``): equal (1/slots), fixed_fraction (fraction at entry, then drift: the weight is given
only on sessions where the direction changes, NaN otherwise), target_percent, vol_target
(min(max_weight, target_vol / (std of the last vol_lookback daily log returns * sqrt(252)))). Then each weight is
capped at ``max_position_pct`` and the session's gross exposure scaled down to ``max_gross_exposure``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from numba import njit

from qt_assets.engine import YEAR_SESSIONS, f64
from qt_resources.config import RiskLimits, SelectionSection, SizingSection, StrategySection, rule_param_problem


# --- indicators (wide frames: sessions x symbols) ---------------------------------------------------------
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


# --- rule signals -> direction (-1/0/+1) -----------------------------------------------------------------
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


INDICATORS = {"sma": sma, "rsi": wilder_rsi}


def indicator(kind: str, n: int, close: pd.DataFrame, cache: dict) -> np.ndarray:
    """``INDICATORS[kind](close, n)`` as an array, computed once per ``cache`` (keyed by kind and window)."""
    if (kind, n) not in cache:
        cache[(kind, n)] = INDICATORS[kind](close, n).to_numpy()
    return cache[(kind, n)]


def _direction(rule: str, params: dict, close: pd.DataFrame, longshort: bool, cache: dict) -> np.ndarray:
    out = np.empty(close.shape)
    if rule == "sma_cross":
        sma_direction_nb(indicator("sma", int(params["fast"]), close, cache),
                         indicator("sma", int(params["slow"]), close, cache), longshort, out)
        return out
    if rule == "rsi_threshold":
        latch_direction_nb(indicator("rsi", int(params["window"]), close, cache), float(params["lower"]),
                           float(params["upper"]), longshort, out)
        return out
    if rule == "momentum_topk":
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
    raise ValueError(f"rule: {rule!r} is unknown")


def rule_direction(rule: str, params: dict, close: pd.DataFrame, longshort: bool, cache: dict | None = None) -> pd.DataFrame:
    d = _direction(rule, params, close, longshort, {} if cache is None else cache)
    return pd.DataFrame(d, index=close.index, columns=close.columns)


def score_direction(scores: pd.DataFrame, selection: SelectionSection, longshort: bool) -> pd.DataFrame:
    """``scores`` long (session, symbol, score) -> wide direction (sessions x symbols)."""
    wide = scores.pivot(index="session", columns="symbol", values="score")
    wide.index = pd.DatetimeIndex(wide.index)
    hi = wide.rank(axis=1, ascending=False, method="first")
    d = ((hi <= selection.top_k) & (wide > selection.min_score)).astype(float)
    if longshort:
        lo = wide.rank(axis=1, ascending=True, method="first")
        d = d - ((lo <= selection.top_k) & (wide < -selection.min_score)).astype(float)
    return d


# --- direction -> weights --------------------------------------------------------------------------------
@njit(cache=True)
def size_one_nb(d, mult, inv_slots, cap, max_gross, sparse, w):
    """(sessions, symbols) directions ``d`` -> weights ``w``: d * mult / slots, capped at +-cap per position, the
    session's gross scaled down to max_gross; ``sparse``: NaN where the direction did not change."""
    n_t, n_s = d.shape
    for t in range(n_t):
        gross = 0.0
        for j in range(n_s):
            x = d[t, j] * mult[t, j] * inv_slots
            x = min(max(x, -cap), cap)
            w[t, j] = x
            gross += abs(x)
        if gross > max_gross:
            scale = max_gross / gross
            for j in range(n_s):
                w[t, j] *= scale
        if sparse:
            for j in range(n_s):
                if d[t, j] == (d[t - 1, j] if t > 0 else 0.0):
                    w[t, j] = np.nan


def realised_vol(close: pd.DataFrame | np.ndarray, lookback: int) -> np.ndarray:
    """Annualised std of the last ``lookback`` daily log returns (NaN until there are that many)."""
    lr = pd.DataFrame(np.log(np.asarray(close, dtype=float))).diff()
    return lr.rolling(lookback, min_periods=lookback).std().to_numpy() * np.sqrt(YEAR_SESSIONS)


def sizing_inputs(sizing: SizingSection, close: np.ndarray, shape: tuple, slots,
                  vol: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mult per session and symbol, 1 / slots per combination) for :func:`size_one_nb`; ``shape`` (sessions,
    symbols), ``slots`` a number or one per combination, ``vol`` the realised volatility aligned with the
    directions (vol_target; default: computed from ``close``)."""
    n_combo = np.asarray(slots).size
    inv = np.broadcast_to(1.0 / np.asarray(slots, dtype=float), (n_combo,)).copy()
    if sizing.kind == "equal":
        mult = np.ones(shape)
    elif sizing.kind in ("fixed_fraction", "target_percent"):
        mult = np.full(shape, sizing.fraction if sizing.kind == "fixed_fraction" else sizing.weight)
        inv[:] = 1.0
    elif sizing.kind == "vol_target":
        vol = realised_vol(close, sizing.vol_lookback) if vol is None else vol
        with np.errstate(divide="ignore", invalid="ignore"):
            mult = np.nan_to_num(np.minimum(sizing.max_weight, sizing.target_vol / vol), nan=0.0)
        inv[:] = 1.0
    else:  # pragma: no cover - the config rejects it
        raise ValueError(sizing.kind)
    return np.ascontiguousarray(mult, dtype=np.float64), inv


def size_weights(direction: pd.DataFrame, close: pd.DataFrame, sizing: SizingSection, risk: RiskLimits,
                 slots: int) -> pd.DataFrame:
    full = close.reindex(columns=direction.columns)
    c = full.reindex(index=direction.index).to_numpy(dtype=float)
    vol = None
    if sizing.kind == "vol_target":  # from the whole close history: direction may cover only a few sessions
        vol = pd.DataFrame(realised_vol(full, sizing.vol_lookback), index=full.index,
                           columns=full.columns).reindex(direction.index).to_numpy()
    mult, inv = sizing_inputs(sizing, c, c.shape, slots, vol)
    w = np.empty(c.shape)
    size_one_nb(f64(direction), mult, float(inv[0]), float(risk.max_position_pct), float(risk.max_gross_exposure),
                sizing.kind == "fixed_fraction", w)
    return pd.DataFrame(w, index=direction.index, columns=direction.columns)


def slots(st: StrategySection, n_symbols: int, params: dict | None = None) -> int:
    """Positions the sizing divides by: top-k picks (per side), or the universe for per-symbol rules."""
    if st.kind == "model":
        k = st.selection.top_k
    elif st.rule == "momentum_topk":
        k = int({**st.rule_params(), **(params or {})}["k"])
    else:
        return n_symbols
    return k * (2 if st.direction == "longshort" else 1)


def strategy_weights(st: StrategySection, close: pd.DataFrame, risk: RiskLimits, scores: pd.DataFrame | None = None,
                     params: dict | None = None, cache: dict | None = None) -> pd.DataFrame:
    """Target weights of one strategy (``params`` overrides the rule's params, for sweeps)."""
    ls = st.direction == "longshort"
    if st.kind == "model":
        if scores is None:
            raise ValueError(f"strategy {st.name!r}: a model strategy needs scores")
        d = score_direction(scores, st.selection, ls)
    else:
        d = rule_direction(st.rule, {**st.rule_params(), **(params or {})}, close, ls, cache)
    return size_weights(d, close, st.sizing, risk, slots(st, close.shape[1], params))


def sweep_grid(st: StrategySection) -> list[dict]:
    """Every combination of the sweep (other params at their configured values); invalid ones (fast >= slow,
    lower >= upper) are dropped."""
    base = st.rule_params()
    keys = list(st.sweep)
    out = []
    for combo in itertools.product(*(st.sweep[k] for k in keys)):
        p = {**base, **dict(zip(keys, combo))}
        if rule_param_problem(st.rule, p):
            continue
        out.append({k: p[k] for k in keys})
    return out
