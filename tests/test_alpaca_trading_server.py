"""The loopback Alpaca trading server speaks the wire format the real alpaca-py TradingClient parses."""

import functools
import threading
import time
from datetime import datetime, timedelta, timezone
from uuid import UUID, uuid4

import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, OrderStatus, PositionSide, QueryOrderStatus, TimeInForce
from alpaca.trading.models import Clock, Order, Position, TradeAccount
from alpaca.trading.requests import (
    CancelOrderResponse,
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
)

from tests.alpaca_trading_server import AlpacaTradingServer, Fault


@pytest.fixture
def server():
    with AlpacaTradingServer() as srv:
        yield srv
    assert srv.errors == []  # no exception escaped the server's own code


def make_client(srv, timeout=5.0, key="test-key", secret="test-secret"):
    c = TradingClient(key, secret, paper=True, url_override=srv.url)
    c._session.request = functools.partial(c._session.request, timeout=timeout)  # every wait is bounded
    return c


@pytest.fixture
def client(server):
    c = make_client(server)
    yield c
    c._session.close()


def market(coid, symbol="AAPL", qty=10, side=OrderSide.BUY, tif=TimeInForce.DAY, **kw):
    return MarketOrderRequest(symbol=symbol, qty=qty, side=side, time_in_force=tif, client_order_id=coid, **kw)


def limit(coid, price, symbol="AAPL", qty=10, side=OrderSide.BUY, tif=TimeInForce.DAY):
    return LimitOrderRequest(symbol=symbol, qty=qty, side=side, time_in_force=tif, limit_price=price,
                             client_order_id=coid)


def api_error(fn, *args):
    with pytest.raises(APIError) as e:
        fn(*args)
    return e.value


def test_submit_market_and_limit_orders(server, client):
    m = client.submit_order(market("m-1"))
    assert isinstance(m, Order) and isinstance(m.id, UUID)
    assert (m.client_order_id, m.symbol, m.status, m.qty, m.filled_qty) == ("m-1", "AAPL", OrderStatus.ACCEPTED,
                                                                            "10", "0")
    assert m.asset_class == "us_equity" and m.filled_avg_price is None and m.created_at.tzinfo is not None
    sent = server.requests[-1]
    assert (sent["method"], sent["path"], sent["key"]) == ("POST", "/v2/orders", "test-key")
    assert sent["body"]["client_order_id"] == "m-1" and sent["body"]["type"] == "market"

    lim = client.submit_order(limit("l-1", 150.25, side=OrderSide.SELL, tif=TimeInForce.GTC))
    assert (lim.type, lim.limit_price, lim.side, lim.time_in_force) == ("limit", "150.25", OrderSide.SELL, "gtc")
    assert client.get_order_by_client_id("l-1").id == lim.id
    assert client.get_order_by_id(lim.id).client_order_id == "l-1"
    assert server.order("l-1")["id"] == str(lim.id)

    auto = client.submit_order(MarketOrderRequest(symbol="msft", notional=500, side=OrderSide.BUY,
                                                  time_in_force=TimeInForce.DAY))
    assert (auto.symbol, auto.notional, auto.qty) == ("MSFT", "500", None)
    UUID(auto.client_order_id)  # generated when the client sent none


def test_validation_errors(server, client):
    client.submit_order(market("dup-1"))
    e = api_error(client.submit_order, market("dup-1", qty=3))
    assert (e.status_code, e.code, e.message) == (422, 40010001, "client_order_id must be unique")
    assert len(server.orders_by_coid()["dup-1"]) == 1

    # alpaca-py's request models refuse these before sending, so post raw bodies through the client's session
    for body, field in [({"qty": 1, "type": "limit", "time_in_force": "day"}, "limit_price"),
                        ({"qty": 1, "type": "market"}, "time_in_force"),
                        ({"type": "market", "time_in_force": "day"}, "qty"),
                        ({"qty": "x", "type": "market", "time_in_force": "day"}, "qty"),
                        ({"qty": 1, "type": "market", "time_in_force": "week"}, "time_in_force")]:
        e = api_error(client.post, "/orders", {"symbol": "AAPL", "side": "buy", **body})
        assert e.status_code == 422 and field in e.message, (body, e.message)
    e = api_error(client.submit_order, market("frac", qty=0.5, tif=TimeInForce.GTC))
    assert (e.status_code, e.message) == (422, "fractional orders must be DAY orders")
    assert client.submit_order(market("frac-day", qty=0.5)).qty == "0.5"
    e = api_error(client.submit_order, limit("subpenny", 150.123))
    assert e.status_code == 422 and "sub-penny" in e.message

    server.tradable = {"AAPL"}
    e = api_error(client.submit_order, market("unknown", symbol="ZZZZ"))
    assert (e.status_code, e.code, e.message) == (422, 42210000, 'asset "ZZZZ" not found')
    server.reject["AAPL"] = "insufficient buying power"
    e = api_error(client.submit_order, market("rej"))
    assert (e.status_code, e.code, e.message) == (403, 40310000, "insufficient buying power")
    assert server.order("rej") is None and server.order("unknown") is None

    e = api_error(make_client(server, secret="wrong").get_account)
    assert (e.status_code, e.code) == (401, 40110000)
    r = requests.get(server.url + "/v2/nope", headers={"APCA-API-KEY-ID": "test-key",
                                                       "APCA-API-SECRET-KEY": "test-secret"}, timeout=5)
    assert r.status_code == 404 and r.json()["code"] == 40410000


