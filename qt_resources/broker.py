"""Brokers: one interface; the persistent paper broker is the offline default.

The paper broker keeps accounts, orders (with every status transition), fills and positions in SQLite,
so it survives restarts. Orders placed after session D's close fill at the next session's open through
the shared :class:`~qt_resources.costs.CostModel`. Order ids are deterministic
(``client_order_id(agent, session, symbol, side)``) and a session's orders are written in one transaction
together with a "session done" marker: re-running a session returns the orders already placed and never
creates a second one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
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
create table if not exists audit_outbox (
    id integer primary key autoincrement, at text not null, kind text not null, agent text not null,
    data text not null);
create table if not exists reconciled (agent text primary key, at text not null);
create table if not exists corporate_actions (
    agent text not null, symbol text not null, ex_date text not null, kind text not null, ratio real not null,
    amount real not null, qty_before real not null, qty_after real not null, cash_change real not null,
    at text not null, primary key (agent, symbol, ex_date, kind));
create table if not exists audit_anchor (
    log text primary key, seq integer not null, hash text not null, at text not null);
"""

# columns added after the first schema: (name, type); a database from before them is migrated on open
_MIGRATIONS = [("ref_price", "real"), ("broker_order_id", "text"), ("attempts", "integer not null default 0"),
               ("order_type", "text not null default 'market'"), ("limit_price", "real"),
               ("time_in_force", "text not null default 'day'"), ("updated_at", "text"), ("replaces", "text")]
_READY: dict[str, tuple[int, int]] = {}  # db files whose schema this process has created -> (device, inode)
OPEN_STATUSES = ("new", "submitted", "accepted", "partially_filled")
FINAL_STATUSES = ("filled", "canceled", "rejected", "expired")


def _source(db_path: str) -> str:
    """A short, stable name of one ledger database for audit references (not its path)."""
    return "L" + hashlib.sha256(str(Path(db_path).resolve()).encode()).hexdigest()[:12]


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
    """Interface of a broker as the execution assets use it. Every implementation keeps a local ledger of its
    orders (with every status transition), fills, positions and cash per agent."""

    @property
    def simulated(self) -> bool:
        """True when fills are simulated on the data's own bars (no wall clock, no market hours)."""
        return True

    @property
    def is_live(self) -> bool:
        return False

    def routed(self, live: bool) -> "Broker":
        """The broker to send this run's orders to: the live endpoint only when ``live`` (all live gates pass)
        and the broker has one; otherwise its paper side."""
        return self

    def reconcile(self, agent: str) -> dict:
        """Bring the local ledger in line with the broker's truth (orders, positions); return what differed."""
        return {"orders_updated": [], "orders_adopted": [], "position_differences": []}

    def open_account(self, agent: str) -> None:  # pragma: no cover
        raise NotImplementedError

    def account(self) -> dict:
        """The broker's own account summary (cash, equity, buying power, status); empty for a simulated one."""
        return {}

    def fill_pending(self, agent: str, session: str, opens: dict[str, float]) -> list[dict]:  # pragma: no cover
        raise NotImplementedError

    def cancel_open(self, agent: str, reason: str) -> list[str]:  # pragma: no cover
        raise NotImplementedError

    def apply_corporate_actions(self, agent: str, session: str, actions: list) -> list[dict]:
        """Splits and dividends with ex-date ``session`` on the simulated books; a real broker applies them itself
        (its positions are read back by the reconciliation): nothing to do."""
        return []

    def positions(self, agent: str) -> dict[str, float]:  # pragma: no cover
        raise NotImplementedError

    def cash(self, agent: str) -> float:  # pragma: no cover
        raise NotImplementedError

    def session_done(self, agent: str, session: str) -> bool:  # pragma: no cover
        raise NotImplementedError

    def place_session_orders(self, agent: str, session: str, intents: list[OrderIntent],
                             rejected: list[tuple[OrderIntent, str]] = (),
                             send: bool = True) -> list[dict]:  # pragma: no cover
        """Record a session's orders exactly once and (``send``) send them; ``send=False`` (the kill switch)
        records without sending anything."""
        raise NotImplementedError

    def orders(self, agent: str, session: str | None = None) -> pd.DataFrame:  # pragma: no cover
        raise NotImplementedError


