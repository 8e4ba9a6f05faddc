"""The guardian: one agent's session over its book, in the steps of the package docstring: fills at the open,
mark at the close, kill switch and allocation (:meth:`Guardian.begin`), the rules of :mod:`.rules` and the orders
for the next open (:meth:`Guardian.decide`)."""

from __future__ import annotations

import math

from qt_assets.agents.guardian.allocation import allocation, discipline, kelly_ceiling
from qt_assets.agents.guardian.book import EPS, KEEP_TRADES, Book, Trade
from qt_assets.agents.guardian.rules import (SYMBOL_RULES, Context, keep_within_band, max_gross_exposure,
                                             max_open_positions)
from qt_resources.config import AgentSection, AllocationSection, PretradeSection, RiskLimits
from qt_resources.costs import CostModel


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
              reset_kill_switch: bool = False, actions=()) -> list[dict]:
        """Splits and dividends with ex-date ``session`` (``actions``, as the paper broker applies them), fills at
        the open, mark at the close, kill switch and allocation; returns the fills."""
        from qt_resources.corporate_actions import actions_on

        b, risk = self.book, self.risk
        if b.session is not None and session <= b.session:
            raise ValueError(f"guardian: session {session} is not after the book's last session {b.session}")
        for a in actions_on(list(actions), session):
            b.apply_action(a)
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

        ctx = Context(book=b, risk=risk, cur=cur, bars=bars, vol=vol, kelly=kelly, kelly_why=kelly_why, m=m,
                      codes=codes, day=day)
        for s in self.symbols:
            x = intents.get(s, math.nan)
            hold = x is None or math.isnan(x)
            tgt[s] = cur[s] if hold else max(float(x), 0.0)
            for name, rule in SYMBOL_RULES:
                got = rule(ctx, s, tgt[s], hold)
                if got is not None:
                    new, why, final = got
                    clip(s, name, new, why)
                    if final:
                        break
        max_open_positions(ctx, self.symbols, tgt, clip)
        if self.freeze:  # no new orders: every position stays as it is
            for s in self.symbols:
                clip(s, "kill_switch_file", cur[s], self.freeze)
            orders = {}
        else:
            band = self.agent.rebalance_band
            keep_within_band(ctx, self.symbols, tgt, rules, band)
            max_gross_exposure(ctx, self.symbols, tgt, clip, band)
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
