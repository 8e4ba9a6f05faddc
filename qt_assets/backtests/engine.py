"""The one backtest engine: target weights (or signals turned into weights) -> a vectorbt Portfolio.

Every strategy, walk-forward window and the model-promotion gate goes through :func:`simulate`; the compiled
sweep (:mod:`qt_assets.backtests.sweep`) calls the same per-group simulation, :func:`_simulate_group_nb`, for each
combination. Its numba loop decides the orders (the rules below) and executes each through vectorbt's own order processor
(``vectorbt.portfolio.nb.process_order_nb``: fills, fees, slippage, cash, shorts and debt exactly as
``Portfolio.from_orders`` does), writing vectorbt order records; the result is a plain ``vbt.Portfolio``, so
vectorbt's trades, drawdowns and stats work on it. (A first version drove ``Portfolio.from_order_func``; its
per-cell callback contexts made a 10,000-combination sweep ~30x slower, see BENCHMARKS.md.)

Timing (point in time by construction)
    ``weights`` row D holds the target decided after session D's close. It executes on the NEXT bar:
    at D+1's open (``execution="next_open"``, default) or D+1's close (``"next_close"``). The bar that
    produced a decision never fills it. NaN means "no new decision": the position is left alone.

Orders
    target value = w * V, where V is the portfolio value (cash + positions) marked at the execution prices.
    ``order_sizing`` turns it into a size:

    * ``gross`` (the engine's default; vectorbt's ``targetpercent``): size = w * V / price - position;
    * ``net`` (sized after costs): target shares = |w| * V' / (fill * (1 + commission rate)), where fill is the
      price with slippage and half spread on the side of the target and V' = V less the commission of closing the
      current position when the order flips it (backtesting.py's sizing: the new side's shares plus their
      commission fit in the weight of what is left); the minimum commission is not part of the sizing (a buy the
      cash cannot cover is cut, below);
    * ``whole``: as ``net``, the target shares floored to whole shares (what the brokers here trade); a change
      below one share is no order, and a cut buy is cut to whole shares.

    The backtests of the config use ``net`` or ``whole`` (``backtest.shares``). Sells are executed before buys in each bar, so their proceeds
    fund the buys (one shared cash pool per group). A re-target whose weight change is below
    ``rebalance_band`` or whose notional is below ``min_order_value`` (or 1e-9 of V: rounding noise) is skipped,
    and so is a sale other than a close whose proceeds would not cover its commission; closing a position never
    is (a close whose proceeds are below the minimum commission pays its proceeds: the position is written off).
    Negative weights are shorts; vectorbt carries the short proceeds and debt.

Costs (:class:`qt_resources.costs.CostModel`, the same object the paper broker uses)
    fill price = ref * (1 +/- (slippage + half spread)); commission = max(commission_bps * fill notional,
    min_commission), charged per order. A buy the cash cannot cover with its commission is cut to the size that
    it can (so the commission is always on the filled size); buys within a bar go smallest first.

Stops (optional, per column so a sweep can vary them)
    Stop-loss ``sl``, take-profit ``tp`` (fractions of the entry price; averaged when adding) and a trailing
    stop-loss. They are resting orders, live from the bar after the entry fill (the bar that filled an entry is
    not used to stop it, as in vectorbt) on every later bar, including bars where the strategy re-targets:
    a long is stopped when the price reaches entry * (1 - sl) (or peak * (1 - sl) when trailing, peak = the entry
    fill and the highs of the bars after the entry bar seen BEFORE the current bar); take-profit at
    entry * (1 + tp). A bar that opens through a level fills at the open, before that bar's decisions
    (``next_open``); otherwise the bar's range is checked after them, at the level, stop-loss first if a bar
    reaches both (conservative). With ``next_close`` the range is checked before the decisions at the close.
    Shorts are mirrored. A stop counts only when it fills. After a stop the
    column stays flat until a fresh decision: a different target, or a target after a session without one
    (sparse signals), not the same target repeated session after session.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numba import njit
from vectorbt.portfolio import nb as pnb
from vectorbt.portfolio.enums import OrderStatus, ProcessOrderState, log_dt, order_dt

from qt_resources.costs import CostModel

YEAR_SESSIONS = 252
EXECUTIONS = ("next_open", "next_close")
ORDER_SIZINGS = ("gross", "net", "whole")
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


# --- numba simulation -------------------------------------------------------------------------------------
@njit(cache=True)
def _stop_check(pos, o, h, l, ref, peak, sl, tp, trail, gap_only):
    """(kind, fill price) of a stop hit on this bar, kind 0 if none. A bar that opens through a level fills at
    the open (the first price of the bar); otherwise the range is checked, stop-loss first."""
    has_sl, has_tp = not np.isnan(sl), not np.isnan(tp)
    sl_kind = STOP_TRAIL if trail else STOP_SL
    if pos > 0:
        sl_level = (peak if trail else ref) * (1.0 - sl)
        tp_level = ref * (1.0 + tp)
        if has_sl and o <= sl_level:
            return sl_kind, o
        if has_tp and o >= tp_level:
            return STOP_TP, o
        if gap_only:
            return 0, np.nan
        if has_sl and l <= sl_level:
            return sl_kind, sl_level
        if has_tp and h >= tp_level:
            return STOP_TP, tp_level
    else:
        sl_level = (peak if trail else ref) * (1.0 + sl)
        tp_level = ref * (1.0 - tp)
        if has_sl and o >= sl_level:
            return sl_kind, o
        if has_tp and o <= tp_level:
            return STOP_TP, o
        if gap_only:
            return 0, np.nan
        if has_sl and h >= sl_level:
            return sl_kind, sl_level
        if has_tp and l <= tp_level:
            return STOP_TP, tp_level
    return 0, np.nan


@njit(cache=True)
def _room_nb(order_records, oidx, need):
    """``order_records``, grown (doubled) when fewer than ``need`` records fit after ``oidx``."""
    if oidx + need <= len(order_records):
        return order_records
    bigger = np.empty(max(2 * len(order_records), oidx + need), dtype=order_records.dtype)
    bigger[:oidx] = order_records[:oidx]
    return bigger


@njit(cache=True)
def _fill_nb(i, k, col, group, size, px, closing, cash, free_cash, value, position, debt, val_price, oidx, lidx,
             order_records, log_records, fee_rate, min_fee, slip, whole):
    """Execute one order of column ``col`` (state index ``k``) through vectorbt's order processor. A buy the cash
    cannot cover with its commission is cut to what it can; a close whose proceeds do not cover the commission pays
    its proceeds (the position is written off, never left open); any other sale that cannot cover its commission
    is skipped; ``whole``: a cut buy is cut to whole shares. ``order_records`` must have room at ``oidx``
    (:func:`_room_nb`).
    Returns (filled, fill price, cash, free_cash, value, oidx, lidx)."""
    p_fill = px * (1.0 + slip) if size > 0 else px * (1.0 - slip)
    fee = max(fee_rate * abs(size) * p_fill, min_fee)
    if size > 0 and size * p_fill + fee > cash:
        if cash * fee_rate / (1.0 + fee_rate) >= min_fee:
            size = cash / (p_fill * (1.0 + fee_rate))
        else:
            size = (cash - min_fee) / p_fill
        size = np.floor(size) if whole else size * (1.0 - 1e-12)
        if size <= 0.0:
            return False, np.nan, cash, free_cash, value, oidx, lidx
        fee = max(fee_rate * size * p_fill, min_fee)
    if size < 0 and fee >= -size * p_fill:
        if not closing:
            return False, np.nan, cash, free_cash, value, oidx, lidx
        fee = -size * p_fill * (1.0 - 1e-12)
    order = pnb.order_nb(size=size, price=px, fees=0.0, fixed_fees=fee, slippage=slip)
    state = ProcessOrderState(cash=cash, position=position[k], debt=debt[k], free_cash=free_cash,
                              val_price=val_price[k], value=value, oidx=oidx, lidx=lidx)
    res, new = pnb.process_order_nb(i, col, group, state, True, order, order_records, log_records)
    if res.status != OrderStatus.Filled:
        return False, np.nan, cash, free_cash, value, oidx, lidx
    position[k], debt[k] = new.position, new.debt
    if not np.isnan(new.val_price):
        val_price[k] = new.val_price
    return True, res.price, new.cash, new.free_cash, new.value, new.oidx, new.lidx


@njit(cache=True)
def _simulate_group_nb(w, price, open_, high, low, close, sym, from_col, to_col, group, init_cash, fee_rate, min_fee,
                       slip, band, min_value, at_close, net, whole, sl, tp, trail, stop_kind, stop_count, order_records,
                       oidx, lidx, log_records, value_out, gross_out):
    """One cash-sharing group (columns ``from_col`` .. ``to_col`` - 1, column c trades symbol ``sym[c]``) over every
    bar: ``w[i - 1]`` (decided at bar i - 1's close) is the target executed on bar i. Writes the group's value and
    gross exposure (``value_out[:, group]``, ``gross_out[:, group]``) and the stop exits (per column ``stop_count``,
    and ``stop_kind`` when it is not the (1, 1) placeholder). Returns (order_records, oidx, lidx).
    The simulation of a single backtest and of every sweep combination (qt_assets.backtests.sweep) is this function."""
    n_rows = w.shape[0]
    n = to_col - from_col
    position = np.zeros(n)
    debt = np.zeros(n)
    val_price = np.full(n, np.nan)
    ref = np.full(n, np.nan)
    peak = np.full(n, np.nan)
    entry = np.full(n, -10, dtype=np.int64)
    stopped = np.zeros(n, dtype=np.bool_)
    last_w = np.full(n, np.nan)
    stop_w = np.full(n, np.nan)
    plan_size = np.zeros(n)
    order_value = np.zeros(n)
    seq = np.zeros(n, dtype=np.int64)
    record_stops = stop_kind.shape[0] > 1
    any_stops = False
    any_trail = False
    for col in range(from_col, to_col):
        if not np.isnan(sl[col]) or not np.isnan(tp[col]):
            any_stops = True
            if trail[col] and not np.isnan(sl[col]):
                any_trail = True
    gsym = sym[from_col:to_col].copy()
    cash = init_cash
    free_cash = init_cash
    ahead = False
    value_ahead = 0.0
    for i in range(n_rows):
        if any_trail and i > 0:  # trailing reference: extremes of the bars after the entry bar, up to the previous bar
            for k in range(n):
                if position[k] != 0 and entry[k] < i - 1:
                    s = gsym[k]
                    if position[k] > 0:
                        peak[k] = max(peak[k], high[i - 1, s])
                    else:
                        peak[k] = min(peak[k], low[i - 1, s])
        for phase in range(3):
            # next_open: stops the open gapped through, decisions at the open, then stops on the bar's range;
            # next_close: stops on the bar's range, then decisions at the close
            if phase == 2 and at_close:
                continue
            if phase != 1:
                if not any_stops:
                    continue
                gap_only = phase == 0 and not at_close
                for k in range(n):
                    col = from_col + k
                    pos = position[k]
                    if pos == 0 or entry[k] >= i or (np.isnan(sl[col]) and np.isnan(tp[col])):
                        continue
                    s = gsym[k]
                    kind, fill = _stop_check(pos, open_[i, s], high[i, s], low[i, s], ref[k], peak[k],
                                             sl[col], tp[col], trail[col], gap_only)
                    if kind == 0:
                        continue
                    value = cash
                    for k2 in range(n):
                        if position[k2] != 0:
                            value += position[k2] * val_price[k2]
                    order_records = _room_nb(order_records, oidx, 1)
                    ok, p, cash, free_cash, value, oidx, lidx = _fill_nb(
                        i, k, col, group, -pos, fill, True, cash, free_cash, value, position, debt, val_price,
                        oidx, lidx, order_records, log_records, fee_rate, min_fee, slip, whole)
                    if ok:
                        if position[k] == 0:
                            ref[k] = np.nan
                        stopped[k] = True
                        stop_w[k] = last_w[k]
                        stop_count[col] += 1
                        if record_stops:
                            stop_kind[i, col] = kind
                continue
            # decisions: value marked at the execution prices, at most one order per column, sells first
            if ahead:
                value = value_ahead  # computed with the previous bar's mark (no stops: nothing moved since)
            else:
                value = cash
                for k in range(n):
                    px = price[i, gsym[k]]
                    if not np.isnan(px):
                        val_price[k] = px
                    if position[k] != 0:
                        value += position[k] * val_price[k]
            if i == 0:
                continue  # nothing was decided before the first bar
            n_orders = 0
            for k in range(n):
                col = from_col + k
                target = w[i - 1, col]
                if np.isnan(target) or (target == 0.0 and position[k] == 0 and not stopped[k]):
                    continue  # no decision, or flat and staying flat (the most common cell of a sweep)
                px = price[i, gsym[k]]
                if np.isnan(px) or px <= 0:
                    continue
                if stopped[k]:
                    if not (i == 1 or np.isnan(w[i - 2, col]) or target != stop_w[k]):
                        continue  # the decision that was stopped out, repeated: stay flat
                    stopped[k] = False
                last_w[k] = target
                pos = position[k]
                if target == 0.0 or value <= 0:
                    size = -pos
                elif abs(target - pos * px / value) < band:
                    size = 0.0  # inside the rebalance band (most sessions of a held position: no second division)
                elif net:  # sized after costs: the target's shares plus their commission fit in w * V
                    p_side = px * (1.0 + slip) if target > 0 else px * (1.0 - slip)
                    v_net = value
                    if pos != 0 and (pos > 0) != (target > 0):  # a flip: closing's commission comes out first
                        v_net -= fee_rate * abs(pos) * p_side
                    shares = max(abs(target) * v_net / (p_side * (1.0 + fee_rate)), 0.0)
                    if whole:
                        shares = np.floor(shares + 1e-9)
                    size = (shares if target > 0 else -shares) - pos
                    if abs(size) * px < max(min_value, 1e-9 * value):  # whole: sizes are whole, 0 below a share
                        size = 0.0
                else:
                    size = target * value / px - pos
                    if abs(size) * px < max(min_value, 1e-9 * value):
                        size = 0.0
                if size != 0.0:
                    plan_size[k] = size
                    order_value[k] = size * px
                    seq[n_orders] = k
                    n_orders += 1
            # sells first, then buys smallest first (a stable sort by signed notional)
            for a in range(1, n_orders):
                key = seq[a]
                b = a - 1
                while b >= 0 and order_value[seq[b]] > order_value[key]:
                    seq[b + 1] = seq[b]
                    b -= 1
                seq[b + 1] = key
            if n_orders:
                order_records = _room_nb(order_records, oidx, n_orders)
            for j in range(n_orders):
                k = seq[j]
                col = from_col + k
                size = plan_size[k]
                old = position[k]
                ok, p, cash, free_cash, value, oidx, lidx = _fill_nb(
                    i, k, col, group, size, price[i, gsym[k]], old + size == 0.0, cash, free_cash, value,
                    position, debt, val_price, oidx, lidx, order_records, log_records, fee_rate, min_fee, slip,
                    whole)
                if not ok:
                    continue
                pos = position[k]
                if pos == 0:
                    ref[k] = np.nan
                elif old == 0 or (old > 0) != (pos > 0):
                    ref[k] = p
                    peak[k] = p
                    entry[k] = i
                elif abs(pos) > abs(old):  # added to the position: average entry price
                    ref[k] = (ref[k] * abs(old) + p * (abs(pos) - abs(old))) / abs(pos)
        # mark to the close: the group's value and gross exposure (as vectorbt's value() computes them); without
        # stops, the same pass also marks the next bar's execution prices (its decisions' value)
        v = cash
        g = 0.0
        ahead = not any_stops and i + 1 < n_rows
        value_ahead = cash
        for k in range(n):
            pos = position[k]
            if pos != 0:
                c = close[i, gsym[k]]
                if np.isnan(c):
                    c = val_price[k]
                v += pos * c
                g += abs(pos * c)
            if ahead:
                px = price[i + 1, gsym[k]]
                if not np.isnan(px):
                    val_price[k] = px
                if pos != 0:
                    value_ahead += pos * val_price[k]
        value_out[i, group] = v
        gross_out[i, group] = g
    return order_records, oidx, lidx


@njit(cache=True)
def _simulate_nb(w, price, open_, high, low, close, sym, group_lens, init_cash, fee_rate, min_fee, slip, band,
                 min_value, at_close, net, whole, sl, tp, trail, stop_kind, stop_count, order_records, log_records,
                 value_out, gross_out):
    oidx = 0
    lidx = 0
    from_col = 0
    for group in range(len(group_lens)):
        to_col = from_col + group_lens[group]
        order_records, oidx, lidx = _simulate_group_nb(
            w, price, open_, high, low, close, sym, from_col, to_col, group, init_cash[group], fee_rate, min_fee,
            slip, band, min_value, at_close, net, whole, sl, tp, trail, stop_kind, stop_count, order_records, oidx,
            lidx, log_records, value_out, gross_out)
        from_col = to_col
    return order_records[:oidx]


# --- Python entry point ---------------------------------------------------------------------------------
def f64(df) -> np.ndarray:
    """A C-contiguous, writeable float64 array of ``df`` (pandas may hand out read-only views, which numba
    compiles as a separate signature)."""
    return np.require(df.to_numpy(dtype=np.float64), np.float64, ["C", "W"])


def simulate(weights: pd.DataFrame, bars: Bars, costs: CostModel, init_cash: float, *,
             execution: str = "next_open", stops: Stops | None = None, sl=None, tp=None, trailing=None,
             rebalance_band: float = 0.0, min_order_value: float = 0.0, order_sizing: str = "gross", group_by=True,
             record_stops: bool = True):
    """Simulate target weights on ``bars``.

    ``weights``: index sessions (a subset of ``bars``' sessions is fine), columns symbols or a MultiIndex whose
    last level is the symbol (a sweep: ``group_by`` a level name or group ids; the columns of a group must be
    adjacent; cash is shared within each group). ``order_sizing`` (see the module docstring): gross, net or whole. ``sl``/``tp``/``trailing`` (one per column) override ``stops``.
    Returns the vectorbt Portfolio, with ``pf.qt_value`` and ``pf.qt_gross`` (value and gross exposure per group
    and session, marked at the close; equal to vectorbt's ``pf.value()``, computed in the same pass),
    ``pf.stop_kind`` (sessions x columns, codes in ``STOP_NAMES``, when
    ``record_stops``) and ``pf.stop_count`` (stop exits per column)."""
    if execution not in EXECUTIONS:
        raise ValueError(f"execution: {execution!r} is not one of {EXECUTIONS}")
    if order_sizing not in ORDER_SIZINGS:
        raise ValueError(f"order_sizing: {order_sizing!r} is not one of {ORDER_SIZINGS}")
    v = vbt()
    from vectorbt.base.array_wrapper import ArrayWrapper

    close = bars.close
    symbols = list(close.columns)
    cols = weights.columns
    col_symbols = cols.get_level_values(-1) if isinstance(cols, pd.MultiIndex) else cols
    missing = sorted(set(col_symbols) - set(symbols))
    if missing:
        raise ValueError(f"weights: symbols {missing} have no bars")
    position_of = {s: k for k, s in enumerate(symbols)}
    sym = np.array([position_of[s] for s in col_symbols], dtype=np.int64)
    # row D: decided at D's close, executed on D + 1 (the kernel reads row i - 1 on bar i)
    w_arr = f64(weights if weights.index.equals(close.index) else weights.reindex(index=close.index))
    n_rows, n_cols = w_arr.shape
    px = f64(bars.open if execution == "next_open" else close)
    stops = stops or Stops()

    def per_col(x, default, dtype):
        return np.ascontiguousarray(np.broadcast_to(np.asarray(default if x is None else x, dtype=dtype), (n_cols,)))

    sl_a = per_col(sl, np.nan if stops.sl is None else stops.sl, np.float64)
    tp_a = per_col(tp, np.nan if stops.tp is None else stops.tp, np.float64)
    trail_a = per_col(trailing, bool(stops.trailing), np.bool_)
    close_b = pd.DataFrame(np.take(f64(close), sym, axis=1), index=close.index, columns=cols, copy=False)
    wrapper = ArrayWrapper.from_obj(close_b, group_by=True if group_by is None else group_by, freq="1D")
    group_lens = np.asarray(wrapper.grouper.get_group_lens(), dtype=np.int64)
    if not wrapper.grouper.is_sorted():
        raise ValueError("group_by: the columns of each group must be adjacent")
    init = np.full(len(group_lens), float(init_cash))
    stop_kind = np.zeros((n_rows, n_cols) if record_stops else (1, 1), dtype=np.int8)
    stop_count = np.zeros(n_cols, dtype=np.int64)
    order_records = np.empty(max(1024, 4 * n_cols), dtype=order_dt)
    log_records = np.empty(0, dtype=log_dt)
    value_out = np.empty((n_rows, len(group_lens)))
    gross_out = np.empty((n_rows, len(group_lens)))
    records = _simulate_nb(w_arr, px, f64(bars.open), f64(bars.high), f64(bars.low), f64(close), sym, group_lens,
                           init, float(costs.fee_rate), float(costs.min_commission), float(costs.price_impact),
                           float(rebalance_band), float(min_order_value), execution == "next_close",
                           order_sizing != "gross", order_sizing == "whole", sl_a, tp_a,
                           trail_a, stop_kind, stop_count,
                           order_records, log_records, value_out, gross_out)
    pf = v.Portfolio(wrapper, close_b, records, log_records, init, cash_sharing=True)
    groups = wrapper.get_columns()
    pf.qt_value = pd.DataFrame(value_out, index=close.index, columns=groups, copy=False)
    pf.qt_gross = pd.DataFrame(gross_out, index=close.index, columns=groups, copy=False)
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
