"""The one backtest engine: target weights (or signals turned into weights) -> a vectorbt Portfolio.

Every strategy, sweep, walk-forward window and the model-promotion gate goes through :func:`simulate`, which
drives ``vbt.Portfolio.from_order_func`` with the order logic below (vectorbt's mechanism for custom order
logic), so all of vectorbt's records, trades, drawdowns and stats work on the result.

Timing (point in time by construction)
    ``weights`` row D holds the target decided after session D's close. It executes on the NEXT bar:
    at D+1's open (``execution="next_open"``, default) or D+1's close (``"next_close"``). The bar that
    produced a decision never fills it. NaN means "no new decision": the position is left alone.

Orders
    target value = w * V, where V is the portfolio value (cash + positions) marked at the execution prices;
    size = target value / price - position. Sells are executed before buys in each bar, so their proceeds
    fund the buys (one shared cash pool per group). A re-target whose weight change is below
    ``rebalance_band`` or whose notional is below ``min_order_value`` is skipped (closing a position never is).
    Negative weights are shorts; vectorbt carries the short proceeds and debt.

Costs (:class:`qt_resources.costs.CostModel`, the same object the paper broker uses)
    fill price = ref * (1 +/- (slippage + half spread)); commission = max(commission_bps * fill notional,
    min_commission), charged per order. A buy the cash cannot cover with its commission is cut to the size that
    it can (so the commission is always on the filled size).

Stops (optional, per column so a sweep can vary them)
    Stop-loss ``sl``, take-profit ``tp`` (fractions of the entry price) and a trailing stop-loss. They are
    live from the bar after the entry fill (the bar that filled an entry is not used to stop it, as in
    vectorbt), checked on each bar's range: a long is stopped when the low reaches entry * (1 - sl) (or
    peak * (1 - sl) when trailing, peak = highest high of the bars after the entry bar seen BEFORE the current
    bar), at that level, or at the open if the bar opened through it; take-profit likewise on the high. If a
    bar reaches both, the stop-loss is assumed first (conservative). Shorts are mirrored. After a stop the
    column stays flat until a fresh decision: a different target, or a target after a session without one
    (sparse signals), not the same target repeated session after session.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numba import njit
from vectorbt.portfolio import nb as pnb

from qt_resources.costs import CostModel

YEAR_SESSIONS = 252
EXECUTIONS = ("next_open", "next_close")
STOP_NONE, STOP_SL, STOP_TP, STOP_TRAIL = 0, 1, 2, 3
STOP_NAMES = {STOP_SL: "stop_loss", STOP_TP: "take_profit", STOP_TRAIL: "trailing_stop"}


def vbt():
    import vectorbt

    vectorbt.settings.returns["year_freq"] = f"{YEAR_SESSIONS} days"
    vectorbt.settings.array_wrapper["freq"] = "1D"
    return vectorbt


@dataclass(frozen=True)
class Bars:
    """Adjusted OHLC, index sessions (DatetimeIndex), columns symbols."""

    open: pd.DataFrame
    high: pd.DataFrame
    low: pd.DataFrame
    close: pd.DataFrame

    @classmethod
    def from_long(cls, df: pd.DataFrame) -> "Bars":
        """From rows (symbol, session, adj_open, adj_high, adj_low, adj_close)."""
        wide = {k: df.pivot(index="session", columns="symbol", values=f"adj_{k}") for k in ("open", "high", "low", "close")}
        for w in wide.values():
            w.index = pd.DatetimeIndex(w.index)
        return cls(**wide)

    def slice(self, start=None, end=None) -> "Bars":
        return Bars(*(getattr(self, k).loc[start:end] for k in ("open", "high", "low", "close")))


@dataclass(frozen=True)
class Stops:
    sl: float | None = None
    tp: float | None = None
    trailing: bool = False

    @property
    def active(self) -> bool:
        return self.sl is not None or self.tp is not None


# --- numba order logic ----------------------------------------------------------------------------------
@njit(cache=True)
def _pre_segment_nb(c, w, price, high, low, open_, sym, fee_rate, min_fee, slip, band, min_value,
                    sl, tp, trail, st_pos, st_ref, st_peak, st_entry, st_stopped, st_last_w, st_stop_w,
                    plan_size, plan_price, stop_kind, stop_count, order_value):
    i = c.i
    # 1. sync each column's state with the fills of the previous bar; mark at today's execution price
    for col in range(c.from_col, c.to_col):
        s = sym[col]
        pos = c.last_position[col]
        if pos != st_pos[col]:
            oidx = c.last_oidx[col]
            p = c.order_records[oidx]["price"] if oidx >= 0 else np.nan
            old = st_pos[col]
            if pos == 0:
                st_ref[col] = np.nan
            elif old == 0 or (old > 0) != (pos > 0):
                st_ref[col] = p
                st_peak[col] = p
                st_entry[col] = i - 1
            elif abs(pos) > abs(old):  # added to the position: average entry price
                st_ref[col] = (st_ref[col] * abs(old) + p * (abs(pos) - abs(old))) / abs(pos)
            st_pos[col] = pos
        elif pos != 0 and st_entry[col] < i - 1 and i > 0:  # held through bar i-1 (not its entry bar)
            if pos > 0:
                st_peak[col] = max(st_peak[col], high[i - 1, s])
            else:
                st_peak[col] = min(st_peak[col], low[i - 1, s])
        if not np.isnan(price[i, s]):
            c.last_val_price[col] = price[i, s]
    value = 0.0
    for col in range(c.from_col, c.to_col):
        value += c.last_position[col] * c.last_val_price[col]
    value += c.last_cash[c.group]
    # 2. plan at most one order per column
    for k in range(c.group_len):
        col = c.from_col + k
        s = sym[col]
        plan_size[col] = 0.0
        order_value[k] = 0.0
        pos = c.last_position[col]
        px = price[i, s]
        target = w[i, col]
        acted = False
        if not np.isnan(target) and not np.isnan(px) and px > 0:
            fresh = i == 0 or np.isnan(w[i - 1, col]) or target != st_stop_w[col]
            if st_stopped[col] and not fresh:
                acted = True  # the decision that was stopped out, repeated: stay flat
            else:
                st_stopped[col] = False
                st_last_w[col] = target
                cur_w = pos * px / value if value > 0 else 0.0
                size = target * value / px - pos if value > 0 else -pos
                if target == 0.0:
                    size = -pos
                skip = size == 0.0
                if target != 0.0 and abs(target - cur_w) < band:
                    skip = True
                if target != 0.0 and abs(size) * px < min_value:
                    skip = True
                if not skip:
                    plan_size[col] = size
                    plan_price[col] = px
                    acted = True
        if not acted and pos != 0 and st_entry[col] < i and (not np.isnan(sl[col]) or not np.isnan(tp[col])):
            o, h, l = open_[i, s], high[i, s], low[i, s]
            kind = 0
            fill = np.nan
            if pos > 0:
                if not np.isnan(sl[col]):
                    ref = st_peak[col] if trail[col] else st_ref[col]
                    level = ref * (1.0 - sl[col])
                    if o <= level:
                        kind, fill = (STOP_TRAIL if trail[col] else STOP_SL), o
                    elif l <= level:
                        kind, fill = (STOP_TRAIL if trail[col] else STOP_SL), level
                if kind == 0 and not np.isnan(tp[col]):
                    level = st_ref[col] * (1.0 + tp[col])
                    if o >= level:
                        kind, fill = STOP_TP, o
                    elif h >= level:
                        kind, fill = STOP_TP, level
            else:
                if not np.isnan(sl[col]):
                    ref = st_peak[col] if trail[col] else st_ref[col]
                    level = ref * (1.0 + sl[col])
                    if o >= level:
                        kind, fill = (STOP_TRAIL if trail[col] else STOP_SL), o
                    elif h >= level:
                        kind, fill = (STOP_TRAIL if trail[col] else STOP_SL), level
                if kind == 0 and not np.isnan(tp[col]):
                    level = st_ref[col] * (1.0 - tp[col])
                    if o <= level:
                        kind, fill = STOP_TP, o
                    elif l <= level:
                        kind, fill = STOP_TP, level
            if kind != 0:
                plan_size[col] = -pos
                plan_price[col] = fill
                st_stopped[col] = True
                st_stop_w[col] = st_last_w[col]
                stop_count[col] += 1
                if stop_kind.shape[0] > 1:
                    stop_kind[i, col] = kind
        if plan_size[col] != 0.0:
            order_value[k] = plan_size[col] * plan_price[col]
    # 3. sells before buys (insertion sort of the call sequence by signed order value)
    for k in range(c.group_len):
        c.call_seq_now[k] = k
    for a in range(1, c.group_len):
        key = c.call_seq_now[a]
        b = a - 1
        while b >= 0 and order_value[c.call_seq_now[b]] > order_value[key]:
            c.call_seq_now[b + 1] = c.call_seq_now[b]
            b -= 1
        c.call_seq_now[b + 1] = key
    return ()


@njit(cache=True)
def _order_nb(c, plan_size, plan_price, fee_rate, min_fee, slip):
    size = plan_size[c.col]
    if size == 0.0:
        return pnb.order_nothing_nb()
    px = plan_price[c.col]
    p_fill = px * (1.0 + slip) if size > 0 else px * (1.0 - slip)
    if size > 0:  # a buy the cash cannot cover (with its commission) is cut to what it can
        cash = c.cash_now
        if size * p_fill + max(fee_rate * size * p_fill, min_fee) > cash:
            if cash * fee_rate / (1.0 + fee_rate) >= min_fee:
                size = cash / (p_fill * (1.0 + fee_rate))
            else:
                size = (cash - min_fee) / p_fill
            size *= 1.0 - 1e-12
            if size <= 0.0:
                return pnb.order_nothing_nb()
    fee = max(fee_rate * abs(size) * p_fill, min_fee)
    return pnb.order_nb(size=size, price=px, fees=0.0, fixed_fees=fee, slippage=slip)


# --- Python entry point ---------------------------------------------------------------------------------
def simulate(weights: pd.DataFrame, bars: Bars, costs: CostModel, init_cash: float, *,
             execution: str = "next_open", stops: Stops | None = None, sl=None, tp=None, trailing=None,
             rebalance_band: float = 0.0, min_order_value: float = 0.0, group_by=True, record_stops: bool = True):
    """Simulate target weights on ``bars``.

    ``weights``: index sessions (a subset of ``bars``' sessions is fine), columns symbols or a MultiIndex whose
    last level is the symbol (a sweep: one group per combination, cash shared within each group, see
    ``group_by``). ``sl``/``tp``/``trailing`` (arrays, one per column) override ``stops`` for sweeps.
    Returns the vectorbt Portfolio; ``pf.stop_kind`` (sessions x columns, codes in ``STOP_NAMES``) and
    ``pf.stop_count`` say which orders were stop exits."""
    if execution not in EXECUTIONS:
        raise ValueError(f"execution: {execution!r} is not one of {EXECUTIONS}")
    v = vbt()
    close = bars.close
    symbols = list(close.columns)
    cols = weights.columns
    col_symbols = cols.get_level_values(-1) if isinstance(cols, pd.MultiIndex) else cols
    missing = sorted(set(col_symbols) - set(symbols))
    if missing:
        raise ValueError(f"weights: symbols {missing} have no bars")
    sym = np.array([symbols.index(s) for s in col_symbols], dtype=np.int64)
    w = weights.reindex(index=close.index).shift(1)  # decided at D's close -> executes on D+1
    w_arr = np.ascontiguousarray(w.to_numpy(dtype=np.float64))
    px = (bars.open if execution == "next_open" else close).to_numpy(dtype=np.float64)
    n_rows, n_cols = w_arr.shape
    stops = stops or Stops()

    def per_col(x, default):
        if x is None:
            x = default
        return np.broadcast_to(np.asarray(x, dtype=np.float64 if not isinstance(default, bool) else np.bool_),
                               (n_cols,)).copy()

    sl_a = per_col(sl, np.nan if stops.sl is None else stops.sl)
    tp_a = per_col(tp, np.nan if stops.tp is None else stops.tp)
    trail_a = per_col(trailing, bool(stops.trailing))
    state_f = [np.zeros(n_cols), np.full(n_cols, np.nan), np.full(n_cols, np.nan)]  # pos, ref, peak
    st_entry = np.full(n_cols, -10, dtype=np.int64)
    st_stopped = np.zeros(n_cols, dtype=np.bool_)
    st_last_w, st_stop_w = np.full(n_cols, np.nan), np.full(n_cols, np.nan)
    plan_size, plan_price = np.zeros(n_cols), np.zeros(n_cols)
    stop_kind = np.zeros((n_rows, n_cols) if record_stops else (1, 1), dtype=np.int8)
    stop_count = np.zeros(n_cols, dtype=np.int64)
    order_value = np.zeros(n_cols)
    close_b = close.iloc[:, sym].copy()
    close_b.columns = cols
    pf = v.Portfolio.from_order_func(
        close_b, _order_nb, plan_size, plan_price, costs.fee_rate, costs.min_commission, costs.price_impact,
        pre_segment_func_nb=_pre_segment_nb,
        pre_segment_args=(w_arr, px, bars.high.to_numpy(np.float64), bars.low.to_numpy(np.float64),
                          bars.open.to_numpy(np.float64), sym, costs.fee_rate, costs.min_commission,
                          costs.price_impact, float(rebalance_band), float(min_order_value),
                          sl_a, tp_a, trail_a, *state_f, st_entry, st_stopped, st_last_w, st_stop_w,
                          plan_size, plan_price, stop_kind, stop_count, order_value),
        init_cash=init_cash, cash_sharing=True, group_by=group_by, freq="1D", ffill_val_price=True,
        update_value=True)
    pf.stop_kind = pd.DataFrame(stop_kind, index=close.index, columns=cols) if record_stops else None
    pf.stop_count = pd.Series(stop_count, index=cols)
    return pf


def stop_exits(pf) -> pd.DataFrame:
    """One row per stop exit: session, column, kind."""
    if pf.stop_kind is None:
        return pd.DataFrame(columns=["session", "column", "kind"])
    s = pf.stop_kind.stack()
    s = s[s != STOP_NONE]
    return pd.DataFrame({"session": s.index.get_level_values(0), "column": s.index.get_level_values(-1),
                         "kind": [STOP_NAMES[int(k)] for k in s.values]})
