"""A small, thread-safe, in-memory server speaking Alpaca's Trading API v2 wire format on 127.0.0.1, for driving
the real alpaca-py ``TradingClient(key, secret, paper=True, url_override=server.url)`` in tests.

Orders never fill by themselves: the test is the matching engine (``fill``, ``fill_all``, ``expire_open``,
``set_position``). ``faults`` inject transport trouble (error statuses, Retry-After, slow answers, a connection
dropped after the order was accepted) so retry/idempotency code can be proven against the real client.
JSON matches the live API: decimals as strings ("10", "150.25"), RFC 3339 UTC timestamps ending in Z, uuid ids,
errors as ``{"code": <int>, "message": "..."}``.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

OPEN_STATUSES = frozenset({"new", "accepted", "pending_new", "partially_filled", "accepted_for_bidding",
                           "pending_cancel", "pending_replace", "held", "done_for_day"})
TIME_IN_FORCE = frozenset({"day", "gtc", "opg", "cls", "ioc", "fok"})
ORDER_TYPES = frozenset({"market", "limit"})
UNSUPPORTED_TYPES = frozenset({"stop", "stop_limit", "trailing_stop"})
EPS = 1e-9

_BAD_JSON = object()  # body that is not JSON


@dataclass
class Fault:
    """One injected transport fault, consumed by the first request whose "METHOD /path" starts with ``match``."""

    match: str = ""  # prefix of "METHOD /path", e.g. "POST /v2/orders" ("" matches any request)
    status: int | None = None  # answer this status with an error JSON body instead of serving the request
    retry_after: str | None = None  # Retry-After header value for that answer
    delay: float = 0.0  # sleep this long before handling (served afterwards unless status is set)
    drop_after_accept: bool = False  # handle the request, then close the socket without any response
    message: str | None = None  # error message for ``status`` (default: the HTTP reason phrase)
    garble: bool = False  # handle the request, then answer 200 with a body that is not JSON (a proxy's page)


class _ApiError(Exception):
    def __init__(self, status: int, code: int, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _invalid(message: str) -> _ApiError:
    return _ApiError(422, 40010001, message)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: str, field: str) -> datetime:
    try:
        dt = datetime.fromisoformat(value.strip().replace(" ", "+"))  # a raw "+" in a query string decodes to " "
    except ValueError:
        raise _invalid(f"invalid {field}: {value!r}") from None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt


def _dec(x: float | None) -> str | None:
    """A number the way Alpaca writes it: a string, no exponent, no trailing zeros ("10", "0.5", "150.25")."""
    if x is None:
        return None
    s = format(Decimal(repr(round(float(x), 9))).normalize(), "f")
    return "0" if s in ("-0", "0.0") else s


def _f(s: str | float | None) -> float:
    return 0.0 if s is None else float(s)


def _number(value, field: str, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _invalid(f"invalid {field}: {value!r}")
    try:
        x = float(value)
    except ValueError:
        raise _invalid(f"invalid {field}: {value!r}") from None
    if not math.isfinite(x) or (positive and x <= 0):
        raise _invalid(f"{field} must be > 0" if math.isfinite(x) else f"invalid {field}: {value!r}")
    return x


def _check_price(price: float, field: str) -> None:
    decimals = 2 if price >= 1 else 4
    if abs(round(price, decimals) - price) > EPS:
        raise _invalid(f"invalid {field} {_dec(price)}. sub-penny increment does not fulfill minimum pricing criteria")


def _next_at(now: datetime, hour: int, minute: int) -> datetime:
    """The next weekday hour:minute UTC strictly after now (a rough US session clock: no holidays, no DST)."""
    day = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    while day <= now or day.weekday() >= 5:
        day += timedelta(days=1)
    return day


class AlpacaTradingServer:
    """In-memory Alpaca Trading API v2 on 127.0.0.1:<ephemeral>. See the module docstring."""

    def __init__(self, key: str = "test-key", secret: str = "test-secret", cash: float = 100_000.0):
        self.key, self.secret = key, secret
        self.cash = float(cash)
        self.url: str | None = None  # "http://127.0.0.1:<port>" once started
        self.requests: list[dict] = []
        self.faults: list[Fault] = []
        self.reject: dict[str, str] = {}
        self.tradable: set[str] | None = None
        self.clock_open = False
        now = _now()
        self.next_open: datetime = _next_at(now, 13, 30)
        self.next_close: datetime = _next_at(now, 20, 0)
        self.account_overrides: dict = {}  # merged into GET /v2/account (e.g. {"trading_blocked": True})
        self.errors: list[BaseException] = []  # unexpected exceptions inside the server (answered as 500)
        self.account_id = str(uuid.uuid4())
        self._start_cash = self.cash
        self._created_at = now
        self._lock = threading.RLock()
        self._orders: dict[str, dict] = {}  # id -> wire dict, in submission order
        self._coids: dict[str, list[str]] = {}  # client_order_id -> ids
        self._created: dict[str, datetime] = {}
        self._positions: dict[str, tuple[float, float]] = {}  # symbol -> (signed qty, avg entry price)
        self._marks: dict[str, float] = {}  # symbol -> last price (last fill / set_position / set_price)
        self._conns: set[socket.socket] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> AlpacaTradingServer:
        if self._httpd is None:
            handler = type("Handler", (_Handler,), {"app": self})
            self._httpd = _HTTPServer(("127.0.0.1", 0), handler)
            self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="alpaca-trading-server", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:  # kept-alive connections would otherwise still be served by their handler threads
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> AlpacaTradingServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ test-side API (no HTTP)

    def order(self, client_order_id: str) -> dict | None:
        """The current server-side order with this client_order_id (a copy), or None."""
        with self._lock:
            ids = self._coids.get(client_order_id)
            return dict(self._orders[ids[-1]]) if ids else None

    def orders_by_coid(self) -> dict[str, list[dict]]:
        with self._lock:
            return {coid: [dict(self._orders[i]) for i in ids] for coid, ids in self._coids.items()}

    def count(self, method: str, path_prefix: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests
                       if r["method"] == method.upper() and r["path"].startswith(path_prefix))

    def fill(self, client_order_id: str, qty: float | None = None, price: float = 100.0) -> dict:
        """Fill ``qty`` (default: all that remains) of an open order at ``price``; updates the order, the position
        and cash. Returns the order dict. KeyError for an unknown order, ValueError if not open / overfilled."""
        price = float(price)
        with self._lock:
            ids = self._coids.get(client_order_id)
            if not ids:
                raise KeyError(f"no order with client_order_id {client_order_id!r}")
            o = self._orders[ids[-1]]
            if o["status"] not in OPEN_STATUSES:
                raise ValueError(f"order {client_order_id!r} is {o['status']}, not open")
            remaining = self._remaining(o, price)
            q = remaining if qty is None else float(qty)
            if q <= EPS or q > remaining + EPS:
                raise ValueError(f"cannot fill {q} of order {client_order_id!r}: {remaining} remaining")
            filled, avg = _f(o["filled_qty"]), _f(o["filled_avg_price"])
            new_filled = filled + q
            ts = _iso(_now())
            o["filled_avg_price"] = _dec((filled * avg + q * price) / new_filled)
            o["filled_qty"] = _dec(new_filled)
            o["status"] = "filled" if self._remaining(o, price) <= EPS else "partially_filled"
            o["filled_at"] = o["updated_at"] = ts
            self._trade(o["symbol"], q if o["side"] == "buy" else -q, price)
            return dict(o)

    def fill_all(self, prices: dict[str, float]) -> None:
        """Fill every open order fully at ``prices[symbol]``; orders for symbols not in ``prices`` stay open."""
        with self._lock:
            for o in list(self._orders.values()):
                if o["status"] in OPEN_STATUSES and o["symbol"] in prices:
                    self.fill(o["client_order_id"], None, prices[o["symbol"]])

    def expire_open(self) -> None:
        """End of day: every open order that is not GTC expires (partially filled ones keep their fills)."""
        with self._lock:
            ts = _iso(_now())
            for o in self._orders.values():
                if o["status"] in OPEN_STATUSES and o["time_in_force"] != "gtc":
                    o.update(status="expired", expired_at=ts, updated_at=ts)

    def set_position(self, symbol: str, qty: float, avg_price: float = 100.0) -> None:
        """Make the position ``qty`` (signed; 0 removes it) at ``avg_price``, as an outside trade would. Cash is
        left alone (set ``server.cash`` if a test needs it)."""
        symbol = symbol.upper()
        with self._lock:
            if abs(qty) <= EPS:
                self._positions.pop(symbol, None)
            else:
                self._positions[symbol] = (float(qty), float(avg_price))
            self._marks[symbol] = float(avg_price)

    def set_price(self, symbol: str, price: float) -> None:
        """Mark ``symbol`` at ``price`` (current_price/market_value of positions, account equity)."""
        with self._lock:
            self._marks[symbol.upper()] = float(price)

    # ------------------------------------------------------------------ state helpers (lock held)

    def _remaining(self, o: dict, price: float) -> float:
        filled = _f(o["filled_qty"])
        if o["qty"] is not None:
            return max(0.0, round(_f(o["qty"]) - filled, 9))
        spent = filled * _f(o["filled_avg_price"])
        return max(0.0, round((_f(o["notional"]) - spent) / price, 9))

    def _trade(self, symbol: str, signed: float, price: float) -> None:
        old_q, old_avg = self._positions.get(symbol, (0.0, 0.0))
        new_q = old_q + signed
        if abs(new_q) <= EPS:
            self._positions.pop(symbol, None)
        else:
            if abs(old_q) <= EPS or (old_q > 0) == (signed > 0):
                avg = (old_q * old_avg + signed * price) / new_q  # adding to the position
            elif (old_q > 0) == (new_q > 0):
                avg = old_avg  # reducing it
            else:
                avg = price  # flipped through zero
            self._positions[symbol] = (new_q, avg)
        self.cash -= signed * price
        self._marks[symbol] = price

    @staticmethod
    def _asset_id(symbol: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"alpaca-test-asset/{symbol}"))

    def _position_json(self, symbol: str) -> dict:
        q, avg = self._positions[symbol]
        cur = self._marks.get(symbol, avg)
        mv, cb = q * cur, q * avg
        upl = mv - cb
        plpc = upl / abs(cb) if cb else 0.0
        # shares tied up in open orders on the closing side
        held = sum(self._remaining(o, cur) for o in self._orders.values()
                   if o["symbol"] == symbol and o["status"] in OPEN_STATUSES and (o["side"] == "sell") == (q > 0))
        available = max(0.0, abs(q) - held) * (1 if q > 0 else -1)
        return {
            "asset_id": self._asset_id(symbol), "symbol": symbol, "exchange": "NASDAQ", "asset_class": "us_equity",
            "asset_marginable": True, "qty": _dec(q), "avg_entry_price": _dec(avg),
            "side": "long" if q > 0 else "short",
            "market_value": _dec(mv), "cost_basis": _dec(cb), "unrealized_pl": _dec(upl), "unrealized_plpc": _dec(plpc),
            "unrealized_intraday_pl": _dec(upl), "unrealized_intraday_plpc": _dec(plpc), "current_price": _dec(cur),
            "lastday_price": _dec(cur), "change_today": "0", "qty_available": _dec(available),
        }

    def _account_json(self) -> dict:
        long_mv = sum(q * self._marks.get(s, a) for s, (q, a) in self._positions.items() if q > 0)
        short_mv = sum(q * self._marks.get(s, a) for s, (q, a) in self._positions.items() if q < 0)
        equity = self.cash + long_mv + short_mv
        cash, bp = _dec(self.cash), _dec(max(self.cash, 0.0))
        acct = {
            "id": self.account_id, "admin_configurations": {}, "user_configurations": None,
            "account_number": "PA3TESTSRV01", "status": "ACTIVE", "crypto_status": "ACTIVE", "currency": "USD",
            "buying_power": bp, "regt_buying_power": bp, "daytrading_buying_power": "0", "effective_buying_power": bp,
            "non_marginable_buying_power": bp, "options_buying_power": bp, "bod_dtbp": "0", "cash": cash,
            "accrued_fees": "0", "pending_transfer_in": "0", "pending_transfer_out": "0",
            "portfolio_value": _dec(equity), "pattern_day_trader": False, "trading_blocked": False,
            "transfers_blocked": False, "account_blocked": False, "created_at": _iso(self._created_at),
            "trade_suspended_by_user": False, "multiplier": "1", "shorting_enabled": False, "equity": _dec(equity),
            "last_equity": _dec(self._start_cash), "long_market_value": _dec(long_mv),
            "short_market_value": _dec(short_mv), "position_market_value": _dec(long_mv - short_mv),
            "initial_margin": "0", "maintenance_margin": "0", "last_maintenance_margin": "0", "sma": "0",
            "daytrade_count": 0, "balance_asof": _now().date().isoformat(), "crypto_tier": 1,
            "options_approved_level": 0, "options_trading_level": 0, "intraday_adjustments": "0",
            "pending_reg_taf_fees": "0",
        }
        acct.update(self.account_overrides)
        return acct

    def _new_order(self, *, symbol, side, otype, tif, qty, notional, limit_price, extended_hours, coid,
                   position_intent=None, replaces=None) -> dict:
        now = _now()
        ts = _iso(now)
        oid = str(uuid.uuid4())
        if position_intent is None:
            held = self._positions.get(symbol, (0.0, 0.0))[0]
            position_intent = (("buy_to_close" if held < 0 else "buy_to_open") if side == "buy"
                               else ("sell_to_close" if held > 0 else "sell_to_open"))
        o = {
            "id": oid, "client_order_id": coid, "created_at": ts, "updated_at": ts, "submitted_at": ts,
            "filled_at": None, "expired_at": None,
            "expires_at": _iso(now + timedelta(days=90) if tif == "gtc" else self.next_close),
            "canceled_at": None, "failed_at": None, "replaced_at": None, "replaced_by": None, "replaces": replaces,
            "asset_id": self._asset_id(symbol), "symbol": symbol, "asset_class": "us_equity",
            "notional": _dec(notional), "qty": _dec(qty), "filled_qty": "0", "filled_avg_price": None,
            "order_class": "simple", "order_type": otype, "type": otype, "side": side,
            "position_intent": position_intent, "time_in_force": tif, "limit_price": _dec(limit_price),
            "stop_price": None, "status": "accepted", "extended_hours": bool(extended_hours), "legs": None,
            "trail_percent": None, "trail_price": None, "hwm": None, "subtag": None, "source": None,
        }
        self._orders[oid] = o
        self._coids.setdefault(coid, []).append(oid)
        self._created[oid] = now
        return o

    def _order_or_404(self, oid: str) -> dict:
        o = self._orders.get(oid)
        if o is None:
            raise _ApiError(404, 40410000, f"order not found for {oid}")
        return o

    def _check_coid(self, coid) -> str:
        if coid is None or coid == "":
            return str(uuid.uuid4())
        if not isinstance(coid, str):
            raise _invalid(f"invalid client_order_id: {coid!r}")
        if len(coid) > 128:
            raise _invalid("client_order_id must be no more than 128 characters")
        if coid in self._coids:
            raise _invalid("client_order_id must be unique")
        return coid

    @staticmethod
    def _check_fractional(qty: float | None, notional: float | None, otype: str, tif: str) -> None:
        if notional is not None or (qty is not None and abs(qty - round(qty)) > EPS):
            if tif != "day":
                raise _invalid("fractional orders must be DAY orders")
            if otype != "market":
                raise _invalid("fractional orders must be market orders")

    # ------------------------------------------------------------------ endpoints

    def _serve(self, method: str, path: str, query: dict, body, headers) -> tuple[int, object]:
        if headers.get("APCA-API-KEY-ID") != self.key or headers.get("APCA-API-SECRET-KEY") != self.secret:
            raise _ApiError(401, 40110000, "request is not authorized")
        parts = path.strip("/").split("/")
        if not parts or parts[0] != "v2":
            raise _ApiError(404, 40410000, "endpoint not found")
        route = (method, *parts[1:])
        with self._lock:
            match route:
                case ("GET", "account"):
                    return 200, self._account_json()
                case ("GET", "clock"):
                    return 200, {"timestamp": _iso(_now()), "is_open": bool(self.clock_open),
                                 "next_open": _iso(self.next_open), "next_close": _iso(self.next_close)}
                case ("POST", "orders"):
                    return 200, dict(self._post_order(body))
                case ("GET", "orders"):
                    return 200, self._list_orders(query)
                case ("DELETE", "orders"):
                    return 207, self._cancel_all()
                case ("GET", "orders:by_client_order_id"):
                    coid = query.get("client_order_id")
                    if not coid:
                        raise _invalid("client_order_id is required")
                    ids = self._coids.get(coid)
                    if not ids:
                        raise _ApiError(404, 40410000, f"order not found for {coid}")
                    return 200, dict(self._orders[ids[-1]])
                case ("GET", "orders", oid):
                    return 200, dict(self._order_or_404(oid))
                case ("PATCH", "orders", oid):
                    return 200, dict(self._replace(oid, body))
                case ("DELETE", "orders", oid):
                    o = self._order_or_404(oid)
                    if o["status"] not in OPEN_STATUSES:
                        raise _ApiError(422, 42210000, "order is not cancelable")
                    ts = _iso(_now())
                    o.update(status="canceled", canceled_at=ts, updated_at=ts)
                    return 204, None
                case ("GET", "positions"):
                    return 200, [self._position_json(s) for s in sorted(self._positions)]
                case ("GET", "positions", sym):
                    sym = next((s for s in self._positions if sym.upper() == s or sym == self._asset_id(s)), None)
                    if sym is None:
                        raise _ApiError(404, 40410000, "position does not exist")
                    return 200, self._position_json(sym)
                case ("GET", "assets", sym):
                    return 200, self._asset_json(sym)
        raise _ApiError(404, 40410000, "endpoint not found")

    def _asset_json(self, sym: str) -> dict:
        sym = sym.upper()
        if self.tradable is not None and sym not in {s.upper() for s in self.tradable}:
            raise _ApiError(404, 40410000, "asset not found")
        return {"id": self._asset_id(sym), "class": "us_equity", "exchange": "NASDAQ", "symbol": sym, "name": sym,
                "status": "active", "tradable": True, "marginable": True, "shortable": True, "easy_to_borrow": True,
                "fractionable": True, "maintenance_margin_requirement": 30, "attributes": []}

    def _post_order(self, body) -> dict:
        if body is _BAD_JSON or not isinstance(body, dict):
            raise _ApiError(400, 40010000, "request body format is invalid")
        symbol = body.get("symbol")
        if not isinstance(symbol, str) or not symbol.strip():
            raise _invalid("symbol is required")
        symbol = symbol.strip().upper()
        side = body.get("side")
        if side is None:
            raise _invalid("side is required")
        if side not in ("buy", "sell"):
            raise _invalid(f"invalid side: {side!r}")
        otype = body.get("type", body.get("order_type"))
        if otype is None:
            raise _invalid("type is required")
        if otype in UNSUPPORTED_TYPES:
            raise _invalid(f"order type {otype} is not supported by the test server")
        if otype not in ORDER_TYPES:
            raise _invalid(f"invalid type: {otype!r}")
        tif = body.get("time_in_force")
        if tif is None:
            raise _invalid("time_in_force is required")
        if tif not in TIME_IN_FORCE:
            raise _invalid(f"invalid time_in_force: {tif!r}")
        order_class = body.get("order_class")
        if order_class not in (None, "", "simple"):
            raise _invalid(f"order_class {order_class} is not supported by the test server")
        qty = None if body.get("qty") is None else _number(body["qty"], "qty")
        notional = None if body.get("notional") is None else _number(body["notional"], "notional")
        if qty is None and notional is None:
            raise _invalid("qty or notional is required")
        if qty is not None and notional is not None:
            raise _invalid("only one of qty or notional can be specified")
        limit_price = None if body.get("limit_price") is None else _number(body["limit_price"], "limit_price")
        if otype == "limit":
            if limit_price is None:
                raise _invalid("limit_price is required for limit orders")
            _check_price(limit_price, "limit_price")
        elif limit_price is not None:
            raise _invalid("limit_price is not allowed for market orders")
        if body.get("stop_price") is not None:
            raise _invalid("stop_price is not allowed for market or limit orders")
        extended_hours = body.get("extended_hours", False)
        if not isinstance(extended_hours, bool):
            raise _invalid(f"invalid extended_hours: {extended_hours!r}")
        if extended_hours and not (otype == "limit" and tif == "day"):
            raise _invalid("extended hours order must be DAY limit orders")
        self._check_fractional(qty, notional, otype, tif)
        coid = self._check_coid(body.get("client_order_id"))
        if self.tradable is not None and symbol not in {s.upper() for s in self.tradable}:
            raise _ApiError(422, 42210000, f'asset "{symbol}" not found')
        reject = self.reject.get(symbol, self.reject.get(body["symbol"]))
        if reject is not None:
            raise _ApiError(403, 40310000, reject)
        return self._new_order(symbol=symbol, side=side, otype=otype, tif=tif, qty=qty, notional=notional,
                               limit_price=limit_price, extended_hours=extended_hours, coid=coid,
                               position_intent=body.get("position_intent"))

    def _list_orders(self, q: dict) -> list[dict]:
        status = q.get("status", "open").lower()
        if status not in ("open", "closed", "all"):
            raise _invalid(f"invalid status: {status!r}")
        try:
            limit = int(q.get("limit", 50))
        except ValueError:
            raise _invalid(f"invalid limit: {q['limit']!r}") from None
        if limit < 1:
            raise _invalid("limit must be > 0")
        limit = min(limit, 500)
        direction = q.get("direction", "desc").lower()
        if direction not in ("asc", "desc"):
            raise _invalid(f"invalid direction: {direction!r}")
        after = _parse_time(q["after"], "after") if q.get("after") else None
        until = _parse_time(q["until"], "until") if q.get("until") else None
        symbols = {s.strip().upper() for s in q["symbols"].split(",") if s.strip()} if q.get("symbols") else None
        side = q.get("side")
        out = []
        for oid, o in self._orders.items():
            is_open = o["status"] in OPEN_STATUSES
            if (status == "open" and not is_open) or (status == "closed" and is_open):
                continue
            t = self._created[oid]
            if (after and t <= after) or (until and t >= until):
                continue
            if (symbols is not None and o["symbol"] not in symbols) or (side and o["side"] != side):
                continue
            out.append(dict(o))
        if direction == "desc":
            out.reverse()
        return out[:limit]

    def _cancel_all(self) -> list[dict]:
        ts = _iso(_now())
        out = []
        for oid, o in self._orders.items():
            if o["status"] in OPEN_STATUSES:
                o.update(status="canceled", canceled_at=ts, updated_at=ts)
                out.append({"id": oid, "status": 200, "body": dict(o)})
        return out

    def _replace(self, oid: str, body) -> dict:
        old = self._order_or_404(oid)
        if body is _BAD_JSON or not isinstance(body, dict):
            raise _ApiError(400, 40010000, "request body format is invalid")
        if old["status"] not in OPEN_STATUSES:
            raise _ApiError(422, 42210000, "order is not replaceable")
        for field in ("stop_price", "trail"):
            if body.get(field) is not None:
                raise _invalid(f"{field} is not applicable to {old['type']} orders")
        tif = body.get("time_in_force") or old["time_in_force"]
        if tif not in TIME_IN_FORCE:
            raise _invalid(f"invalid time_in_force: {tif!r}")
        limit_price = _f(old["limit_price"]) if old["limit_price"] is not None else None
        if body.get("limit_price") is not None:
            if old["type"] != "limit":
                raise _invalid(f"limit_price is not applicable to {old['type']} orders")
            limit_price = _number(body["limit_price"], "limit_price")
            _check_price(limit_price, "limit_price")
        qty = notional = None
        if body.get("qty") is not None:
            qty = _number(body["qty"], "qty")
        elif old["qty"] is not None:
            qty = round(_f(old["qty"]) - _f(old["filled_qty"]), 9)
        else:
            notional = round(_f(old["notional"]) - _f(old["filled_qty"]) * _f(old["filled_avg_price"]), 9)
        self._check_fractional(qty, notional, old["type"], tif)
        coid = self._check_coid(body.get("client_order_id"))
        new = self._new_order(symbol=old["symbol"], side=old["side"], otype=old["type"], tif=tif, qty=qty,
                              notional=notional, limit_price=limit_price, extended_hours=old["extended_hours"],
                              coid=coid, position_intent=old["position_intent"], replaces=oid)
        ts = new["created_at"]
        old.update(status="replaced", replaced_at=ts, replaced_by=new["id"], updated_at=ts)
        return new

    # ------------------------------------------------------------------ HTTP plumbing

    def _take_fault(self, rec: dict) -> Fault | None:
        with self._lock:
            self.requests.append(rec)
            key = f"{rec['method']} {rec['path']}"
            for i, f in enumerate(self.faults):
                if key.startswith(f.match):
                    return self.faults.pop(i)
        return None

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):  # a client hanging up is not a server error
        pass


class _Handler(BaseHTTPRequestHandler):
    app: AlpacaTradingServer
    protocol_version = "HTTP/1.1"  # keep-alive, as alpaca-py's requests.Session expects
    server_version = "AlpacaTradingTestServer/1.0"
    timeout = 60  # idle kept-alive connections are closed after this
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall per answer

    def log_message(self, *args):  # keep test output quiet
        pass

    def setup(self):
        super().setup()
        self.app._track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.app._track(self.connection, False)

    def handle(self):
        try:
            super().handle()
        except OSError:  # reset/broken pipe/timeout while reading or writing: the client is gone
            self.close_connection = True

    def _run(self):
        method = self.command
        url = urlparse(self.path)
        path = unquote(url.path)
        path = path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        body = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = _BAD_JSON
        rec = {"method": method, "path": path, "query": query,
               "body": raw.decode("utf-8", "replace") if body is _BAD_JSON else body,
               "t": time.monotonic(), "key": self.headers.get("APCA-API-KEY-ID"), "status": None}
        app = self.app
        fault = app._take_fault(rec)
        extra = []
        if fault is not None and fault.delay > 0:
            time.sleep(fault.delay)
        if fault is not None and fault.status is not None:
            status = fault.status
            try:
                phrase = HTTPStatus(status).phrase.lower()
            except ValueError:
                phrase = "error"
            payload = {"code": status * 100000 + 10000, "message": fault.message or phrase}
            if fault.retry_after is not None:
                extra.append(("Retry-After", fault.retry_after))
        else:
            try:
                status, payload = app._serve(method, path, query, body, self.headers)
            except _ApiError as e:
                status, payload = e.status, {"code": e.code, "message": e.message}
            except Exception as e:  # a bug in this server: answer 500 and keep it for the test to see
                app.errors.append(e)
                status, payload = 500, {"code": 50010000, "message": f"internal server error: {e!r}"}
        if fault is not None and fault.drop_after_accept:
            rec["status"] = "dropped"
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        rec["status"] = status
        if fault is not None and fault.garble:
            rec["status"] = "garbled"
            self._send_raw(200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
            return
        self._send(status, payload, extra)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _run

    def _send_raw(self, status: int, raw: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _send(self, status: int, payload, extra=()) -> None:
        raw = b"" if payload is None else json.dumps(payload).encode()
        try:
            self.send_response(status)
            if payload is not None:
                self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(raw)))
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)
            self.wfile.flush()
        except OSError:  # the client timed out and went away
            self.close_connection = True
