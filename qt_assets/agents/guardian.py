"""Allocation, the guardian and execution discipline: an agent's raw intents -> guarded target weights.

The guardian keeps each agent's own **book**: cash, whole-share positions, open trades with their planned stop,
orders decided after session D's close that fill at D+1's open, all through the shared
:class:`~qt_resources.costs.CostModel` and the paper broker's fill rules (sells first, buys cut to the cash,
whole shares, target qty = floor(weight x equity / close)). Each session D (:meth:`Guardian.step`):

1. **Fills at D's open** of the orders decided at D-1. A new entry's stop is ``fill - atr_stop_mult x ATR14``
   (ATR of the decision session); 1 R is that distance. Every trade is checked against its plan
   (execution discipline): *missing stop* (no stop could be set), *oversize* (filled weight > planned weight x
   (1 + oversize_tolerance)), *regime mismatch* (entered in a regime outside the agent's ``allow_regimes``),
   and at exit *late exit* (still held after the first open following a close at or below the stop, e.g. the
   exit order expired for want of a price) and *early exit* (a signal exit with
   0 < gain < early_exit_r x R). A losing trade extends the run of consecutive losses; at
   ``max_consecutive_losses`` a cooldown of ``cooldown_sessions`` sessions starts.
2. **Mark at D's close**: equity = cash + sum(qty x last close); daily P&L vs D-1's close; peak; drawdown.
3. **Allocation**: multiplier = regime x drawdown x discipline, each with a reason code:
   regime: ``allocation.regime_multiplier[label]``; drawdown: 1 up to ``drawdown_start``, then linearly down to
   ``drawdown_floor`` at ``risk.max_drawdown_pct``; discipline: score = 1 - violations / trades over the last
   ``discipline_window`` trades, multiplier max(discipline_floor, score) below ``discipline_threshold`` (1 until
   ``discipline_min_trades`` trades). Risk mode: normal (>= 0.999), reduced (>= 0.6), defensive, halted.
4. **Guard** every symbol's intent (NaN = hold the current weight), in this order, recording each rule that
   changes a target: ``kill_switch`` (drawdown >= max_drawdown_pct: every target 0, latched until reset),
   ``atr_stop`` (close <= stop: exit, and the exit stays due until it fills), ``vol_target`` (w <= target_vol / vol_20d), ``kelly_ceiling``
   (w <= clip(kelly_fraction x f*, kelly_floor, 1) with f* = p - (1 - p) / b over the last kelly_window trades,
   p the win rate and b average win / average loss, once kelly_min_trades trades exist), ``allocation``
   (x multiplier, intents only), ``max_position_pct``, ``daily_loss_limit`` (session loss beyond the limit: no
   target above the current weight), ``cooldown`` (no new entries), ``max_open_positions`` (held positions
   first, then by weight); then a re-target within ``rebalance_band`` of the current weight keeps the position
   (so a held position may drift over a cap by less than the band before it is trimmed); finally
   ``max_gross_exposure`` (scaled down when the gross exceeds the limit by more than the band).
5. **Orders** for D+1's open: target qty - held qty, whole shares. While the kill switch file exists
   (:mod:`qt_resources.gates`) the book is frozen: open orders are canceled, every target is the current
   weight (rule ``kill_switch_file``) and no order is placed, exactly as ``orders/<agent>`` then does.

Point in time: step D reads bars, features and the regime of sessions <= D only, and its intents.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from qt_resources.config import AgentSection, AllocationSection, PretradeSection, RiskLimits
from qt_resources.costs import CostModel

KEEP_TRADES = 200  # recent trades kept in the state (>= kelly_window and discipline_window bounds)
EPS = 1e-12


@dataclass
class Trade:
    symbol: str
    entry_session: str
    entry_price: float
    qty: float
    stop: float | None
    r: float | None
    plan_weight: float
    regime: str
    entry_commission: float
    entry_seen: int = 0
    bought: float = 0.0
    breached: int | None = None  # book.sessions_seen at the first close at or below the stop
    violations: list[str] = field(default_factory=list)
    realised: float = 0.0
    exit_session: str | None = None
    exit_price: float | None = None
    exit_reason: str | None = None
    pnl: float | None = None
    ret: float | None = None
    hold_sessions: int | None = None


@dataclass
class Book:
    cash: float
    peak: float
    prev_equity: float
    qty: dict[str, float] = field(default_factory=dict)
    last_close: dict[str, float] = field(default_factory=dict)
    open: dict[str, Trade] = field(default_factory=dict)
    pending: list[dict] = field(default_factory=list)
    trades: list[Trade] = field(default_factory=list)  # recent trades (open ones too), oldest first
    consecutive_losses: int = 0
    cooldown_left: int = 0
    halted: bool = False
    halted_reason: str = ""
    sessions_seen: int = 0
    session: str | None = None
    memory: list[dict] = field(default_factory=list)  # an llm agent's own recent decisions (its memory block)

    @classmethod
    def new(cls, cash: float) -> "Book":
        return cls(cash=cash, peak=cash, prev_equity=cash)

    def equity(self) -> float:
        return self.cash + sum(q * self.last_close.get(s, 0.0) for s, q in self.qty.items())

    def to_json(self) -> str:
        d = asdict(self)
        # open trades are always in `trades` (never trimmed): stored by index so they stay one object
        d["open"] = {s: self.trades.index(t) for s, t in self.open.items()}
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Book":
        d = json.loads(text)
        trades = [Trade(**t) for t in d.pop("trades")]
        opened = {s: trades[i] for s, i in d.pop("open").items()}
        return cls(**d, trades=trades, open=opened)


def kelly_ceiling(trades: list[Trade], risk: RiskLimits) -> tuple[float | None, str]:
    """(ceiling, explanation) from the last ``kelly_window`` closed trades; None before kelly_min_trades."""
    if risk.kelly_fraction is None:
        return None, "off"
    rets = [t.ret for t in trades if t.ret is not None][-risk.kelly_window:]
    if len(rets) < risk.kelly_min_trades:
        return None, f"{len(rets)}/{risk.kelly_min_trades} trades"
    wins, losses = [r for r in rets if r > 0], [-r for r in rets if r <= 0]
    p = len(wins) / len(rets)
    if not losses:
        f = 1.0
    elif not wins:
        f = -math.inf
    else:
        b = (sum(wins) / len(wins)) / max(sum(losses) / len(losses), EPS)
        f = p - (1 - p) / b
    cap = min(1.0, max(risk.kelly_floor, risk.kelly_fraction * f))
    return cap, f"f*={f:.3f} over {len(rets)} trades (p={p:.2f}) -> {risk.kelly_fraction:g}xf* = {cap:.4f}"


def discipline(trades: list[Trade], alloc: AllocationSection) -> tuple[float | None, int, int]:
    """(score, violations, trades) over the last ``discipline_window`` trades; score None without trades."""
    recent = trades[-alloc.discipline_window:]
    if not recent:
        return None, 0, 0
    v = sum(len(t.violations) for t in recent)
    return max(0.0, 1.0 - v / len(recent)), v, len(recent)


def allocation(label: str, drawdown: float, trades: list[Trade], alloc: AllocationSection,
               risk: RiskLimits) -> tuple[float, str, str]:
    """(multiplier, risk_mode, reason codes)."""
    m_reg = alloc.regime_multiplier.get(label, 1.0)
    codes = [f"REGIME_{label.upper()}x{m_reg:g}"]
    m_dd = 1.0
    if risk.max_drawdown_pct is not None and drawdown > alloc.drawdown_start:
        span = max(risk.max_drawdown_pct - alloc.drawdown_start, EPS)
        m_dd = 1.0 - (1.0 - alloc.drawdown_floor) * min(1.0, (drawdown - alloc.drawdown_start) / span)
        codes.append(f"DRAWDOWN_{drawdown:.1%}x{m_dd:.3f}")
    score, v, n = discipline(trades, alloc)
    m_disc = 1.0
    if n < alloc.discipline_min_trades:
        codes.append(f"DISCIPLINE_UNRATED_{n}/{alloc.discipline_min_trades}")
    elif score < alloc.discipline_threshold:
        m_disc = max(alloc.discipline_floor, score)
        codes.append(f"DISCIPLINE_{score:.2f}x{m_disc:.3f}")
    else:
        codes.append(f"DISCIPLINE_OK_{score:.2f}")
    m = m_reg * m_dd * m_disc
    mode = "normal" if m >= 0.999 else "reduced" if m >= 0.6 else "defensive"
    return m, mode, ";".join(codes)


class Guardian:
    """One agent's allocation + guardian + discipline over its book (see the module docstring)."""

    def __init__(self, agent: AgentSection, risk: RiskLimits, alloc: AllocationSection, costs: CostModel,
                 symbols: list[str], book: Book):
        self.agent, self.risk, self.alloc, self.costs = agent, risk, alloc, costs
        self.symbols = list(symbols)
        self.book = book
        self.closed: list[Trade] = []  # trades closed by this guardian (for the journal)
        self.freeze: str | None = None  # the kill switch's reason: no fills of open orders, no new orders
        self.pretrade = PretradeSection()  # the broker's pre-trade checks, applied to the book's orders too

    # --- 1. fills at the open -------------------------------------------------------------------------
    def _fill(self, session: str, opens: dict[str, float]) -> list[dict]:
        b, c = self.book, self.costs
        ok = {s: p for s, p in opens.items() if p is not None and p > 0}
        mark = {s: ok.get(s, b.last_close.get(s, 0.0)) for s in b.qty}
        equity_open = b.cash + sum(q * mark[s] for s, q in b.qty.items())
        fills = []
        for o in sorted(b.pending, key=lambda o: (o["side"] != "sell", o["symbol"])):
            ref = ok.get(o["symbol"])
            if ref is None:  # no open price: the day order expires, as at the broker
                fills.append({**o, "status": "expired", "fill_qty": 0.0, "price": None, "session": session})
                continue
            band = self.pretrade.price_collar_pct
            if band is not None and o.get("ref") and abs(ref / o["ref"] - 1) > band:  # the broker's price collar
                fills.append({**o, "status": "canceled", "fill_qty": 0.0, "price": None, "session": session})
                continue
            price = c.fill_price(o["side"], ref)
            held = b.qty.get(o["symbol"], 0.0)
            qty = min(o["qty"], held) if o["side"] == "sell" else min(o["qty"], float(int(b.cash // (price * (1 + c.fee_rate)))))
            if qty <= 0:
                fills.append({**o, "status": "rejected", "fill_qty": 0.0, "price": price, "session": session})
                continue
            fee = c.commission(qty, price)
            signed = qty if o["side"] == "buy" else -qty
            b.cash -= signed * price + fee
            b.qty[o["symbol"]] = held + signed
            fills.append({**o, "status": "filled" if qty == o["qty"] else "partially_filled", "fill_qty": qty,
                          "price": price, "commission": fee, "session": session})
            if o["side"] == "buy":
                self._entry(session, o, qty, price, fee, equity_open)
            else:
                self._exit(session, o, qty, price, fee)
            if b.qty[o["symbol"]] == 0:
                del b.qty[o["symbol"]]
        b.pending = []
        return fills

    def _entry(self, session: str, o: dict, qty: float, price: float, fee: float, equity_open: float) -> None:
        b, mult = self.book, self.risk.atr_stop_mult
        t = b.open.get(o["symbol"])
        if t is None:
            atr = o.get("atr")
            r = mult * atr if mult is not None and atr is not None and atr > 0 else None
            t = Trade(o["symbol"], session, price, qty, None if r is None else price - r, r, o["plan_weight"],
                      o["regime"], fee, entry_seen=b.sessions_seen, bought=qty)
            if r is None and mult is not None:  # stops are part of the plan but none could be set
                t.violations.append("missing_stop")
            if o["regime"] not in self.agent.allow_regimes:
                t.violations.append("regime_mismatch")
            b.open[o["symbol"]] = t
            b.trades.append(t)
            if len(b.trades) > KEEP_TRADES:  # trim closed trades only
                old, b.trades = b.trades[:-KEEP_TRADES], b.trades[-KEEP_TRADES:]
                b.trades[:0] = [x for x in old if x.exit_session is None]
        else:  # adding: averaged entry, the stop stays 1 R below it
            t.entry_price = (t.entry_price * t.qty + price * qty) / (t.qty + qty)
            t.qty += qty
            t.bought += qty
            t.entry_commission += fee
            if t.r is not None:
                t.stop = t.entry_price - t.r
            t.plan_weight = o["plan_weight"]
        weight = b.qty[o["symbol"]] * price / max(equity_open, EPS)
        if weight > o["plan_weight"] * (1 + self.alloc.oversize_tolerance) + EPS and "oversize" not in t.violations:
            t.violations.append("oversize")

    def _exit(self, session: str, o: dict, qty: float, price: float, fee: float) -> None:
        b, t = self.book, self.book.open.get(o["symbol"])
        if t is None:  # position without a trade record (cannot happen from a fresh book)
            return
        share = qty / t.qty
        t.realised += (price - t.entry_price) * qty - fee - t.entry_commission * share
        t.entry_commission -= t.entry_commission * share
        t.qty -= qty
        if b.qty.get(o["symbol"], 0.0) > 0:
            return  # partly reduced: the trade stays open
        t.exit_session, t.exit_price, t.exit_reason = session, price, o["kind"]
        t.pnl = t.realised
        t.ret = t.pnl / max(t.entry_price * t.bought, EPS)
        t.hold_sessions = b.sessions_seen - t.entry_seen
        if t.breached is not None and b.sessions_seen > t.breached:  # not out at the first open after the breach
            t.violations.append("late_exit")
        if (o["kind"] == "signal" and t.r is not None and 0 < price - t.entry_price < self.alloc.early_exit_r * t.r):
            t.violations.append("early_exit")
        del b.open[o["symbol"]]
        self.closed.append(t)
        if t.pnl < 0:
            b.consecutive_losses += 1
            n = self.risk.max_consecutive_losses
            if n is not None and b.consecutive_losses >= n:
                b.cooldown_left = self.risk.cooldown_sessions
                b.consecutive_losses = 0
        else:
            b.consecutive_losses = 0

    # --- the session ------------------------------------------------------------------------------------
    def step(self, session: str, bars: dict[str, tuple[float, float, float, float]], atr: dict[str, float],
             vol: dict[str, float], regime: tuple[str, float], intents: dict[str, float],
             reset_kill_switch: bool = False) -> tuple[list[dict], list[dict]]:
        """One session: ``bars`` symbol -> (open, high, low, close); ``atr``/``vol`` the session's ATR14 and
        annualised 20-day volatility; ``intents`` symbol -> weight (NaN = hold). Returns (rows, fills)."""
        fills = self.begin(session, bars, regime, reset_kill_switch)
        return self.decide(intents, atr, vol), fills

    def begin(self, session: str, bars: dict[str, tuple[float, float, float, float]], regime: tuple[str, float],
              reset_kill_switch: bool = False) -> list[dict]:
        """Fills at the open, mark at the close, kill switch and allocation; returns the fills."""
        b, risk = self.book, self.risk
        if b.session is not None and session <= b.session:
            raise ValueError(f"guardian: session {session} is not after the book's last session {b.session}")
        if b.cooldown_left > 0:
            b.cooldown_left -= 1
        if self.freeze:  # the broker cancels open orders while the kill switch is on
            fills = [{**o, "status": "canceled", "fill_qty": 0.0, "price": None, "session": session}
                     for o in b.pending]
            b.pending = []
        else:
            fills = self._fill(session, {s: v[0] for s, v in bars.items()})
        b.sessions_seen += 1
        for s, v in bars.items():
            if v[3] is not None and v[3] > 0:
                b.last_close[s] = v[3]
        equity = b.equity()
        day = equity / max(b.prev_equity, EPS) - 1
        b.peak = max(b.peak, equity)
        dd = 1 - equity / b.peak
        if reset_kill_switch and b.halted:
            b.halted, b.halted_reason, b.peak = False, "", equity
            dd = 0.0
        if not b.halted and risk.max_drawdown_pct is not None and dd >= risk.max_drawdown_pct:
            b.halted, b.halted_reason = True, f"drawdown {dd:.2%} >= max_drawdown_pct {risk.max_drawdown_pct:.2%} on {session}"
        if b.halted:
            m, mode, codes = 0.0, "halted", f"KILL_SWITCH ({b.halted_reason})"
        else:
            m, mode, codes = allocation(regime[0], dd, b.trades, self.alloc, risk)
        closes = {s: b.last_close[s] for s in self.symbols if s in b.last_close}
        self._day = dict(session=session, bars=bars, regime=regime, equity=equity, day=day, dd=dd, m=m, mode=mode,
                         codes=codes, closes=closes,
                         cur={s: b.qty.get(s, 0.0) * closes.get(s, 0.0) / max(equity, EPS) for s in self.symbols})
        return fills

    def state(self) -> dict:
        """The book after :meth:`begin` (for an LLM's positions/orders/risk_state blocks)."""
        d, b = self._day, self.book
        score, v, n = discipline(b.trades, self.alloc)
        return {"positions": {s: w for s, w in d["cur"].items() if w > EPS},
                "orders": [{"symbol": o["symbol"], "side": o["side"], "qty": o["qty"], "status": "open"}
                           for o in b.pending],
                "risk_state": {"equity": d["equity"], "drawdown": d["dd"], "session_pnl": d["day"],
                               "risk_mode": d["mode"], "multiplier": d["m"], "regime": d["regime"][0],
                               "halted": b.halted, "cooldown_sessions_left": b.cooldown_left,
                               "discipline_score": score, "consecutive_losses": b.consecutive_losses}}

    def decide(self, intents: dict[str, float], atr: dict[str, float], vol: dict[str, float]) -> list[dict]:
        """Guard the session's intents (after :meth:`begin`) and place the orders for the next open."""
        b, risk, d = self.book, self.risk, self._day
        session, bars, equity, day, dd, m, mode, codes, closes, cur = (
            d[k] for k in ("session", "bars", "equity", "day", "dd", "m", "mode", "codes", "closes", "cur"))
        label, regime = d["regime"][0], d["regime"]
        kelly, kelly_why = kelly_ceiling(b.trades, risk)
        tgt, rules = {}, {s: [] for s in self.symbols}

        def clip(s: str, rule: str, new: float, why: str) -> None:
            if abs(new - tgt[s]) > EPS:
                rules[s].append(f"{rule}: {tgt[s]:.4f} -> {new:.4f} ({why})")
                tgt[s] = new

        for s in self.symbols:
            x = intents.get(s, math.nan)
            hold = x is None or math.isnan(x)
            tgt[s] = cur[s] if hold else max(float(x), 0.0)
            if b.halted:
                clip(s, "kill_switch", 0.0, b.halted_reason)
                continue
            t = b.open.get(s)
            px = bars[s][3] if s in bars else None
            if t is not None and t.stop is not None and (t.breached is not None or (px is not None and px <= t.stop)):
                if t.breached is None:
                    t.breached = b.sessions_seen
                clip(s, "atr_stop", 0.0, f"close {px:.4f} <= stop {t.stop:.4f}" if px is not None and px <= t.stop
                     else f"stop {t.stop:.4f} hit earlier, exit still due")
                continue
            v = vol.get(s)
            if risk.target_vol is not None and v is not None and v > 0:
                clip(s, "vol_target", min(tgt[s], risk.target_vol / v), f"{risk.target_vol:g} / vol_20d {v:.4f}")
            if kelly is not None:
                clip(s, "kelly_ceiling", min(tgt[s], kelly), kelly_why)
            if not hold:
                clip(s, "allocation", tgt[s] * m, codes)
            clip(s, "max_position_pct", min(tgt[s], risk.max_position_pct), f"{risk.max_position_pct:g}")
            if risk.max_daily_loss_pct is not None and day <= -risk.max_daily_loss_pct and tgt[s] > cur[s]:
                clip(s, "daily_loss_limit", cur[s], f"session P&L {day:.2%} <= -{risk.max_daily_loss_pct:.2%}")
            if b.cooldown_left > 0 and cur[s] <= EPS and tgt[s] > 0:
                clip(s, "cooldown", 0.0, f"{b.cooldown_left} sessions left after "
                                         f"{risk.max_consecutive_losses} consecutive losses")
        if risk.max_open_positions is not None and not b.halted:
            ranked = sorted((s for s in self.symbols if tgt[s] > EPS), key=lambda s: (cur[s] <= EPS, -tgt[s], s))
            for s in ranked[risk.max_open_positions:]:
                clip(s, "max_open_positions", 0.0, f"{risk.max_open_positions} positions, held ones first")
        if self.freeze:  # no new orders: every position stays as it is
            for s in self.symbols:
                clip(s, "kill_switch_file", cur[s], self.freeze)
            orders = {}
        else:
            band = self.agent.rebalance_band
            for s in self.symbols:  # a re-target (or a passive drift over a cap) smaller than the band keeps it
                if cur[s] > EPS and tgt[s] > EPS and abs(tgt[s] - cur[s]) < band:
                    if rules[s] and abs(tgt[s] - cur[s]) > EPS:
                        rules[s].append(f"rebalance_band: {tgt[s]:.4f} -> {cur[s]:.4f} (kept: change < {band:g})")
                    tgt[s] = cur[s]
            gross = sum(tgt.values())
            if gross > risk.max_gross_exposure + band + EPS:
                f = risk.max_gross_exposure / gross
                for s in self.symbols:  # (a position the band kept above a cap is trimmed to it here)
                    clip(s, "max_gross_exposure", min(tgt[s] * f, risk.max_position_pct),
                         f"gross {gross:.4f} > {risk.max_gross_exposure:g}")
            today = {s: v[3] for s, v in bars.items() if v[3] is not None and v[3] > 0}  # as the orders asset sizes
            orders = self._orders(session, tgt, cur, today, equity, atr, label, rules)
        rows = []
        for s in self.symbols:
            t = b.open.get(s)
            o = orders.get(s)
            rows.append({"session": session, "symbol": s, "intent_weight": intents.get(s, math.nan),
                         "current_weight": cur[s], "target_weight": tgt[s], "multiplier": m, "risk_mode": mode,
                         "regime": label, "regime_confidence": regime[1], "allocation": codes,
                         "stop": t.stop if t is not None and t.stop is not None else math.nan,
                         "order_side": o["side"] if o else "", "order_qty": o["qty"] if o else 0.0,
                         "rules": ",".join(r.split(":")[0] for r in rules[s]), "detail": "; ".join(rules[s]),
                         "equity": equity, "drawdown": dd, "session_pnl": day})
        b.prev_equity = equity
        b.session = session
        return rows

    def _orders(self, session, tgt, cur, closes, equity, atr, label, rules) -> dict[str, dict]:
        from qt_resources.broker import order_intents
        from qt_resources.gates import pretrade

        b = self.book
        out = {}
        intents = order_intents(tgt, dict(b.qty), closes, equity, self.agent.min_order_value)
        accepted, refused = pretrade(intents, b.qty, closes, self.pretrade)
        for it, why in refused:
            rules[it.symbol].append(f"pretrade: {it.side} {it.qty:g} rejected ({why})")
        for it in accepted:
            why = rules.get(it.symbol, [])
            kind = ("stop" if any(r.startswith("atr_stop") for r in why)
                    else "guardian" if why and it.side == "sell" else "signal")
            o = {"symbol": it.symbol, "side": it.side, "qty": it.qty, "plan_weight": tgt[it.symbol],
                 "ref": it.ref_price,
                 "atr": atr.get(it.symbol), "regime": label, "kind": kind, "decided": session}
            b.pending.append(o)
            out[it.symbol] = o
        return out