def audit_batched(fn):
    """A ledger method whose transactions flush the audit outbox once, at its end (see ``deferred_audit``)."""
    @functools.wraps(fn)
    def run(self, *args, **kwargs):
        with self.deferred_audit():
            return fn(self, *args, **kwargs)
    return run


class LedgerBroker(Broker):
    """The local SQLite ledger every broker keeps: accounts (cash per agent), orders with their transitions
    (``order_events``), fills and positions; optionally mirrored into the hash-chained audit log."""

    db_path: str
    initial_cash: float = 100_000.0
    audit_path: str | None = None  # hash-chained audit log (qt_resources/audit.py): intents, orders, transitions, fills
    _audit_queue: list = PrivateAttr(default_factory=list)
    _defer_flush: int = PrivateAttr(default=0)

    @contextmanager
    def deferred_audit(self) -> Iterator[None]:
        """Inside, committed transactions leave their audit records in the outbox (written in the same
        transaction, so nothing is lost by a crash) and one flush at the end moves them all into the log: one
        append and one fsync per batch of orders instead of one per transition."""
        self._defer_flush += 1
        try:
            yield
        finally:
            self._defer_flush -= 1
            if not self._defer_flush and self.audit_path:
                self.flush_audit()

    def _same_file(self) -> None:
        """The ledger this process set up must still be the file at ``db_path``: deleted or replaced under a
        running process, carrying on would start an empty ledger silently (orders placed again, fills lost)."""
        known = _READY.get(self.db_path)
        if known is None:
            return
        try:
            st = Path(self.db_path).stat()
        except FileNotFoundError:
            raise BrokerError(f"ledger {self.db_path} was deleted while this process was using it: restore it, "
                              "or start a new process, whose reconciliation adopts the orders at the broker") from None
        if (st.st_dev, st.st_ino) != known:
            raise BrokerError(f"ledger {self.db_path} was replaced by another file while this process was using it")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        Path(self.db_path).parent.mkdir(parents=True, exist_ok=True)
        self._same_file()
        con = sqlite3.connect(self.db_path, isolation_level=None, timeout=30)
        con.row_factory = sqlite3.Row
        try:
            if self.db_path not in _READY:
                # write-ahead log, synchronous=FULL (SQLite's default): a commit is one fsync of the log and still
                # durable on power loss; readers do not block the writer
                try:
                    con.execute("pragma journal_mode=wal")
                    con.executescript(_SCHEMA)
                except sqlite3.DatabaseError as e:  # e.g. "file is not a database": name the file
                    raise BrokerError(f"ledger {self.db_path} cannot be opened: {e} (a corrupt or foreign file; "
                                      "restore it from a backup, or move it away to start a new ledger that "
                                      "reconciliation fills from the broker)") from e
                have = {r["name"] for r in con.execute("pragma table_info(orders)")}
                for col, kind in _MIGRATIONS:
                    if col not in have:
                        con.execute(f"alter table orders add column {col} {kind}")
                st = Path(self.db_path).stat()
                _READY[self.db_path] = (st.st_dev, st.st_ino)
            con.execute("begin immediate")
            self._audit_queue.clear()
            try:
                yield con
                if self._audit_queue and self.audit_path:  # in the same transaction: audited iff it happened
                    now = _now()
                    con.executemany("insert into audit_outbox(at, kind, agent, data) values (?,?,?,?)",
                                    [(now, k, a, json.dumps(d, sort_keys=True, default=str))
                                     for k, a, d in self._audit_queue])
                con.execute("commit")
            except BaseException:
                con.execute("rollback")
                raise
            finally:
                self._audit_queue.clear()
        finally:
            con.close()
        if self.audit_path and not self._defer_flush:
            self.flush_audit()

    def flush_audit(self) -> int:
        """Move the outbox into the audit log, exactly once. Under the ledger's write lock: read the outbox, skip
        records a flush that died after appending already wrote (found by their ``_ref`` in the log's tail), append
        the rest, delete the outbox rows, commit. A crash anywhere loses nothing and duplicates nothing."""
        from qt_resources.audit import AuditLog

        self._same_file()
        con = sqlite3.connect(self.db_path, isolation_level=None, timeout=30)
        con.row_factory = sqlite3.Row
        try:
            if con.execute("select 1 from audit_outbox limit 1").fetchone() is None:
                return 0
            con.execute("begin immediate")
            try:
                rows = con.execute("select * from audit_outbox order by id").fetchall()
                log, src = AuditLog(self.audit_path), _source(self.db_path)
                done = log.refs_since(src, rows[0]["at"]) if rows else set()
                todo = [(r["kind"], r["agent"], {**json.loads(r["data"]), "_ref": f"{src}#{r['id']}"})
                        for r in rows if f"{src}#{r['id']}" not in done]
                written = log.append_many(todo)
                if rows:
                    con.execute("delete from audit_outbox where id <= ?", (rows[-1]["id"],))
                if written:  # the anchor: the chain's last line this ledger wrote, in the transaction that clears
                    # the outbox, so a cut or rewritten tail of the log no longer matches it (audit.verify)
                    con.execute("insert or replace into audit_anchor values (?,?,?,?)",
                                (str(Path(self.audit_path).resolve()), written[-1]["seq"], written[-1]["hash"],
                                 _now()))
                con.execute("commit")
            except BaseException:
                con.execute("rollback")
                raise
            return len(todo)
        finally:
            con.close()

    def audit_anchor(self) -> tuple[int, str] | None:
        """(seq, hash) of the last audit line this ledger wrote to its log (None before any)."""
        from qt_resources.audit import ledger_anchors

        if not self.audit_path or not Path(self.db_path).exists():
            return None
        self._same_file()
        anchors = ledger_anchors(self.db_path, self.audit_path)
        return anchors[0] if anchors else None

    def _audit(self, kind: str, agent: str, **data) -> None:
        self._audit_queue.append((kind, agent, data))

    def open_account(self, agent: str) -> None:
        with self._tx() as con:
            con.execute("insert or ignore into accounts(agent, initial_cash, cash) values (?,?,?)",
                        (agent, self.initial_cash, self.initial_cash))

    def _event(self, con: sqlite3.Connection, coid: str, status: str, detail: str = "", agent: str = "") -> None:
        con.execute("insert into order_events values (?,?,?,?)", (coid, status, _now(), detail))
        self._audit("transition", agent, client_order_id=coid, status=status, detail=detail)

    def _set_status(self, con: sqlite3.Connection, coid: str, status: str, detail: str = "", agent: str = "",
                    **cols) -> None:
        """One timestamped transition: the order's status (and any other columns) and its event row."""
        sets = ", ".join(f"{k}=?" for k in ("status", "updated_at", *cols))
        con.execute(f"update orders set {sets} where client_order_id=?", (status, _now(), *cols.values(), coid))
        self._event(con, coid, status, detail, agent=agent)

    def _book_fill(self, con: sqlite3.Connection, agent: str, order, session: str, qty: float, price: float,
                   commission: float) -> dict:
        """A fill of ``qty`` at ``price`` into the agent's position, cash and the fills table."""
        pos = con.execute("select qty, avg_price from positions where agent=? and symbol=?",
                          (agent, order["symbol"])).fetchone()
        held = pos["qty"] if pos else 0.0
        signed = qty if order["side"] == "buy" else -qty
        new_qty = held + signed
        avg = pos["avg_price"] if pos else 0.0
        new_avg = (avg * held + price * qty) / new_qty if order["side"] == "buy" and new_qty else avg
        con.execute("insert into positions values (?,?,?,?) on conflict(agent, symbol) do update "
                    "set qty=excluded.qty, avg_price=excluded.avg_price",
                    (agent, order["symbol"], new_qty, new_avg if new_qty else 0.0))
        con.execute("update accounts set cash = cash - ? where agent=?", (signed * price + commission, agent))
        con.execute("insert into fills values (?,?,?,?,?,?,?,?)",
                    (order["client_order_id"], agent, session, order["symbol"], order["side"], qty, price, commission))
        cash = con.execute("select cash from accounts where agent=?", (agent,)).fetchone()["cash"]
        self._audit("fill", agent, client_order_id=order["client_order_id"], session=session, symbol=order["symbol"],
                    side=order["side"], qty=qty, price=price, commission=commission, cash_after=cash)
        return {"client_order_id": order["client_order_id"], "symbol": order["symbol"], "side": order["side"],
                "qty": qty, "price": price, "commission": commission}

    def apply_corporate_actions(self, agent: str, session: str, actions: list) -> list[dict]:
        """Apply the splits and cash dividends whose ex-date is ``session`` to the agent's positions, before that
        session's open (qt_resources/corporate_actions.py): a split multiplies the position (and the quantity of
        an order still open for that open) and divides the average price; a dividend pays position x amount into
        cash (a short pays it). Each action is applied once per agent (recorded; a re-run skips it). Returns what
        was applied."""
        from qt_resources.corporate_actions import actions_on, apply_to_position

        done = []
        with self._tx() as con:
            for a in actions_on(actions, session):
                if con.execute("select 1 from corporate_actions where agent=? and symbol=? and ex_date=? and kind=?",
                               (agent, a.symbol, a.ex_date, a.kind)).fetchone():
                    continue
                pos = con.execute("select qty, avg_price from positions where agent=? and symbol=?",
                                  (agent, a.symbol)).fetchone()
                qty, avg = (pos["qty"], pos["avg_price"]) if pos else (0.0, 0.0)
                cash = con.execute("select cash from accounts where agent=?", (agent,)).fetchone()["cash"]
                new_qty, new_avg, new_cash = apply_to_position(qty, avg, cash, a)
                if pos:
                    con.execute("update positions set qty=?, avg_price=? where agent=? and symbol=?",
                                (new_qty, new_avg, agent, a.symbol))
                con.execute("update accounts set cash=? where agent=?", (new_cash, agent))
                if a.kind == "split":  # orders placed before the split, for this open: in new shares
                    con.execute(f"update orders set qty = qty * ?, ref_price = ref_price / ? where agent=? and "
                                f"symbol=? and session<? and status in {OPEN_STATUSES}",
                                (a.ratio, a.ratio, agent, a.symbol, session))
                row = {"agent": agent, "symbol": a.symbol, "ex_date": a.ex_date, "kind": a.kind, "ratio": a.ratio,
                       "amount": a.amount, "qty_before": qty, "qty_after": new_qty, "cash_change": new_cash - cash,
                       "at": _now()}
                con.execute(f"insert into corporate_actions ({', '.join(row)}) values ({', '.join('?' * len(row))})",
                            tuple(row.values()))
                self._audit("corporate_action", agent, **{("action" if k == "kind" else k): v
                                                           for k, v in row.items() if k != "agent"})
                done.append(row)
        return done

    def positions(self, agent: str) -> dict[str, float]:
        with self._tx() as con:
            rows = con.execute("select symbol, qty from positions where agent=? and qty != 0", (agent,)).fetchall()
        return {r["symbol"]: r["qty"] for r in rows}

    def cash(self, agent: str) -> float:
        with self._tx() as con:
            row = con.execute("select cash from accounts where agent=?", (agent,)).fetchone()
        if row is None:
            raise BrokerError(f"account for agent {agent!r} does not exist in {self.db_path}")
        return row["cash"]

    def session_done(self, agent: str, session: str) -> bool:
        with self._tx() as con:
            return con.execute("select 1 from sessions_done where agent=? and session=?",
                               (agent, session)).fetchone() is not None

    def orders(self, agent: str, session: str | None = None) -> pd.DataFrame:
        with self._tx() as con:
            q, args = "select * from orders where agent=?", [agent]
            if session:
                q, args = q + " and session=?", args + [session]
            return pd.read_sql_query(q + " order by session, symbol", con, params=args)

    def events(self, client_order_id: str) -> list[tuple[str, str]]:
        """(status, at) of every transition of one order, in order."""
        with self._tx() as con:
            return [(r["status"], r["at"]) for r in con.execute(
                "select status, at from order_events where client_order_id=? order by rowid", (client_order_id,))]

    def _plan_session(self, con: sqlite3.Connection, agent: str, session: str, intents: list[OrderIntent],
                      rejected, then: tuple[str, ...] = (), order_type: str = "market", time_in_force: str = "day",
                      limit_price=None) -> None:
        """Record a session's intents as orders (``new``, then the statuses ``then``) and pre-trade rejections,
        and mark the session done, in the caller's transaction: all of it or nothing. ``limit_price(intent)`` ->
        price or None."""
        last = con.execute("select last_session from accounts where agent=?", (agent,)).fetchone()
        if last is None:
            raise BrokerError(f"account for agent {agent!r} does not exist in {self.db_path}")
        if last["last_session"] and last["last_session"] > session:
            raise BrokerError(
                f"agent {agent!r}: the account is at session {last['last_session']}; refusing to place "
                f"orders for the earlier session {session} (that would rewrite its history)")
        now = _now()
        # orders of this session the ledger already holds without having planned it: adopted by reconciliation
        # from the broker after a lost ledger. Each stands for its intent (it is never placed again); the
        # session's other intents are planned as usual, and the session completes once.
        adopted = {r[0] for r in con.execute("select client_order_id from orders where agent=? and session=?",
                                              (agent, session))}
        for it in intents:
            coid = client_order_id(agent, session, it.symbol, it.side)
            if coid in adopted:
                self._audit("intent", agent, session=session, symbol=it.symbol, side=it.side, qty=it.qty,
                            reason=f"{it.reason} | already at the broker: {coid} (adopted)")
                continue
            lp = limit_price(it) if limit_price else None
            kind = "limit" if lp is not None else order_type
            self._audit("intent", agent, session=session, symbol=it.symbol, side=it.side, qty=it.qty, reason=it.reason)
            self._audit("order", agent, client_order_id=coid, session=session, symbol=it.symbol, side=it.side,
                        qty=it.qty, type=kind, limit_price=lp, time_in_force=time_in_force)
            con.execute("insert into orders(client_order_id, agent, session, symbol, side, qty, status, reason, "
                        "created_at, ref_price, order_type, limit_price, time_in_force, updated_at) "
                        "values (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (coid, agent, session, it.symbol, it.side, it.qty, "new", it.reason, now, it.ref_price,
                         kind, lp, time_in_force, now))
            self._event(con, coid, "new", agent=agent)
            for status in then:
                self._set_status(con, coid, status, agent=agent)
        for it, why in rejected:
            coid = client_order_id(agent, session, it.symbol, it.side)
            if coid in adopted:
                continue
            self._audit("intent", agent, session=session, symbol=it.symbol, side=it.side, qty=it.qty, reason=it.reason)
            con.execute("insert into orders(client_order_id, agent, session, symbol, side, qty, status, "
                        "reason, created_at, updated_at) values (?,?,?,?,?,?,?,?,?,?)",
                        (coid, agent, session, it.symbol, it.side, it.qty, "new", f"{it.reason} | pre-trade: {why}",
                         now, now))
            self._event(con, coid, "new", agent=agent)
            self._set_status(con, coid, "rejected", f"pre-trade: {why}", agent=agent)
        con.execute("insert into sessions_done values (?,?,?)", (agent, session, now))
        con.execute("update accounts set last_session=? where agent=?", (session, agent))


