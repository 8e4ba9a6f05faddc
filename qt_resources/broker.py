"""Brokers: one interface; the persistent paper broker is the offline default.

The paper broker keeps accounts, orders (with every status transition), fills and positions in SQLite,
so it survives restarts. Orders placed after session D's close fill at the next session's open through
the shared :class:`~qt_resources.costs.CostModel`. Order ids are deterministic
(``client_order_id(agent, session, symbol, side)``) and a session's orders are written in one transaction
together with a "session done" marker: re-running a session returns the orders already placed and never
creates a second one.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import dagster as dg
from pydantic import PrivateAttr
import pandas as pd

from qt_resources.costs import CostModel

_SCHEMA = """
create table if not exists accounts (
    agent text primary key, initial_cash real not null, cash real not null, last_session text);
create table if not exists orders (
    client_order_id text primary key, agent text not null, session text not null, symbol text not null,
    side text not null check (side in ('buy','sell')), qty real not null check (qty > 0),
    status text not null, filled_qty real not null default 0, fill_price real, commission real not null default 0,
    fill_session text, reason text, created_at text not null, ref_price real);
create index if not exists orders_agent_status on orders(agent, status);
create table if not exists order_events (
    client_order_id text not null, status text not null, at text not null, detail text);
create table if not exists fills (
    client_order_id text not null, agent text not null, session text not null, symbol text not null,
    side text not null, qty real not null, price real not null, commission real not null);
create table if not exists positions (
    agent text not null, symbol text not null, qty real not null, avg_price real not null,
    primary key (agent, symbol));
create table if not exists sessions_done (
    agent text not null, session text not null, at text not null, primary key (agent, session));
