"""Strategies -> target weights, for the backtest engine (and the agents): rule strategies from the config and
model strategies (scores) through the same path: desired direction per session and symbol (+1 long, -1 short,
0 flat, decided from data up to and including that session's close) -> sizing -> risk caps -> weights.

Rules: one module each in ``qt_assets/backtests/rules/`` (sma_cross, rsi_threshold, momentum_topk; their
docstrings state them), registered in ``qt_resources.plugins.RULES``; every indicator at session D uses adjusted
closes <= D only. A rule's directions are a state ("long while ..."); ``entry: cross`` turns every rule into an
event rule: a symbol enters only when its direction changes after the signal first exists
(:func:`entry_directions`).
- model: per session, the top_k scores above ``min_score`` are long (long/short: the bottom top_k below
  ``-min_score`` short).

Sizing: one module per kind in ``qt_assets/backtests/sizing/`` (equal, fixed_fraction, target_percent,
vol_target; their docstrings state them), registered in ``qt_resources.plugins.SIZING_KINDS``: weight =
direction x the kind's multiplier (/ slots for per-slot kinds; sparse kinds give it only where the direction
changes, NaN otherwise). Then each weight is capped at ``max_position_pct`` and the session's gross exposure
scaled down to ``max_gross_exposure``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from numba import njit

from qt_assets.backtests.engine import f64
from qt_resources.config import RiskLimits, SelectionSection, SizingSection, StrategySection
from qt_resources.plugins import RULES, SIZING_KINDS


# --- rule signals -> direction (-1/0/+1) -----------------------------------------------------------------
def rule_direction(rule: str, params: dict, close: pd.DataFrame, longshort: bool, cache: dict | None = None) -> pd.DataFrame:
    """The registered rule's directions (sessions x symbols) with ``params`` (typed, defaults filled)."""
    d = RULES.get(rule).direction(params, close, longshort, {} if cache is None else cache)
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


def entry_directions(st: StrategySection, rule, params: dict, close: pd.DataFrame, d, cache: dict | None = None):
    """``d`` (the rule's directions, an array sessions x symbols) with the strategy's ``entry`` applied: ``state``
    unchanged; ``cross``: each symbol enters only on a change of its direction after the signal's first session
    (the rule's ``ready``; by default the symbol's first close), see ``kernels.cross_entries_nb``."""
    if st.entry != "cross":
        return d
    from qt_assets.backtests.kernels import cross_entries_nb, first_valid_rows_nb

    ready = (rule.ready(params, close, {} if cache is None else cache) if rule.ready is not None
             else first_valid_rows_nb(f64(close)))
    d = np.array(d, dtype=np.float64, order="C")
    cross_entries_nb(d, np.asarray(ready, dtype=np.int64))
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


def sizing_inputs(sizing: SizingSection, close: pd.DataFrame, slots) -> tuple[np.ndarray, np.ndarray]:
    """(multiplier per session and symbol, 1 / slots per combination) for :func:`size_one_nb`, from the
    registered sizing kind on ``close`` (the whole history, sessions x symbols); ``slots`` a number or one per
    combination (1 for kinds that are not per slot)."""
    kind = SIZING_KINDS.get(sizing.kind)
    n_combo = np.asarray(slots).size
    inv = np.broadcast_to(1.0 / np.asarray(slots, dtype=float), (n_combo,)).copy() if kind.per_slot \
        else np.ones(n_combo)
    mult = np.asarray(kind.multiplier(sizing.kind_params(), close), dtype=np.float64)
    if mult.shape != close.shape:
        raise ValueError(f"sizing kind {sizing.kind!r} returned shape {mult.shape}, not the closes' {close.shape}")
    return np.ascontiguousarray(np.nan_to_num(mult, nan=0.0)), inv


def size_weights(direction: pd.DataFrame, close: pd.DataFrame, sizing: SizingSection, risk: RiskLimits,
                 slots: int) -> pd.DataFrame:
    """Weights of ``direction`` (sessions x symbols), the sizing computed on the whole close history (it may
    need more sessions than the directions cover, e.g. vol_target)."""
    full = close.reindex(columns=direction.columns)
    mult, inv = sizing_inputs(sizing, full, slots)
    m = pd.DataFrame(mult, index=full.index, columns=full.columns).reindex(direction.index).to_numpy()
    w = np.empty(direction.shape)
    size_one_nb(f64(direction), np.ascontiguousarray(np.nan_to_num(m, nan=0.0)), float(inv[0]),
                float(risk.max_position_pct), float(risk.max_gross_exposure),
                SIZING_KINDS.get(sizing.kind).sparse, w)
    return pd.DataFrame(w, index=direction.index, columns=direction.columns)


def slots(st: StrategySection, n_symbols: int, params: dict | None = None) -> int:
    """Positions the sizing divides by: top-k picks (per side), or the universe for per-symbol rules."""
    if st.kind == "model":
        return st.selection.top_k * (2 if st.direction == "longshort" else 1)
    rule = RULES.get(st.rule)
    if rule.slots is None:  # before typing the params: a sweep asks once per combination
        return n_symbols
    return rule.n_slots({**st.rule_params(), **(params or {})}, st.direction == "longshort")


def strategy_weights(st: StrategySection, close: pd.DataFrame, risk: RiskLimits, scores: pd.DataFrame | None = None,
                     params: dict | None = None, cache: dict | None = None) -> pd.DataFrame:
    """Target weights of one strategy (``params`` overrides the rule's params, for sweeps)."""
    ls = st.direction == "longshort"
    if st.kind == "model":
        if scores is None:
            raise ValueError(f"strategy {st.name!r}: a model strategy needs scores")
        d = score_direction(scores, st.selection, ls)
    else:
        p = {**st.rule_params(), **(params or {})}
        cache = {} if cache is None else cache
        d = rule_direction(st.rule, p, close, ls, cache)
        if st.entry == "cross":
            d = pd.DataFrame(entry_directions(st, RULES.get(st.rule), p, close, d.to_numpy(), cache),
                             index=d.index, columns=d.columns)
    return size_weights(d, close, st.sizing, risk, slots(st, close.shape[1], params))


def sweep_grid(st: StrategySection) -> list[dict]:
    """Every combination of the sweep (other params at their configured values); invalid ones (fast >= slow,
    lower >= upper) are dropped."""
    base = st.rule_params()
    check = RULES.get(st.rule).check
    keys = list(st.sweep)
    out = []
    for combo in itertools.product(*(st.sweep[k] for k in keys)):
        p = {**base, **dict(zip(keys, combo))}
        if check is not None and check(p):
            continue
        out.append({k: p[k] for k in keys})
    return out