def test_partial_then_full_fill_updates_order_position_and_cash(server, client):
    client.submit_order(market("f-1"))
    server.fill("f-1", qty=4, price=100.0)
    o = client.get_order_by_client_id("f-1")
    assert (o.status, o.filled_qty, o.filled_avg_price) == (OrderStatus.PARTIALLY_FILLED, "4", "100")
    server.fill("f-1", price=101.0)
    o = client.get_order_by_client_id("f-1")
    assert (o.status, o.filled_qty, o.filled_avg_price) == (OrderStatus.FILLED, "10", "100.6")
    assert o.filled_at is not None
    with pytest.raises(ValueError):
        server.fill("f-1")

    (p,) = client.get_all_positions()
    assert isinstance(p, Position) and p.side == PositionSide.LONG
    assert (p.symbol, p.qty, p.avg_entry_price, p.cost_basis, p.current_price) == ("AAPL", "10", "100.6", "1006",
                                                                                   "101")
    assert client.get_open_position("AAPL").market_value == "1010"
    acct = client.get_account()
    assert isinstance(acct, TradeAccount) and acct.status == "ACTIVE" and acct.currency == "USD"
    assert float(acct.cash) == pytest.approx(100_000 - 1006)
    assert float(acct.equity) == pytest.approx(100_000 - 1006 + 1010)
    assert float(acct.long_market_value) == pytest.approx(1010)

    client.submit_order(market("f-2", qty=10, side=OrderSide.SELL))
    assert client.get_open_position("AAPL").qty_available == "0"  # held for the open sell
    server.fill("f-2", price=102.0)
    assert client.get_all_positions() == []
    assert float(client.get_account().cash) == pytest.approx(100_000 - 1006 + 1020)
    e = api_error(client.get_open_position, "AAPL")
    assert (e.status_code, e.code, e.message) == (404, 40410000, "position does not exist")

    server.set_position("TSLA", -3, avg_price=200.0)
    p = client.get_open_position("TSLA")
    assert (p.side, p.qty, p.cost_basis) == (PositionSide.SHORT, "-3", "-600")
    server.set_position("TSLA", 0)
    assert client.get_all_positions() == []


def test_cancel_replace_and_list(server, client):
    a = client.submit_order(limit("a", 10.5))
    b = client.submit_order(limit("b", 20, symbol="MSFT"))
    assert client.cancel_order_by_id(a.id) is None
    assert client.get_order_by_id(a.id).status == OrderStatus.CANCELED and server.order("a")["canceled_at"]
    e = api_error(client.cancel_order_by_id, a.id)
    assert (e.status_code, e.code, e.message) == (422, 42210000, "order is not cancelable")
    e = api_error(client.cancel_order_by_id, uuid4())
    assert (e.status_code, e.code) == (404, 40410000)
    e = api_error(client.get_order_by_client_id, "missing")
    assert (e.status_code, e.message) == (404, "order not found for missing")

    new = client.replace_order_by_id(b.id, ReplaceOrderRequest(qty=5, limit_price=19.5, client_order_id="b-2"))
    assert (new.replaces, new.client_order_id, new.qty, new.limit_price) == (b.id, "b-2", "5", "19.5")
    old = client.get_order_by_id(b.id)
    assert (old.status, old.replaced_by) == (OrderStatus.REPLACED, new.id) and old.replaced_at is not None
    e = api_error(client.replace_order_by_id, b.id, ReplaceOrderRequest(qty=4))
    assert (e.status_code, e.message) == (422, "order is not replaceable")
    e = api_error(client.replace_order_by_id, new.id, ReplaceOrderRequest(qty=4, client_order_id="a"))
    assert (e.status_code, e.message) == (422, "client_order_id must be unique")
    auto = client.replace_order_by_id(new.id, ReplaceOrderRequest(limit_price=19))
    assert auto.qty == "5" and UUID(auto.client_order_id)

    assert [o.client_order_id for o in client.get_orders()] == [auto.client_order_id]
    every = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL))
    assert [o.client_order_id for o in every] == [auto.client_order_id, "b-2", "b", "a"]  # newest first
    assert server.requests[-1]["query"] == {"status": "all"}
    asc = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.CLOSED, direction="asc", limit=1))
    assert [o.client_order_id for o in asc] == ["a"]
    msft = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, symbols=["MSFT"]))
    assert {o.symbol for o in msft} == {"MSFT"} and len(msft) == 3
    later = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL,
                                               after=datetime.now(timezone.utc) + timedelta(seconds=5)))
    assert later == []

    client.submit_order(market("c"))
    canceled = client.cancel_orders()
    assert all(isinstance(c, CancelOrderResponse) and c.status == 200 for c in canceled)
    assert {c.body["client_order_id"] for c in canceled} == {auto.client_order_id, "c"}
    assert client.get_orders() == []


