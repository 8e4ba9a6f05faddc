"""Alpaca through alpaca-py's ``TradingClient`` (the paper endpoint unless every live gate passes).

The local ledger (the same SQLite schema as the paper broker, one file per endpoint) is written *before* each
network call, so a process killed anywhere loses nothing and duplicates nothing:

1. **Plan**: a session's intents become orders in status ``new`` in one transaction with the "session done"
   marker. Their ``client_order_id`` is deterministic (agent, session, symbol, side).
2. **Submit**: before each POST the order's attempt counter is incremented and it moves to ``submitted``
   (committed). An order with an earlier attempt is first **looked up by its client order id**; only when
   the broker does not know it is it sent again. Timeouts, dropped connections and 5xx are unknown outcomes
   (looked up, then retried with exponential backoff); 429 waits for ``Retry-After``; a 422 "client_order_id
   must be unique" means an earlier attempt did arrive (looked up); any other 4xx is a rejection, recorded
   with the broker's message and never retried. alpaca-py's own blind 429 retry is switched off and every
   request has a timeout (alpaca-py sets none).
3. **Sync**: open orders are read back by client order id; each change of status is a timestamped
   transition (``submitted -> accepted -> partially_filled -> filled | canceled | rejected | expired``), and
   each increase of ``filled_qty`` is booked as a fill at the price implied by ``filled_avg_price``.
4. **Reconcile** (start of every orders run): unresolved submissions are looked up, open orders synced,
   the broker's open orders of this agent that the ledger does not know are adopted, and positions are
   compared with the broker's; differences are resolved from the broker's truth and reported.

Orders for session D may leave only between D's close and the next session's close (``market_window``):
a backfill of history against Alpaca sends nothing.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import Field, PrivateAttr

from qt_resources.broker import OPEN_STATUSES, BrokerError, LedgerBroker, OrderIntent, _now, audit_batched
from qt_resources.retry import RetriesExhausted, TransientError, retry_after_of, retry_call

# Alpaca order statuses -> ours (an open Alpaca status is "accepted", or "partially_filled" once anything filled)
_FINAL = {"filled": "filled", "canceled": "canceled", "replaced": "canceled", "expired": "expired",
          "rejected": "rejected", "partially_filled": "partially_filled"}
_DUPLICATE = "client_order_id must be unique"


def local_status(alpaca_status, filled_qty: float) -> str:
    s = getattr(alpaca_status, "value", alpaca_status)
    return _FINAL.get(s) or ("partially_filled" if filled_qty > 0 else "accepted")


def _outcome(exc: Exception) -> tuple[str, float | None]:
    """Classify a failed call: ("unknown" | "busy" | "duplicate" | "missing" | "reject" | "fatal", Retry-After).
    Only 400, 403 and 422 are rejections (final); 401 is "fatal" (keys: stop, leave the order unresolved);
    anything else -- timeouts, dropped or garbled responses, 5xx, 408/409, a body alpaca-py cannot parse -- may
    have reached the broker: "unknown" (looked up before anything is resent)."""
    from alpaca.common.exceptions import APIError

    if isinstance(exc, APIError):
        code = exc.status_code or 0
        if code == 429:
            return "busy", retry_after_of(exc)
        if code == 404:
            return "missing", None
        if code == 422 and _DUPLICATE in str(exc):
            return "duplicate", None
        if code in (400, 403, 422):
            return "reject", None
        if code == 401:
            return "fatal", None
        return "unknown", retry_after_of(exc)
    return "unknown", None


class GarbledReply(TransientError):
    """A reply the client could not read (not JSON, or JSON of another shape): the call may have reached the
    broker, so it is an unknown outcome, retried (idempotent calls) and classified like a timeout."""


def _readable(fn):
    """``fn`` with an unparseable reply raised as GarbledReply (alpaca-py raises the JSON decoder's or the
    model's error, which no retry or BrokerError would otherwise catch)."""
    from alpaca.common.exceptions import APIError

    def call():
        try:
            return fn()
        except APIError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSONDecodeError, pydantic's errors
            raise GarbledReply(f"unreadable reply: {type(e).__name__}: {str(e)[:200]}") from e

    return call


def _unchanged(ledger: tuple, order) -> bool:
    """The ledger's (status, filled_qty, broker_order_id) already matches the broker's order."""
    status, had, broker_id = ledger
    filled = float(order.filled_qty or 0)
    return (broker_id is not None and abs(filled - (had or 0.0)) <= 1e-12
            and local_status(order.status, filled) == status)


def _message(exc: Exception) -> str:
    try:
        return f"HTTP {exc.status_code}: {exc.message}"  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a body that is not Alpaca's JSON
        return f"{type(exc).__name__}: {str(exc)[:300]}"


class AlpacaBroker(LedgerBroker):
    """``broker.kind: alpaca``. Keys come from ``ALPACA_API_KEY`` / ``ALPACA_SECRET_KEY`` (``dg.EnvVar``)."""

    api_key: str = Field(repr=False)
    secret_key: str = Field(repr=False)
    live_api_key: str | None = Field(None, repr=False)  # Alpaca's live keys differ from the paper ones
    live_secret_key: str | None = Field(None, repr=False)
    paper: bool = True
    url_override: str | None = None  # the paper endpoint's base URL (a proxy, or our test server); None = Alpaca's
    live_url_override: str | None = None  # the live endpoint's, used only when every live gate passes
    time_in_force: Literal["day", "gtc", "opg", "cls"] = "day"
    price_collar_pct: float | None = None  # send a marketable limit at ref x (1 +- collar) instead of a market order
    timeout_seconds: float = 10.0
    max_attempts: int = 5
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0
    enforce_market_hours: bool = True  # False only to replay history against a sandbox (never with live)
    _client = PrivateAttr(default=None)
    _last_error: dict = PrivateAttr(default_factory=dict)  # client order id -> the last transient error seen

    # ------------------------------------------------------------------ routing and client

    @property
    def simulated(self) -> bool:
        return False

    @property
    def is_live(self) -> bool:
        return not self.paper

    def routed(self, live: bool) -> "AlpacaBroker":
        if live == self.is_live:
            return self
        if live and not self.enforce_market_hours:
            raise BrokerError("live trading with enforce_market_hours: false is refused")
        if live and not (self.live_api_key and self.live_secret_key):
            raise BrokerError("live trading needs the live keys: set ALPACA_LIVE_API_KEY and ALPACA_LIVE_SECRET_KEY "
                              "(Alpaca's live keys are not the paper ones)")
        p = Path(self.db_path)
        fields = {k: getattr(self, k) for k in type(self).model_fields}
        fields.update(paper=not live, url_override=self.live_url_override if live else self.url_override,
                      api_key=self.live_api_key if live else self.api_key,
                      secret_key=self.live_secret_key if live else self.secret_key,
                      db_path=str(p.with_name(f"{p.stem}.live{p.suffix}")) if live else self.db_path,
                      audit_path=(str(Path(self.audit_path).with_name(f"{Path(self.audit_path).stem}.live.jsonl"))
                                  if live and self.audit_path else self.audit_path))
        return AlpacaBroker(**fields)

    @property
    def client(self):
        if self._client is None:
            from alpaca.trading.client import TradingClient

            c = TradingClient(self.api_key, self.secret_key, paper=self.paper, url_override=self.url_override)
            c._retry = 0  # our loop retries: Retry-After aware, and it looks an order up before resending it
            c._session.request = functools.partial(c._session.request, timeout=self.timeout_seconds)
            self._client = c
        return self._client

    def _read(self, fn, what: str, fine: tuple[str, ...] = ("missing",)):
        """An idempotent call (GET, DELETE) with retries; an answer whose outcome class is in ``fine`` (by default
        a 404) gives None, any other failure a BrokerError."""
        from alpaca.common.exceptions import APIError

        try:
            return retry_call(_readable(fn), what=what, attempts=self.max_attempts, base_delay=self.backoff_seconds,
                              max_delay=self.max_backoff_seconds)
        except APIError as e:
            if _outcome(e)[0] in fine:
                return None
            raise BrokerError(f"Alpaca {what}: {_message(e)}") from e
        except RetriesExhausted as e:
            raise BrokerError(f"Alpaca {what}: {e}") from e

    def lookup(self, coid: str):
        return self._read(lambda: self.client.get_order_by_client_id(coid), f"GET order {coid}")

    def account(self) -> dict:
        a = self._read(self.client.get_account, "GET account")
        return {"cash": float(a.cash), "equity": float(a.equity), "buying_power": float(a.buying_power),
                "status": str(getattr(a.status, "value", a.status))}

    # ------------------------------------------------------------------ ledger <- broker

    def _apply(self, agent: str, order, detail: str = "") -> str:
        """Record what the broker says about one of our orders: transitions and new fills. Returns its status."""
        coid = order.client_order_id
        filled = float(order.filled_qty or 0)
        avg = float(order.filled_avg_price or 0)
        status = local_status(order.status, filled)
        with self._tx() as con:
            row = con.execute("select * from orders where client_order_id=?", (coid,)).fetchone()
            if row is None:
                raise BrokerError(f"Alpaca order {coid} is not in the ledger {self.db_path}")
            before, had = row["status"], row["filled_qty"] or 0.0
            if filled > had + 1e-12:
                dq = filled - had
                px = (avg * filled - (row["fill_price"] or 0.0) * had) / dq
                if not (avg > 0 and px > 0):  # no average price, or rounding noise on a tiny increment
                    if not avg > 0:
                        raise BrokerError(f"Alpaca order {coid}: filled_qty {filled:g} without filled_avg_price")
                    px = avg
                when = order.filled_at or order.updated_at
                day = pd.Timestamp(when).tz_convert("America/New_York").strftime("%Y-%m-%d") if when else row["session"]
                if before in ("new", "submitted"):
                    self._set_status(con, coid, "accepted", "implied by a fill", agent)
                self._book_fill(con, agent, row, day, dq, px, 0.0)
                self._set_status(con, coid, status, f"filled {filled:g} @ avg {avg:.4f}{detail}", agent,
                                 broker_order_id=str(order.id), filled_qty=filled, fill_price=avg, fill_session=day)
            elif status != before:
                if before in ("new", "submitted") and status not in ("accepted", "rejected"):
                    self._set_status(con, coid, "accepted", "implied by the broker's status", agent)
                why = f"broker status {getattr(order.status, 'value', order.status)}{detail}"
                self._set_status(con, coid, status, why, agent, broker_order_id=str(order.id))
            elif row["broker_order_id"] is None:
                con.execute("update orders set broker_order_id=? where client_order_id=?", (str(order.id), coid))
        return status

    # ------------------------------------------------------------------ submission

    def _request(self, row):
        from alpaca.trading.enums import OrderSide, TimeInForce
        from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest

        common = dict(symbol=row["symbol"], qty=row["qty"], side=OrderSide(row["side"]),
                      time_in_force=TimeInForce(row["time_in_force"]), client_order_id=row["client_order_id"])
        if row["order_type"] == "limit":
            return LimitOrderRequest(limit_price=row["limit_price"], **common)
        return MarketOrderRequest(**common)

    def _submit(self, agent: str, coid: str) -> str:
        """Send one order at most once as far as the broker is concerned; returns its status afterwards
        (``submitted`` = outcome still unknown after ``max_attempts``)."""
        delay = self.backoff_seconds
        for _ in range(self.max_attempts):
            with self._tx() as con:
                row = con.execute("select * from orders where client_order_id=?", (coid,)).fetchone()
                if row["status"] in ("new", "submitted") and row["attempts"] == 0:
                    # never sent: count the attempt, committed before the POST (a crash after it is found by the
                    # lookup below on the next run)
                    con.execute("update orders set attempts=1 where client_order_id=?", (coid,))
                    if row["status"] == "new":
                        self._set_status(con, coid, "submitted", "", agent)
                    marked = True
                else:
                    marked = False
            if row["status"] not in ("new", "submitted"):
                return row["status"]
            if row["attempts"] > 0:  # an earlier POST may have arrived: ask before sending again
                try:
                    found = self.client.get_order_by_client_id(coid)
                except Exception as e:  # noqa: BLE001 - classified
                    kind, wait = _outcome(e)
                    if kind == "fatal":
                        raise BrokerError(f"Alpaca GET order {coid}: {_message(e)}") from e
                    if kind != "missing":
                        self._last_error[coid] = _message(e)
                        time.sleep(min(self.max_backoff_seconds, wait if wait is not None else delay))
                        delay = min(2 * delay, self.max_backoff_seconds)
                        continue
                else:
                    return self._apply(agent, found, " (found by client order id)")
            if not marked:
                with self._tx() as con:  # committed before the POST: a crash after it is found by the lookup above
                    con.execute("update orders set attempts=attempts+1 where client_order_id=?", (coid,))
                    if row["status"] == "new":
                        self._set_status(con, coid, "submitted", "", agent)
            try:
                order = self.client.submit_order(self._request(row))
            except Exception as e:  # noqa: BLE001 - classified
                kind, wait = _outcome(e)
                if kind == "fatal":  # e.g. 401: the keys; the order stays unresolved, looked up next time
                    raise BrokerError(f"Alpaca POST order {coid}: {_message(e)}") from e
                if kind == "reject":
                    with self._tx() as con:
                        self._set_status(con, coid, "rejected", _message(e), agent,
                                         reason=f"{row['reason'] or ''} | rejected by Alpaca: {_message(e)}")
                    return "rejected"
                if kind != "duplicate":  # unknown outcome or busy: wait, then look it up
                    self._last_error[coid] = _message(e)
                    time.sleep(min(self.max_backoff_seconds, wait if wait is not None else delay))
                    delay = min(2 * delay, self.max_backoff_seconds)
                continue
            return self._apply(agent, order)
        return "submitted"

    def _submit_pending(self, agent: str, now=None) -> list[str]:
        """Send every planned or unresolved order of the agent; returns the client order ids still unknown.
        An order whose session's window has passed is canceled unsent (or, if it did reach the broker, synced)."""
        from qt_resources.gates import market_window

        with self._tx() as con:
            rows = con.execute("select client_order_id, session, status, attempts from orders where agent=? and "
                               "status in ('new','submitted') and replaces is null "
                               "order by session, side desc, symbol", (agent,)).fetchall()
        unknown = []
        for r in rows:
            closed = market_window(r["session"], now) if self.enforce_market_hours else None
            if closed:
                found = self.lookup(r["client_order_id"]) if r["attempts"] else None
                if found is not None:
                    self._apply(agent, found, " (found by client order id)")
                else:  # (one that was attempted and later shows up at the broker is re-opened by reconcile)
                    with self._tx() as con:
                        self._set_status(con, r["client_order_id"], "canceled", f"not sent: {closed}", agent)
                continue
            if self._submit(agent, r["client_order_id"]) == "submitted":
                unknown.append(r["client_order_id"])
        return unknown

    @audit_batched
    def place_session_orders(self, agent: str, session: str, intents: list[OrderIntent],
                             rejected: list[tuple[OrderIntent, str]] = (), send: bool = True) -> list[dict]:
        """Plan the session's orders once, then (``send``) send whatever is planned or unresolved. Raises when
        an order's outcome is still unknown after every attempt: it stays ``submitted`` and is looked up by its
        client order id (never blindly resent) on the next run. Raises before the session's close (nothing
        recorded: run again after the close); after its window the intents are recorded rejected, not sent."""
        from qt_resources.gates import market_window

        collar = self.price_collar_pct

        def limit(it: OrderIntent):
            if collar is None or not it.ref_price:
                return None
            return round(it.ref_price * (1 + collar if it.side == "buy" else 1 - collar), 2)

        with self._tx() as con:
            if con.execute("select 1 from sessions_done where agent=? and session=?", (agent, session)).fetchone() \
                    is None:
                closed = market_window(session) if self.enforce_market_hours else None
                if closed and "has not closed yet" in closed:
                    raise BrokerError(f"Alpaca: {closed}: run the orders after the close")
                if closed:  # stale: nothing may leave for this session; record the intents as refused
                    rejected, intents = [*rejected, *((it, closed) for it in intents)], []
                self._plan_session(con, agent, session, intents, rejected, time_in_force=self.time_in_force,
                                   limit_price=limit)
        unknown = self._submit_pending(agent) if send else []
        if unknown:
            last = "; ".join(f"{c}: {self._last_error.get(c, '?')}" for c in unknown)
            raise BrokerError(f"Alpaca: {len(unknown)} order(s) with an unknown outcome after {self.max_attempts} "
                              f"attempts ({last}). They stay 'submitted' and are looked up by client order id "
                              "before anything is resent on the next run.")
        with self._tx() as con:
            rows = con.execute("select * from orders where agent=? and session=? order by symbol",
                               (agent, session)).fetchall()
        return [dict(r) for r in rows]

    # ------------------------------------------------------------------ sync, cancel, replace, reconcile

    @audit_batched
    def sync(self, agent: str) -> list[dict]:
        """Read every open order of the agent back from the broker; returns the fills booked."""
        with self._tx() as con:
            rows = con.execute("select client_order_id from orders where agent=? and status in "
                               "('accepted','partially_filled')", (agent,)).fetchall()
            n0 = con.execute("select count(*) from fills where agent=?", (agent,)).fetchone()[0]
        for r in rows:
            found = self.lookup(r["client_order_id"])
            if found is not None:
                self._apply(agent, found)
        with self._tx() as con:
            new = con.execute("select * from fills where agent=? order by rowid limit -1 offset ?",
                              (agent, n0)).fetchall()
        return [dict(f) for f in new]

    def fill_pending(self, agent: str, session: str, opens: dict[str, float]) -> list[dict]:
        """Fills happen at the broker: read them back (``opens`` is not used)."""
        return self.sync(agent)

    def cancel_open(self, agent: str, reason: str) -> list[str]:
        """Cancel every open order of the agent at the broker (the kill switch): each cancel with retries, past
        any one that fails (all failures raised at the end). Never sent: canceled locally. Attempted but unknown
        to the broker (a POST may be in flight): left ``submitted`` for the reconciliation, which the next run's
        cancel then reaches. Returns the client order ids canceled."""
        with self._tx() as con:
            rows = con.execute(f"select * from orders where agent=? and status in {OPEN_STATUSES}",
                               (agent,)).fetchall()
        ids, failed = [], []
        for r in rows:
            coid = r["client_order_id"]
            try:
                found = self.lookup(coid) if r["attempts"] or r["broker_order_id"] else None
                if found is None:
                    if not r["attempts"]:
                        with self._tx() as con:
                            self._set_status(con, coid, "canceled", f"not sent: {reason}", agent)
                        ids.append(coid)
                    continue
                if local_status(found.status, float(found.filled_qty or 0)) in ("accepted", "partially_filled"):
                    self._cancel(found.id, coid)
                    found = self.lookup(coid) or found
                self._apply(agent, found, f" ({reason})")
                ids.append(coid)
            except BrokerError as e:
                failed.append(f"{coid}: {e}")
        if failed:
            raise BrokerError(f"Alpaca: {len(failed)} cancel(s) failed ({'; '.join(failed)}); "
                              f"{len(ids)} done")
        return ids

    def _cancel(self, order_id, coid: str) -> None:
        """DELETE with retries; "not cancelable" (already final: a race with a fill) and 404 are fine."""
        self._read(lambda: self.client.cancel_order_by_id(order_id), f"cancel {coid}", fine=("reject", "missing"))

    @audit_batched
    def replace(self, agent: str, coid: str, qty: float | None = None, limit_price: float | None = None) -> str:
        """Replace an open order (new quantity and/or limit price): the broker's new order is a new ledger row
        ``<coid>-r<n>``; the old one ends ``canceled`` ("replaced by ..."). Returns the new client order id."""
        from alpaca.trading.requests import ReplaceOrderRequest

        with self._tx() as con:
            row = con.execute("select * from orders where client_order_id=? and agent=?", (coid, agent)).fetchone()
            n = con.execute("select count(*) from orders where client_order_id like ?", (f"{coid}-r%",)).fetchone()[0]
        if row is None or row["broker_order_id"] is None or row["status"] not in ("accepted", "partially_filled"):
            raise BrokerError(f"replace {coid}: not an open order at the broker")
        new_coid = f"{coid}-r{n + 1}"
        with self._tx() as con:  # planned before the PATCH, like a submission
            con.execute("insert into orders(client_order_id, agent, session, symbol, side, qty, status, reason, "
                        "created_at, ref_price, order_type, limit_price, time_in_force, updated_at, attempts, "
                        "replaces) values (?,?,?,?,?,?,?,?,?,?,?,?,?,?,1,?)",
                        (new_coid, agent, row["session"], row["symbol"], row["side"], qty or row["qty"], "new",
                         f"replaces {coid}", _now(), row["ref_price"], row["order_type"],
                         limit_price if limit_price is not None else row["limit_price"], row["time_in_force"],
                         _now(), coid))
            self._event(con, new_coid, "new", f"replaces {coid}", agent)
            self._set_status(con, new_coid, "submitted", "", agent)
        try:
            new = self.client.replace_order_by_id(row["broker_order_id"], ReplaceOrderRequest(
                qty=int(qty) if qty is not None else None, limit_price=limit_price, client_order_id=new_coid))
        except Exception as e:  # noqa: BLE001
            kind, _ = _outcome(e)
            new = self.lookup(new_coid) if kind in ("unknown", "busy", "duplicate") else None
            if new is None:
                if kind in ("reject", "missing"):  # the broker said no: the original order stands
                    with self._tx() as con:
                        self._set_status(con, new_coid, "rejected", _message(e), agent)
                # else unknown: it stays submitted; reconciliation looks it up (never resends a replacement)
                raise BrokerError(f"replace {coid}: {_message(e)}") from e
        self._apply(agent, new)
        old = self.lookup(coid)
        if old is not None:
            self._apply(agent, old, f" (replaced by {new_coid})")
        return new_coid

    @audit_batched
    def reconcile(self, agent: str, lookback_days: int = 7) -> dict:
        """The broker's truth into the ledger, reported: (1) unresolved submissions looked up (a replacement
        that never arrived is dropped: its original stands); (2) every order of this agent at the broker
        (our client order id prefix; open ones, and closed ones updated since the oldest open or recent ledger
        order) applied, so an order the ledger closed or never knew (a lost database) is re-opened, booked or
        adopted; (3) positions compared with the broker's."""
        report = {"orders_updated": [], "orders_adopted": [], "orders_unresolved": [], "position_differences": [],
                  "orders_listed": 0}
        started = pd.Timestamp.now(tz="UTC")
        with self._tx() as con:
            before = {r["client_order_id"]: (r["status"], r["filled_qty"], r["broker_order_id"]) for r in con.execute(
                "select client_order_id, status, filled_qty, broker_order_id from orders where agent=?", (agent,))}
            attempted = con.execute("select client_order_id, replaces from orders where agent=? and "
                                    "status='submitted'", (agent,)).fetchall()
            last = con.execute("select at from reconciled where agent=?", (agent,)).fetchone()
            # what can have changed since the last reconciliation: orders still open here, and orders submitted
            # since then (an hour's margin for clocks); without one (a new or lost ledger) the lookback window
            window = (pd.Timestamp(last["at"]) - pd.Timedelta(hours=1) if last
                      else started - pd.Timedelta(days=lookback_days))
            oldest_open = con.execute(f"select min(created_at) from orders where agent=? and status in "
                                      f"{OPEN_STATUSES}", (agent,)).fetchone()[0]
            since = min(window, pd.Timestamp(oldest_open)) if oldest_open else window
        for r in attempted:  # unknown outcomes from an earlier run (a timeout, a crash): ask
            found = self.lookup(r["client_order_id"])
            if found is not None:
                self._apply(agent, found, " (reconciled)")
            elif r["replaces"]:
                with self._tx() as con:
                    self._set_status(con, r["client_order_id"], "canceled",
                                     f"replacement unknown to the broker; {r['replaces']} stands", agent)
            else:
                report["orders_unresolved"].append(r["client_order_id"])  # never arrived: sent again in its window
        listed = self._broker_orders(agent, since - pd.Timedelta(days=1))
        report["orders_listed"] = len(listed)
        for o in listed:
            if o.client_order_id not in before:
                self._adopt(agent, o)
                report["orders_adopted"].append(o.client_order_id)
            elif _unchanged(before[o.client_order_id], o):
                continue  # the ledger already says what the broker says: no transaction
            self._apply(agent, o, " (reconciled)")
        with self._tx() as con:
            after = {r["client_order_id"]: (r["status"], r["filled_qty"]) for r in con.execute(
                "select client_order_id, status, filled_qty from orders where agent=?", (agent,))}
            con.execute("insert or replace into reconciled values (?, ?)", (agent, started.isoformat()))
        report["orders_updated"] = [{"client_order_id": c, "was": s[0], "now": after[c][0]}
                                    for c, s in before.items() if after.get(c, s[:2]) != s[:2]]
        report["position_differences"] = self._reconcile_positions(agent)
        return report

    def _broker_orders(self, agent: str, after: pd.Timestamp) -> list:
        """This agent's orders at the broker (open, and any submitted after ``after``), all pages."""
        from alpaca.trading.enums import QueryOrderStatus
        from alpaca.trading.requests import GetOrdersRequest

        prefix, seen, out = f"qtos-{agent}-", set(), []
        for status in (QueryOrderStatus.OPEN, QueryOrderStatus.ALL):
            start = after.to_pydatetime()
            while True:
                page = self._read(lambda: self.client.get_orders(GetOrdersRequest(
                    status=status, after=start, direction="asc", limit=500)), "GET orders") or []
                for o in page:
                    if (o.client_order_id or "").startswith(prefix) and o.client_order_id not in seen:
                        seen.add(o.client_order_id)
                        out.append(o)
                if len(page) < 500:
                    break
                start = max(o.submitted_at or o.created_at for o in page)
        return out

    def _adopt(self, agent: str, o) -> None:
        """An order of ours at the broker that the ledger does not know: recorded, then applied."""
        prefix = f"qtos-{agent}-"
        day = o.client_order_id[len(prefix):].split("-")[0]
        session = f"{day[:4]}-{day[4:6]}-{day[6:]}" if len(day) == 8 and day.isdigit() else _now()[:10]
        with self._tx() as con:
            con.execute("insert into orders(client_order_id, agent, session, symbol, side, qty, status, reason, "
                        "created_at, updated_at, attempts, broker_order_id, order_type, time_in_force) "
                        "values (?,?,?,?,?,?,?,?,?,?,1,?,?,?)",
                        (o.client_order_id, agent, session, o.symbol, getattr(o.side, "value", o.side),
                         float(o.qty or 0), "submitted", "adopted: at the broker, unknown to the ledger",
                         _now(), _now(), str(o.id), getattr(o.order_type, "value", o.order_type) or "market",
                         getattr(o.time_in_force, "value", o.time_in_force) or "day"))
            self._event(con, o.client_order_id, "submitted", "adopted by reconciliation", agent)

    def _reconcile_positions(self, agent: str) -> list[dict]:
        """Broker positions vs the ledger's (all agents of this account summed). With this agent alone on the
        account and no open order of it at the broker (a fill could land between the two reads), a difference
        is booked as a reconciliation fill at the broker's current price (cash moves with it); otherwise it is
        reported, not attributed."""
        held = {p.symbol: p for p in self._read(self.client.get_all_positions, "GET positions") or []}
        broker = {s: float(p.qty) for s, p in held.items()}
        with self._tx() as con:
            agents = [r[0] for r in con.execute("select agent from accounts")]
            busy = con.execute(f"select count(*) from orders where agent=? and status in {OPEN_STATUSES}",
                               (agent,)).fetchone()[0]
            local = {r[0]: r[1] for r in con.execute("select symbol, sum(qty) from positions group by symbol") if r[1]}
            fix = agents == [agent] and not busy
            diffs = [{"symbol": s, "ledger": local.get(s, 0.0), "broker": broker.get(s, 0.0), "resolved": fix}
                     for s in sorted(set(local) | set(broker)) if abs(local.get(s, 0.0) - broker.get(s, 0.0)) > 1e-9]
            for d in diffs if fix else []:
                p = held.get(d["symbol"])
                price = float(p.current_price or p.avg_entry_price) if p is not None else None
                if not price:
                    last = con.execute("select price from fills where agent=? and symbol=? order by rowid desc "
                                       "limit 1", (agent, d["symbol"])).fetchone()
                    price = last[0] if last else 0.0
                delta = d["broker"] - d["ledger"]
                row = {"client_order_id": f"reconcile-{d['symbol']}-{_now()}", "symbol": d["symbol"],
                       "side": "buy" if delta > 0 else "sell"}
                self._book_fill(con, agent, row, _now()[:10], abs(delta), price, 0.0)
                d["price"] = price
                self._audit("reconcile", agent, symbol=d["symbol"], ledger=d["ledger"], broker=d["broker"], price=price)
        return diffs
