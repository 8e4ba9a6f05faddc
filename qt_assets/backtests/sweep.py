"""The vectorised sweep: every combination of a rule strategy's parameter grid in one compiled pass.

One numba kernel runs the whole grid, combinations spread over the cores (``prange`` over blocks of
combinations; ``backtest.sweep_threads``). Per combination it calls exactly the functions a single backtest
uses, so a combination's row equals its own backtest (a test pins it):

1. the rule's directions from indicator arrays computed once per distinct window for the whole grid, inside
   the kernel for the built-in rules that declare one (``kernel="sma"``: ``kernels.sma_direction_nb``;
   ``kernel="latch"``: ``kernels.latch_direction_nb``); any other registered rule (momentum_topk,
   a user's rule) computes its directions with its own function, a chunk of combinations at a time, and passes
   them in;
2. the sizing, ``strategies.size_one_nb``;
3. the simulation, ``engine._simulate_group_nb`` (next-bar fills through vectorbt's order processor, the cost
   model, stops);
4. the trades, vectorbt's own ``get_exit_trades_nb`` (what ``pf.exit_trades`` runs);
5. the metric accumulators of :mod:`qt_assets.backtests.metrics` (``_returns_stats_nb``, ``trade_stats_nb``,
   ``exposure_stats_nb``, ``bench_stats_nb``), turned into metrics by ``metrics.metrics_frame``.

Only one row of accumulators per combination leaves the kernel: no (sessions x combinations x symbols) weight,
value or order array is built, which is what made the earlier chunked sweep spend most of its time in memory
traffic and pandas.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
import pandas as pd
from numba import njit, prange
from vectorbt.portfolio.enums import log_dt, order_dt
from vectorbt.portfolio.nb import get_exit_trades_nb
from vectorbt.records.nb import col_map_nb

from qt_assets.backtests.engine import _simulate_group_nb, f64
from qt_assets.backtests.metrics import (EXPOSURE_STATS, TRADE_STATS, _returns_stats_nb, bench_stats_nb, exposure_stats_nb,
                               metrics_frame, trade_stats_nb)
from qt_assets.backtests.indicators import indicator
from qt_assets.backtests.kernels import cross_entries_nb, first_valid_rows_nb, latch_direction_nb, sma_direction_nb
from qt_assets.backtests.strategies import entry_directions, size_one_nb, sizing_inputs, slots
from qt_resources.plugins import RULES, SIZING_KINDS

RULE_SMA, RULE_LATCH, RULE_GIVEN = 0, 1, 2
BLOCK = 8  # combinations per scratch allocation (and per unit of work handed to a thread)
_KERNEL_LOCK = threading.Lock()  # numba's default (workqueue) threading layer must not be entered concurrently


@njit(parallel=True, cache=True)
def _sweep_nb(rule, ind, ia, ib, lower, upper, given, longshort, cross, mult, inv_slots, cap, max_gross, sparse,
              price, open_, high, low, close, init_cash, fee_rate, min_fee, slip, band, min_value, at_close, net, whole,
              sl, tp, trail, bench, has_bench, ret_out, trade_out, expo_out, bench_out):
    n_combo = len(inv_slots)
    n_rows, n_sym = close.shape
    sym = np.arange(n_sym)
    groups = np.zeros(n_sym, dtype=np.int64)
    n_blocks = (n_combo + BLOCK - 1) // BLOCK
    for blk in prange(n_blocks):
        d = np.empty((n_rows, n_sym))
        w = np.empty((n_rows, n_sym))
        value = np.empty((n_rows, 1))
        gross = np.empty((n_rows, 1))
        r = np.empty((n_rows, 1))
        stop_kind = np.zeros((1, 1), dtype=np.int8)
        stop_count = np.zeros(n_sym, dtype=np.int64)
        sl_c = np.empty(n_sym)
        tp_c = np.empty(n_sym)
        records = np.empty(max(256, 4 * n_sym), dtype=order_dt)
        logs = np.empty(0, dtype=log_dt)
        t_acc = np.zeros((1, len(TRADE_STATS)))
        e_acc = np.zeros((1, len(EXPOSURE_STATS)))
        b_acc = np.zeros((1, 3))
        for c in range(blk * BLOCK, min(n_combo, (blk + 1) * BLOCK)):
            if rule == RULE_SMA:
                sma_direction_nb(ind[ia[c]], ind[ib[c]], longshort, d)
                if cross:  # the signal exists from SMA(slow)'s first value
                    cross_entries_nb(d, first_valid_rows_nb(ind[ib[c]]))
                size_one_nb(d, mult, inv_slots[c], cap, max_gross, sparse, w)
            elif rule == RULE_LATCH:
                latch_direction_nb(ind[ia[c]], lower[c], upper[c], longshort, d)
                if cross:
                    cross_entries_nb(d, first_valid_rows_nb(ind[ia[c]]))
                size_one_nb(d, mult, inv_slots[c], cap, max_gross, sparse, w)
            else:  # directions given (entry: cross already applied)
                size_one_nb(given[c], mult, inv_slots[c], cap, max_gross, sparse, w)
            sl_c[:] = sl[c]
            tp_c[:] = tp[c]
            records, oidx, _ = _simulate_group_nb(
                w, price, open_, high, low, close, sym, 0, n_sym, 0, init_cash, fee_rate, min_fee, slip, band,
                min_value, at_close, net, whole, sl_c, tp_c, trail, stop_kind, stop_count, records, 0, 0, logs, value,
                gross)
            orders = records[:oidx]
            trades = get_exit_trades_nb(orders, close, col_map_nb(orders["col"], n_sym))
            ret_out[c] = _returns_stats_nb(value, init_cash)[:, 0]
            t_acc[:] = 0.0
            trade_stats_nb(trades, orders, groups, t_acc)
            trade_out[c] = t_acc[0]
            e_acc[:] = 0.0
            exposure_stats_nb(value, gross, e_acc)
            expo_out[c] = e_acc[0]
            if has_bench:
                prev = init_cash
                for t in range(n_rows):
                    r[t, 0] = value[t, 0] / prev - 1.0
                    prev = value[t, 0]
                bench_stats_nb(r, bench, b_acc)
                bench_out[c] = b_acc[0]


def _indicators(kind: str, windows: list[int], close: pd.DataFrame) -> tuple[np.ndarray, dict]:
    """(stack of the indicator for each distinct window, window -> index in the stack)."""
    uniq = sorted(set(windows))
    cache: dict = {}
    return np.stack([indicator(kind, n, close, cache) for n in uniq]), {n: k for k, n in enumerate(uniq)}


def sweep_metrics(st, risk, combos: list[dict], bars, costs, init_cash: float, execution: str,
                  bench: pd.Series | None = None, chunk_cells: int = 2_000_000, threads: int = 0,
                  order_sizing: str = "gross") -> pd.DataFrame:
    """Metrics of every combination of ``combos`` (one row each, in order): the rule strategy ``st`` with each
    combination's params, on ``bars``, in one kernel call (momentum_topk: one per chunk of ``chunk_cells``
    sessions x symbols x combinations of ranked directions). ``threads``: 0 = numba's default (all cores); more
    than numba has (NUMBA_NUM_THREADS) runs on all it has."""
    cache: dict = {}
    close = bars.close
    n_rows, n_sym = close.shape
    c_arr, o_arr, h_arr, l_arr = f64(close), f64(bars.open), f64(bars.high), f64(bars.low)
    px = o_arr if execution == "next_open" else c_arr
    base = st.rule_params()
    params = [{**base, **c} for c in combos]
    ls = st.direction == "longshort"
    mult, inv = sizing_inputs(st.sizing, close, np.array([slots(st, n_sym, c) for c in combos]))
    level = lambda k: np.array([np.nan if v is None else float(v) for v in  # noqa: E731
                                (c.get(k, getattr(st.stops, k)) for c in combos)])
    sl, tp = level("sl"), level("tp")  # per combination: swept, else the strategy's stops
    trail = np.full(n_sym, bool(st.stops.trailing))
    b = (np.zeros(n_rows) if bench is None else f64(bench.reindex(close.index)))
    n = len(combos)
    ret, trade = np.zeros((n, 6)), np.zeros((n, len(TRADE_STATS)))
    expo, bstats = np.zeros((n, len(EXPOSURE_STATS))), np.full((n, 3), np.nan)
    zero_i, zero_f = np.zeros(n, dtype=np.int64), np.zeros(n)
    empty3 = np.empty((0, 1, 1))

    def run(rule, ind, ia, ib, lower, upper, given, sl_):
        with _KERNEL_LOCK:
            prev = numba.get_num_threads()
            numba.set_num_threads(min(threads or numba.config.NUMBA_NUM_THREADS, numba.config.NUMBA_NUM_THREADS))
            try:
                _sweep_nb(rule, ind, ia, ib, lower, upper, given, ls, st.entry == "cross", mult, inv[sl_],
                          float(risk.max_position_pct),
                          float(risk.max_gross_exposure), SIZING_KINDS.get(st.sizing.kind).sparse, px, o_arr,
                          h_arr, l_arr, c_arr, float(init_cash), float(costs.fee_rate),
                          float(costs.min_commission), float(costs.price_impact), float(st.rebalance_band),
                          float(st.min_order_value), execution == "next_close", order_sizing != "gross",
                          order_sizing == "whole", sl[sl_], tp[sl_], trail, b,
                          bench is not None,
                          ret[sl_], trade[sl_], expo[sl_], bstats[sl_])
            finally:
                numba.set_num_threads(prev)

    rule = RULES.get(st.rule)
    if rule.kernel == "sma":
        ind, at = _indicators("sma", [int(p["fast"]) for p in params] + [int(p["slow"]) for p in params], close)
        run(RULE_SMA, ind, np.array([at[int(p["fast"])] for p in params]),
            np.array([at[int(p["slow"])] for p in params]), zero_f, zero_f, empty3, slice(None))
    elif rule.kernel == "latch":
        ind, at = _indicators("rsi", [int(p["window"]) for p in params], close)
        run(RULE_LATCH, ind, np.array([at[int(p["window"])] for p in params]), zero_i,
            np.array([float(p["lower"]) for p in params]), np.array([float(p["upper"]) for p in params]), empty3,
            slice(None))
    else:  # the rule's own directions, a chunk of combinations at a time
        per_chunk = max(1, chunk_cells // (n_rows * n_sym))
        for a in range(0, n, per_chunk):
            z = slice(a, min(n, a + per_chunk))
            given = np.ascontiguousarray(np.stack([entry_directions(st, rule, p, close, rule.direction(
                p, close, ls, cache)) for p in params[z]]), dtype=np.float64)
            run(RULE_GIVEN, empty3, zero_i[z], zero_i[z], zero_f[z], zero_f[z], given, z)
    bad = np.flatnonzero(~np.isfinite(expo[:, 2]))
    if len(bad):
        raise ValueError(f"sweep: the portfolio value of combination {combos[bad[0]]} is not finite")
    return metrics_frame(ret.T, trade, expo, bstats if bench is not None else None, n_rows, pd.RangeIndex(n))