def test_fill_all_and_expire(server, client):
    client.submit_order(market("x", symbol="AAPL", qty=2))
    client.submit_order(limit("y", 50, symbol="MSFT", qty=3))
    client.submit_order(limit("z", 50, symbol="MSFT", qty=1, tif=TimeInForce.GTC))
    client.submit_order(market("w", symbol="NVDA", qty=1))
    server.fill_all({"AAPL": 10.0})
    assert server.order("x")["status"] == "filled"
    server.expire_open()
    assert server.order("y")["status"] == "expired" and server.order("y")["expired_at"]
    assert server.order("w")["status"] == "expired" and server.order("z")["status"] == "accepted"
    server.fill_all({"MSFT": 49.0})
    assert server.order("z")["status"] == "filled"
    assert {p.symbol: p.qty for p in client.get_all_positions()} == {"AAPL": "2", "MSFT": "1"}


def test_clock(server, client):
    c = client.get_clock()
    assert isinstance(c, Clock) and c.is_open is False and c.next_open > c.timestamp
    server.clock_open = True
    server.next_close = datetime(2030, 1, 2, 21, 0, tzinfo=timezone.utc)
    c = client.get_clock()
    assert c.is_open is True and c.next_close == server.next_close


def test_fault_status_and_retry_after(server, client):
    server.faults.append(Fault(match="GET /v2/account", status=500))
    e = api_error(client.get_account)
    assert (e.status_code, e.code) == (500, 50010000)
    assert client.get_account().cash == "100000"  # consumed

    client._retry = 0  # alpaca-py otherwise sleeps 3 s and retries a 429 itself
    server.faults.append(Fault(match="POST /v2/orders", status=429, retry_after="0"))
    e = api_error(client.submit_order, market("rl"))
    assert e.status_code == 429 and e.response.headers["Retry-After"] == "0"
    assert server.order("rl") is None  # an error answer means the order was not processed
    assert client.submit_order(market("rl")).client_order_id == "rl"
    assert server.count("POST", "/v2/orders") == 2 and server.count("GET", "/v2/account") == 2


def test_dropped_connection_after_accept(server, client):
    client.get_account()  # the POST then goes over a kept-alive connection: urllib3 must not replay it
    server.faults.append(Fault(match="POST /v2/orders", drop_after_accept=True))
    with pytest.raises(requests.exceptions.ConnectionError):
        client.submit_order(market("drop-1"))
    assert server.order("drop-1")["status"] == "accepted"  # the outcome the client could not see
    assert client.get_order_by_client_id("drop-1").status == OrderStatus.ACCEPTED  # the session reconnects
    e = api_error(client.submit_order, market("drop-1"))  # a blind resubmit is refused, not duplicated
    assert e.status_code == 422 and len(server.orders_by_coid()["drop-1"]) == 1
    assert server.count("POST", "/v2/orders") == 2
    assert [r["status"] for r in server.requests if r["method"] == "POST"] == ["dropped", 422]


def test_delayed_answer_times_out_but_order_is_created(server):
    slow = make_client(server, timeout=0.5)
    server.faults.append(Fault(match="POST /v2/orders", delay=1.5))
    t0 = time.monotonic()
    with pytest.raises(requests.exceptions.Timeout):
        slow.submit_order(market("slow-1"))
    assert time.monotonic() - t0 < 1.4
    deadline = time.monotonic() + 3
    while server.order("slow-1") is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.order("slow-1")["status"] == "accepted"
    assert slow.get_order_by_client_id("slow-1").client_order_id == "slow-1"  # the server survived the dead write


def test_concurrent_clients(server):
    errors = []

    def worker(n):
        c = make_client(server)
        try:
            for i in range(10):
                c.submit_order(market(f"t{n}-{i}", qty=1))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert errors == [] and len(server.orders_by_coid()) == 80
    assert len(make_client(server).get_orders(GetOrdersRequest(limit=500))) == 80