class PaperBroker(LedgerBroker):
    """The persistent paper broker: orders placed after session D's close fill at the next session's open
    through the shared cost model (what the backtests charge)."""

    commission_bps: float = 0.0
    slippage_bps: float = 0.0
    min_commission: float = 0.0
    spread_bps: float = 0.0
    price_collar_pct: float | None = None  # an open this far from the order's ref_price: canceled, not filled

    @property
    def costs(self) -> CostModel:
        return CostModel(self.commission_bps, self.slippage_bps, self.min_commission, self.spread_bps)

    def fill_pending(self, agent: str, session: str, opens: dict[str, float]) -> list[dict]:
        """Fill this agent's open orders from earlier sessions at ``session``'s open (a symbol without an open
        price that session: the order expires, as a day order would). Sells first, so their proceeds fund the
        buys; a buy the cash cannot cover is cut to what it can (remainder canceled) or rejected."""
        fills = []
        with self._tx() as con:
            pending = con.execute(
                f"select * from orders where agent=? and session<? and status in {OPEN_STATUSES} "
                "order by case side when 'sell' then 0 else 1 end, symbol", (agent, session)).fetchall()
            for o in pending:
                coid = o["client_order_id"]
                ref = opens.get(o["symbol"])
                if ref is None or not ref > 0:  # a market order for the next open is a day order: it expires
                    self._set_status(con, coid, "expired", f"no open price for {o['symbol']} on {session}", agent)
                    continue
                band = self.price_collar_pct
                if band is not None and o["ref_price"] and abs(ref / o["ref_price"] - 1) > band:
                    why = f"price collar: open {ref:.4f} vs {o['ref_price']:.4f} beyond {band:.1%}"
                    self._set_status(con, coid, "canceled", why, agent, reason=f"{o['reason'] or ''} | {why}")
                    continue
                price = self.costs.fill_price(o["side"], ref)
                cash = con.execute("select cash from accounts where agent=?", (agent,)).fetchone()["cash"]
                pos = con.execute("select qty from positions where agent=? and symbol=?",
                                  (agent, o["symbol"])).fetchone()
                qty = o["qty"]
                if o["side"] == "sell":
                    qty = min(qty, pos["qty"] if pos else 0.0)
                else:
                    qty = min(qty, float(int(cash // (price * (1 + self.costs.fee_rate)))))
                if qty <= 0:
                    self._set_status(con, coid, "rejected", "insufficient cash or position", agent,
                                     reason=f"{o['reason'] or ''} | rejected at fill: nothing affordable/held")
                    continue
                commission = self.costs.commission(qty, price)
                status = "filled" if qty == o["qty"] else "partially_filled"
                self._set_status(con, coid, status, f"{qty}@{price:.4f}", agent, filled_qty=qty, fill_price=price,
                                 commission=commission, fill_session=session)
                if status == "partially_filled":  # the rest cannot be funded: cancel it
                    self._set_status(con, coid, "canceled", f"unfilled {o['qty'] - qty}: insufficient cash", agent)
                fills.append(self._book_fill(con, agent, o, session, qty, price, commission))
        return fills

    def cancel_open(self, agent: str, reason: str) -> list[str]:
        """Cancel every open order of the agent (the kill switch); returns their client order ids."""
        with self._tx() as con:
            ids = [r["client_order_id"] for r in con.execute(
                f"select client_order_id from orders where agent=? and status in {OPEN_STATUSES}", (agent,))]
            for coid in ids:
                self._set_status(con, coid, "canceled", reason, agent)
        return ids

    def place_session_orders(self, agent: str, session: str, intents: list[OrderIntent],
                             rejected: list[tuple[OrderIntent, str]] = (), send: bool = True) -> list[dict]:
        """Submit a session's orders exactly once (simulated: ``send`` makes no difference). Returns the orders
        of that session (new or existing).
        ``rejected``: intents a pre-trade check refused, recorded in the same transaction as orders new ->
        rejected with the reason (never submitted)."""
        with self._tx() as con:
            if con.execute("select 1 from sessions_done where agent=? and session=?", (agent, session)).fetchone() \
                    is None:
                self._plan_session(con, agent, session, intents, rejected, ("submitted", "accepted"),
                                   time_in_force="day (next open)")  # the simulated broker acknowledges at once
            rows = con.execute("select * from orders where agent=? and session=? order by symbol",
                               (agent, session)).fetchall()
        return [dict(r) for r in rows]


def order_intents(targets: dict[str, float], positions: dict[str, float], closes: dict[str, float],
                  equity: float, min_value: float = 0.0) -> list[OrderIntent]:
    """Whole-share, long-only intents that move ``positions`` to ``targets`` (weights of equity): target shares
    are floored (never more than the weight buys), a change below one share is no order, and an order below
    ``min_value`` notional is skipped unless it closes the position."""
    intents = []
    for sym in sorted(set(targets) | set(positions)):
        px = closes.get(sym)
        if px is None or not px > 0:
            continue  # no price to size against this session: leave the position alone
        weight = targets.get(sym, 0.0)
        target_qty = math.floor(max(weight, 0.0) * equity / px + 1e-9)  # a kept weight maps back to its qty
        held = positions.get(sym, 0.0)
        delta = target_qty - held
        if abs(delta) < 1 or (target_qty != 0 and abs(delta) * px < min_value):
            continue
        side = "buy" if delta > 0 else "sell"
        why = (f"target {weight:.4f} x equity {equity:,.2f} / close {px:.2f} = {target_qty} sh; held {held:g}"
               if sym in targets else f"no decision for {sym}: close position of {held:g}")
        intents.append(OrderIntent(sym, side, float(abs(delta)), why, ref_price=float(px)))
    return intents