"""

_READY: set[str] = set()  # db files whose schema this process has created
OPEN_STATUSES = ("new", "submitted", "accepted", "partially_filled")


def client_order_id(agent: str, session: str, symbol: str, side: str) -> str:
    """Deterministic id: the same intent always maps to the same id (Alpaca allows 128 chars)."""
    return f"qtos-{agent}-{session.replace('-', '')}-{symbol}-{side}"


@dataclass(frozen=True)
class OrderIntent:
    symbol: str
    side: str
    qty: float
    reason: str
    ref_price: float | None = None  # the last price the order was sized on (the price collar's reference)


class BrokerError(RuntimeError):
    pass


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class Broker(dg.ConfigurableResource):
    """Interface of a broker as the execution assets use it."""

    def open_account(self, agent: str) -> None:  # pragma: no cover
        raise NotImplementedError

    def fill_pending(self, agent: str, session: str, opens: dict[str, float]) -> list[dict]:  # pragma: no cover
        raise NotImplementedError

    def cancel_open(self, agent: str, reason: str) -> list[str]:  # pragma: no cover
        raise NotImplementedError

    def positions(self, agent: str) -> dict[str, float]:  # pragma: no cover
        raise NotImplementedError

    def cash(self, agent: str) -> float:  # pragma: no cover
        raise NotImplementedError

    def session_done(self, agent: str, session: str) -> bool:  # pragma: no cover
        raise NotImplementedError

    def place_session_orders(self, agent: str, session: str, intents: list[OrderIntent],
                             rejected: list[tuple[OrderIntent, str]] = ()) -> list[dict]:  # pragma: no cover
        raise NotImplementedError

    def orders(self, agent: str, session: str | None = None) -> pd.DataFrame:  # pragma: no cover
        raise NotImplementedError


class PaperBroker(Broker):
    db_path: str
    initial_cash: float = 100_000.0
    commission_bps: float = 0.0
    slippage_bps: float = 0.0
    min_commission: float = 0.0
    spread_bps: float = 0.0
    price_collar_pct: float | None = None  # an open this far from the order's ref_price: canceled, not filled
    audit_path: str | None = None  # hash-chained audit log (qt_resources/audit.py) of intents, orders, transitions, fills
    _audit_queue: list = PrivateAttr(default_factory=list)

    @property
    def costs(self) -> CostModel:
        return CostModel(self.commission_bps, self.slippage_bps, self.min_commission, self.spread_bps)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        Path(self.db_path).parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.db_path, isolation_level=None, timeout=30)
        con.row_factory = sqlite3.Row
        try:
            if self.db_path not in _READY:
                con.executescript(_SCHEMA)
                if "ref_price" not in {r["name"] for r in con.execute("pragma table_info(orders)")}:
                    con.execute("alter table orders add column ref_price real")  # a database from before it
                _READY.add(self.db_path)
            con.execute("begin immediate")
            self._audit_queue.clear()
            try:
                yield con
                con.execute("commit")
            except BaseException:
                con.execute("rollback")
                self._audit_queue.clear()  # nothing happened: nothing to audit
                raise
        finally:
            con.close()
        if self._audit_queue and self.audit_path:  # after the commit: the log records what the database holds
            from qt_resources.audit import AuditLog

            AuditLog(self.audit_path).append_many(list(self._audit_queue))
        self._audit_queue.clear()

    def _audit(self, kind: str, agent: str, **data) -> None:
        self._audit_queue.append((kind, agent, data))

    def open_account(self, agent: str) -> None:
        with self._tx() as con:
            con.execute("insert or ignore into accounts(agent, initial_cash, cash) values (?,?,?)",
                        (agent, self.initial_cash, self.initial_cash))

    def _event(self, con: sqlite3.Connection, coid: str, status: str, detail: str = "", agent: str = "") -> None:
        con.execute("insert into order_events values (?,?,?,?)", (coid, status, _now(), detail))
        self._audit("transition", agent, client_order_id=coid, status=status, detail=detail)

    def fill_pending(self, agent: str, session: str, opens: dict[str, float]) -> list[dict]:
        """Fill this agent's open orders from earlier sessions at ``session``'s open (a symbol without an open
        price that session: the order expires, as a day order would). Sells first, so their proceeds fund the buys; a buy the cash cannot cover is cut to what it can (remainder
        canceled) or rejected."""
        fills = []
        with self._tx() as con:
            pending = con.execute(
                f"select * from orders where agent=? and session<? and status in {OPEN_STATUSES} "
                "order by case side when 'sell' then 0 else 1 end, symbol", (agent, session)).fetchall()
            for o in pending:
                ref = opens.get(o["symbol"])
                if ref is None or not ref > 0:  # a market order for the next open is a day order: it expires
                    con.execute("update orders set status='expired' where client_order_id=?", (o["client_order_id"],))
                    self._event(con, o["client_order_id"], "expired", f"no open price for {o['symbol']} on {session}",
                                agent=agent)
                    continue
                band = self.price_collar_pct
                if band is not None and o["ref_price"] and abs(ref / o["ref_price"] - 1) > band:
                    why = f"price collar: open {ref:.4f} vs {o['ref_price']:.4f} beyond {band:.1%}"
                    con.execute("update orders set status='canceled', reason=coalesce(reason,'') || ? "
                                "where client_order_id=?", (f" | {why}", o["client_order_id"]))
                    self._event(con, o["client_order_id"], "canceled", why, agent=agent)
                    continue
                price = self.costs.fill_price(o["side"], ref)
                cash = con.execute("select cash from accounts where agent=?", (agent,)).fetchone()["cash"]
                pos = con.execute("select qty, avg_price from positions where agent=? and symbol=?",
                                  (agent, o["symbol"])).fetchone()
                held = pos["qty"] if pos else 0.0
                qty = o["qty"]
                if o["side"] == "sell":
                    qty = min(qty, held)
                else:
                    per_share = price * (1 + self.costs.fee_rate)
                    qty = min(qty, float(int(cash // per_share)))
                if qty <= 0:
                    con.execute("update orders set status='rejected', reason=coalesce(reason,'') || ? "
                                "where client_order_id=?", (" | rejected at fill: nothing affordable/held",
                                                            o["client_order_id"]))
                    self._event(con, o["client_order_id"], "rejected", "insufficient cash or position", agent=agent)
                    continue
                commission = self.costs.commission(qty, price)
                signed = qty if o["side"] == "buy" else -qty
                new_qty = held + signed
                avg = pos["avg_price"] if pos else 0.0
                new_avg = (avg * held + price * qty) / new_qty if o["side"] == "buy" else avg
                con.execute("insert into positions values (?,?,?,?) on conflict(agent, symbol) do update "
                            "set qty=excluded.qty, avg_price=excluded.avg_price",
                            (agent, o["symbol"], new_qty, new_avg if new_qty else 0.0))
                con.execute("update accounts set cash = cash - ? where agent=?", (signed * price + commission, agent))
                status = "filled" if qty == o["qty"] else "partially_filled"
                con.execute("update orders set status=?, filled_qty=?, fill_price=?, commission=?, fill_session=? "
                            "where client_order_id=?", (status, qty, price, commission, session, o["client_order_id"]))
                self._event(con, o["client_order_id"], status, f"{qty}@{price:.4f}", agent=agent)
                if status == "partially_filled":  # the rest cannot be funded: cancel it
                    con.execute("update orders set status='canceled' where client_order_id=?", (o["client_order_id"],))
                    self._event(con, o["client_order_id"], "canceled", f"unfilled {o['qty'] - qty}: insufficient cash",
                                agent=agent)
                con.execute("insert into fills values (?,?,?,?,?,?,?,?)",
                            (o["client_order_id"], agent, session, o["symbol"], o["side"], qty, price, commission))
                self._audit("fill", agent, client_order_id=o["client_order_id"], session=session, symbol=o["symbol"],
                            side=o["side"], qty=qty, price=price, commission=commission, cash_after=cash - signed * price
                            - commission)
                fills.append({"client_order_id": o["client_order_id"], "symbol": o["symbol"], "side": o["side"],
                              "qty": qty, "price": price, "commission": commission})
        return fills

    def cancel_open(self, agent: str, reason: str) -> list[str]:
        """Cancel every open order of the agent (the kill switch); returns their client order ids."""
        with self._tx() as con:
            ids = [r["client_order_id"] for r in con.execute(
                f"select client_order_id from orders where agent=? and status in {OPEN_STATUSES}", (agent,))]
            for coid in ids:
                con.execute("update orders set status='canceled' where client_order_id=?", (coid,))
                self._event(con, coid, "canceled", reason, agent=agent)
        return ids

    def positions(self, agent: str) -> dict[str, float]:
        with self._tx() as con:
            rows = con.execute("select symbol, qty from positions where agent=? and qty != 0", (agent,)).fetchall()
        return {r["symbol"]: r["qty"] for r in rows}

    def cash(self, agent: str) -> float:
        with self._tx() as con:
            row = con.execute("select cash from accounts where agent=?", (agent,)).fetchone()
        if row is None:
            raise BrokerError(f"paper account for agent {agent!r} does not exist")
        return row["cash"]

    def session_done(self, agent: str, session: str) -> bool:
        with self._tx() as con:
            return con.execute("select 1 from sessions_done where agent=? and session=?",
                               (agent, session)).fetchone() is not None

    def place_session_orders(self, agent: str, session: str, intents: list[OrderIntent],
                             rejected: list[tuple[OrderIntent, str]] = ()) -> list[dict]:
        """Submit a session's orders exactly once. Returns the orders of that session (new or existing).
        ``rejected``: intents a pre-trade check refused, recorded in the same transaction as orders new ->
        rejected with the reason (never submitted)."""
        with self._tx() as con:
            done = con.execute("select 1 from sessions_done where agent=? and session=?", (agent, session)).fetchone()
            if done is None:
                last = con.execute("select last_session from accounts where agent=?", (agent,)).fetchone()
                if last is None:
                    raise BrokerError(f"paper account for agent {agent!r} does not exist")
                if last["last_session"] and last["last_session"] > session:
                    raise BrokerError(
                        f"agent {agent!r}: paper account is at session {last['last_session']}; refusing to place "
                        f"orders for the earlier session {session} (that would rewrite its history)")
                now = _now()
                for it in intents:
                    coid = client_order_id(agent, session, it.symbol, it.side)
                    self._audit("intent", agent, session=session, symbol=it.symbol, side=it.side, qty=it.qty,
                                reason=it.reason)
                    self._audit("order", agent, client_order_id=coid, session=session, symbol=it.symbol,
                                side=it.side, qty=it.qty, type="market", time_in_force="day (next open)")
                    con.execute("insert into orders(client_order_id, agent, session, symbol, side, qty, status, "
                                "reason, created_at, ref_price) values (?,?,?,?,?,?,?,?,?,?)",
                                (coid, agent, session, it.symbol, it.side, it.qty, "submitted", it.reason, now,
                                 it.ref_price))
                    self._event(con, coid, "new", agent=agent)
                    self._event(con, coid, "submitted", agent=agent)
                for it, why in rejected:
                    coid = client_order_id(agent, session, it.symbol, it.side)
                    self._audit("intent", agent, session=session, symbol=it.symbol, side=it.side, qty=it.qty,
                                reason=it.reason)
                    con.execute("insert into orders(client_order_id, agent, session, symbol, side, qty, status, "
                                "reason, created_at) values (?,?,?,?,?,?,?,?,?)",
                                (coid, agent, session, it.symbol, it.side, it.qty, "rejected",
                                 f"{it.reason} | pre-trade: {why}", now))
                    self._event(con, coid, "new", agent=agent)
                    self._event(con, coid, "rejected", f"pre-trade: {why}", agent=agent)
                con.execute("insert into sessions_done values (?,?,?)", (agent, session, now))
                con.execute("update accounts set last_session=? where agent=?", (session, agent))
            rows = con.execute("select * from orders where agent=? and session=? order by symbol",
                               (agent, session)).fetchall()
        return [dict(r) for r in rows]

    def orders(self, agent: str, session: str | None = None) -> pd.DataFrame:
        with self._tx() as con:
            q, args = "select * from orders where agent=?", [agent]
            if session:
                q, args = q + " and session=?", args + [session]
            return pd.read_sql_query(q + " order by session, symbol", con, params=args)
