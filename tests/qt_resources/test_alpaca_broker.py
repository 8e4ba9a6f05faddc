"""The Alpaca broker through the REAL alpaca-py client against our Alpaca-compatible server on 127.0.0.1,
with faults injected: no duplicate and no lost order in any scenario."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timezone

import pandas as pd
import pytest

from qt_resources.alpaca_broker import AlpacaBroker
from qt_resources.audit import AuditLog, verify
from qt_resources.broker import BrokerError, OrderIntent, client_order_id
from qt_resources.calendar import session_closes_utc
from tests.alpaca_trading_server import AlpacaTradingServer, Fault

A = "alpha"


def current_session(now=None) -> str:
    """The latest XNYS session that has closed: its orders may be sent now."""
    now = pd.Timestamp(now or datetime.now(timezone.utc))
    day = now.tz_localize(None).normalize() if now.tzinfo is None else now.tz_convert(None).normalize()
    closes = pd.to_datetime(session_closes_utc(day - pd.Timedelta(days=12), day + pd.Timedelta(days=1)), utc=True)
    return closes[closes <= now].index[-1]


S = current_session()


@pytest.fixture
def server():
    with AlpacaTradingServer() as srv:
        yield srv


def make(server, tmp_path, **kw) -> AlpacaBroker:
    kw = {"db_path": str(tmp_path / "alpaca.sqlite"), "audit_path": str(tmp_path / "audit.jsonl"),
          "api_key": "test-key", "secret_key": "test-secret", "url_override": server.url, "timeout_seconds": 0.5,
          "backoff_seconds": 0.05, "initial_cash": 100_000.0, **kw}
    b = AlpacaBroker(**kw)
    b.open_account(A)
    return b


INTENTS = [OrderIntent("AAPL", "buy", 10, "t", ref_price=100.0), OrderIntent("IBM", "buy", 5, "t", ref_price=50.0)]


def assert_exactly_once(server, coids):
    per = server.orders_by_coid()
    assert {c: len(per.get(c, [])) for c in coids} == dict.fromkeys(coids, 1)  # none lost, none duplicated


def test_orders_reach_alpaca_once_with_the_full_lifecycle(server, tmp_path):
    b = make(server, tmp_path)
    rows = b.place_session_orders(A, S, INTENTS)
    coids = [client_order_id(A, S, s, "buy") for s in ("AAPL", "IBM")]
    assert [r["client_order_id"] for r in rows] == coids and {r["status"] for r in rows} == {"accepted"}
    assert_exactly_once(server, coids)
    assert b.place_session_orders(A, S, INTENTS + [OrderIntent("MSFT", "buy", 1, "t")]) == rows  # idempotent
    assert server.count("POST", "/v2/orders") == 2

    server.fill(coids[0], qty=4, price=101.0)
    fills = b.sync(A)
    assert [(f["qty"], f["price"]) for f in fills] == [(4, pytest.approx(101.0))]
    server.fill(coids[0], qty=6, price=102.0)  # avg 101.6: the second fill's own price is implied from the average
    assert [(f["qty"], f["price"]) for f in b.sync(A)] == [(6, pytest.approx(102.0))]
    server.expire_open()
    b.sync(A)
    assert [s for s, _ in b.events(coids[0])] == ["new", "submitted", "accepted", "partially_filled", "filled"]
    assert [s for s, _ in b.events(coids[1])] == ["new", "submitted", "accepted", "expired"]
    assert all(a <= z for (_, a), (_, z) in zip(b.events(coids[0]), b.events(coids[0])[1:]))  # timestamped, in order
    assert b.positions(A) == {"AAPL": 10}
    assert b.cash(A) == pytest.approx(100_000 - 4 * 101 - 6 * 102)
    assert b.sync(A) == []  # nothing booked twice
    assert verify(tmp_path / "audit.jsonl") == (True, [])


@pytest.mark.parametrize("fault", [
    Fault(match="POST /v2/orders", delay=1.0),  # processed, but the client timed out: unknown outcome
    Fault(match="POST /v2/orders", drop_after_accept=True),  # processed, connection dropped: unknown outcome
    Fault(match="POST /v2/orders", status=500),  # not processed
    Fault(match="POST /v2/orders", status=503),
    Fault(match="POST /v2/orders", status=429, retry_after="0.3"),
], ids=["timeout", "drop-after-accept", "500", "503", "429"])
def test_faults_on_submit_neither_duplicate_nor_lose_an_order(server, tmp_path, fault):
    server.faults.append(fault)
    b = make(server, tmp_path)
    t0 = time.monotonic()
    rows = b.place_session_orders(A, S, INTENTS)
    coids = [r["client_order_id"] for r in rows]
    time.sleep(fault.delay + 0.2)  # let a delayed request finish at the server before counting
    assert_exactly_once(server, coids)
    assert {r["status"] for r in b.place_session_orders(A, S, INTENTS)} == {"accepted"}
    assert_exactly_once(server, coids)
    posts = server.count("POST", "/v2/orders")
    if fault.status == 429:
        assert time.monotonic() - t0 >= 0.3 and posts == 3  # waited Retry-After, then sent again
    elif fault.status:
        assert posts == 3  # looked up (404), then sent again
    elif fault.drop_after_accept:
        assert posts == 2 and server.count("GET", "/v2/orders:by_client_order_id") >= 1  # found, not resent
    else:  # timed out while the broker still held it: the lookup may miss it; then the resend or the late
        # original is refused by the broker as a duplicate client order id, and exactly one order exists
        statuses = [r["status"] for r in server.requests if r["method"] == "POST"]
        assert server.count("GET", "/v2/orders:by_client_order_id") >= 1
        assert posts == 2 or (posts == 3 and statuses.count(422) == 1), statuses
    first = rows[0]["client_order_id"]
    assert [s for s, _ in b.events(first)][:3] == ["new", "submitted", "accepted"]


def test_a_rejection_is_recorded_and_not_retried(server, tmp_path):
    server.reject["IBM"] = "insufficient buying power"
    b = make(server, tmp_path)
    rows = {r["symbol"]: r for r in b.place_session_orders(A, S, INTENTS)}
    assert rows["IBM"]["status"] == "rejected" and "insufficient buying power" in rows["IBM"]["reason"]
    assert rows["AAPL"]["status"] == "accepted"
    assert server.count("POST", "/v2/orders") == 2
    b.place_session_orders(A, S, INTENTS)
    assert server.count("POST", "/v2/orders") == 2


def test_an_outcome_unknown_after_every_attempt_is_kept_and_resolved_next_run(server, tmp_path):
    b = make(server, tmp_path, max_attempts=3)
    server.faults.extend([Fault(match="POST /v2/orders", drop_after_accept=True)]
                         + [Fault(match="GET /v2/orders:by_client_order_id", status=503)] * 2)
    with pytest.raises(BrokerError, match=r"unknown outcome after 3 attempts.*looked up by client order id"):
        b.place_session_orders(A, S, INTENTS[:1])
    coid = client_order_id(A, S, "AAPL", "buy")
    assert b.orders(A).set_index("client_order_id").loc[coid, "status"] == "submitted"
    report = make(server, tmp_path).reconcile(A)  # the next run
    assert report["orders_updated"] == [{"client_order_id": coid, "was": "submitted", "now": "accepted"}]
    assert_exactly_once(server, [coid])


def test_market_hours_no_order_leaves_for_a_stale_session(server, tmp_path):
    b = make(server, tmp_path)
    rows = b.place_session_orders(A, "2012-01-03", INTENTS)
    assert {r["status"] for r in rows} == {"rejected"}
    assert all("market hours" in r["reason"] and "stale" in r["reason"] for r in rows)
    assert server.count("POST", "/v2/orders") == 0


def test_kill_switch_cancels_open_orders_at_the_broker(server, tmp_path):
    b = make(server, tmp_path)
    rows = b.place_session_orders(A, S, INTENTS)
    server.fill(rows[0]["client_order_id"], qty=3, price=100.0)
    ids = b.cancel_open(A, "kill switch test")
    assert sorted(ids) == sorted(r["client_order_id"] for r in rows)
    assert {o["status"] for o in (server.order(c) for c in ids)} == {"canceled"}
    got = b.orders(A).set_index("symbol")
    assert got.loc["AAPL", "status"] == "canceled" and got.loc["AAPL", "filled_qty"] == 3
    assert b.positions(A) == {"AAPL": 3}


def test_replace_changes_an_open_limit_order(server, tmp_path):
    b = make(server, tmp_path, price_collar_pct=0.05)
    rows = {r["symbol"]: r for r in b.place_session_orders(A, S, INTENTS)}
    assert rows["AAPL"]["order_type"] == "limit" and rows["AAPL"]["limit_price"] == 105.0  # marketable limit
    assert server.order(rows["IBM"]["client_order_id"])["limit_price"] in ("52.5", "52.50")
    new = b.replace(A, rows["AAPL"]["client_order_id"], qty=8, limit_price=104.0)
    assert new == rows["AAPL"]["client_order_id"] + "-r1"
    assert server.order(new)["qty"] == "8" and server.order(rows["AAPL"]["client_order_id"])["status"] == "replaced"
    got = b.orders(A).set_index("client_order_id")
    assert got.loc[new, "status"] == "accepted" and got.loc[rows["AAPL"]["client_order_id"], "status"] == "canceled"


def test_reconciliation_takes_the_brokers_truth_and_reports_it(server, tmp_path):
    b = make(server, tmp_path)
    rows = {r["symbol"]: r for r in b.place_session_orders(A, S, INTENTS)}
    server.fill(rows["AAPL"]["client_order_id"], price=100.0)  # filled while we were away
    server.set_position("MSFT", 7, 30.0)  # a trade made outside QTOS
    from alpaca.trading.enums import OrderSide, TimeInForce
    from alpaca.trading.requests import MarketOrderRequest

    stray = client_order_id(A, S, "NVDA", "buy")  # ours by its id, unknown to this ledger (e.g. a lost database)
    b.client.submit_order(MarketOrderRequest(symbol="NVDA", qty=2, side=OrderSide.BUY,
                                             time_in_force=TimeInForce.DAY, client_order_id=stray))
    report = b.reconcile(A)
    assert {"client_order_id": rows["AAPL"]["client_order_id"], "was": "accepted", "now": "filled"} \
        in report["orders_updated"]
    assert report["orders_adopted"] == [stray]
    # open orders at the broker (IBM, NVDA): a fill could land between two reads, so reported, not booked
    assert [(d["symbol"], d["ledger"], d["broker"], d["resolved"]) for d in report["position_differences"]] == \
        [("MSFT", 0.0, 7.0, False)]
    assert b.positions(A) == {"AAPL": 10} and b.cash(A) == pytest.approx(100_000 - 10 * 100.0)
    assert b.orders(A).set_index("client_order_id").loc[stray, "status"] == "accepted"
    server.expire_open()
    report = b.reconcile(A)
    assert sorted(u["now"] for u in report["orders_updated"]) == ["expired", "expired"]
    assert [(d["symbol"], d["resolved"], d["price"]) for d in report["position_differences"]] == [("MSFT", True, 30.0)]
    assert b.positions(A) == {"AAPL": 10, "MSFT": 7}
    assert b.cash(A) == pytest.approx(100_000 - 10 * 100.0 - 7 * 30.0)  # the outside trade moves cash too
    again = b.reconcile(A)
    assert again == {"orders_updated": [], "orders_adopted": [], "orders_unresolved": [],
                     "position_differences": [], "orders_listed": again["orders_listed"]}


def test_positions_of_several_agents_are_reported_not_attributed(server, tmp_path):
    b = make(server, tmp_path)
    b.open_account("beta")
    server.set_position("MSFT", 7, 30.0)
    [d] = b.reconcile(A)["position_differences"]
    assert (d["symbol"], d["resolved"]) == ("MSFT", False) and b.positions(A) == {} and b.positions("beta") == {}


def test_an_order_closed_locally_but_alive_at_the_broker_is_reopened_and_booked(server, tmp_path):
    """A POST hangs past the timeout; the kill switch runs while it is still in flight (the lookup finds
    nothing), so the order stays unresolved instead of being closed; it lands and fills; the reconciliation
    books the fill and the next cancel reaches what is left."""
    server.faults.append(Fault(match="POST /v2/orders", delay=1.0))
    b = make(server, tmp_path, max_attempts=1)
    with pytest.raises(BrokerError, match="unknown outcome after 1 attempts"):
        b.place_session_orders(A, S, INTENTS[:1])
    coid = client_order_id(A, S, "AAPL", "buy")
    assert b.cancel_open(A, "kill switch") == []  # in flight: neither canceled locally nor resent
    assert b.orders(A).iloc[0]["status"] == "submitted"
    deadline = time.monotonic() + 5
    while server.order(coid) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    server.fill(coid, qty=4, price=100.0)
    report = b.reconcile(A)
    assert {"client_order_id": coid, "was": "submitted", "now": "partially_filled"} in report["orders_updated"]
    assert b.positions(A) == {"AAPL": 4} and b.cash(A) == pytest.approx(100_000 - 400.0)
    assert b.cancel_open(A, "kill switch") == [coid] and server.order(coid)["status"] == "canceled"
    assert_exactly_once(server, [coid])


def test_the_kill_switch_retries_a_failed_cancel_and_reaches_every_order(server, tmp_path):
    b = make(server, tmp_path)
    rows = b.place_session_orders(A, S, INTENTS)
    server.faults.extend([Fault(match="DELETE /v2/orders/", status=503), Fault(match="DELETE /v2/orders/", status=429,
                                                                              retry_after="0")])
    assert sorted(b.cancel_open(A, "kill")) == sorted(r["client_order_id"] for r in rows)
    assert {server.order(r["client_order_id"])["status"] for r in rows} == {"canceled"}


def test_an_interrupted_replace_is_never_sent_as_a_new_order(server, tmp_path):
    b = make(server, tmp_path, price_collar_pct=0.05)
    rows = b.place_session_orders(A, S, INTENTS[:1])
    coid = rows[0]["client_order_id"]
    server.faults.append(Fault(match="PATCH /v2/orders/", status=503))
    with pytest.raises(BrokerError, match=f"replace {coid}"):
        b.replace(A, coid, qty=8)
    assert b.orders(A).set_index("client_order_id").loc[f"{coid}-r1", "status"] == "submitted"
    b.reconcile(A)
    b.place_session_orders(A, S, [])
    got = b.orders(A).set_index("client_order_id")
    assert got.loc[f"{coid}-r1", "status"] == "canceled" and got.loc[coid, "status"] == "accepted"
    assert server.count("POST", "/v2/orders") == 1 and list(server.orders_by_coid()) == [coid]


def test_orders_before_the_close_are_refused_without_recording_the_session(server, tmp_path):
    from qt_resources.calendar import sessions

    nxt = sessions(pd.Timestamp(S) + pd.Timedelta(days=1), pd.Timestamp(S) + pd.Timedelta(days=10))[0]
    b = make(server, tmp_path)
    with pytest.raises(BrokerError, match="has not closed yet"):
        b.place_session_orders(A, nxt, INTENTS)
    assert not b.session_done(A, nxt) and b.orders(A).empty and server.count("POST", "/v2/orders") == 0


def test_errors_are_classified_conservatively():
    import requests
    from alpaca.common.exceptions import APIError

    from qt_resources.alpaca_broker import _outcome

    class Resp:
        def __init__(self, code):
            self.status_code, self.headers = code, {}

    def api(code, body='{"code": 1, "message": "m"}'):
        err = requests.HTTPError(response=Resp(code))
        return APIError(body, err)

    assert _outcome(requests.exceptions.ChunkedEncodingError())[0] == "unknown"  # may have arrived
    assert _outcome(ValueError("a status alpaca-py cannot parse"))[0] == "unknown"
    assert [_outcome(api(c))[0] for c in (400, 401, 403, 404, 408, 409, 422, 429, 500, 504)] == \
        ["reject", "fatal", "reject", "missing", "unknown", "unknown", "reject", "busy", "unknown", "unknown"]
    assert _outcome(api(422, '{"code": 40010001, "message": "client_order_id must be unique"}'))[0] == "duplicate"


def test_keys_do_not_appear_in_the_resources_repr(server, tmp_path):
    b = make(server, tmp_path, live_api_key="LIVEKEY123", live_secret_key="LIVESECRET456")
    assert not any(k in repr(b) for k in ("test-key", "test-secret", "LIVEKEY123", "LIVESECRET456"))


def test_live_routing_uses_the_live_endpoint_and_a_separate_ledger(tmp_path):
    with AlpacaTradingServer() as paper, AlpacaTradingServer(key="live-key", secret="live-secret") as live:
        with pytest.raises(BrokerError, match="ALPACA_LIVE_API_KEY"):
            make(paper, tmp_path, live_url_override=live.url).routed(True)
        b = make(paper, tmp_path, live_url_override=live.url, live_api_key="live-key", live_secret_key="live-secret")
        assert b.routed(False) is b and not b.is_live
        lb = b.routed(True)
        assert lb.is_live and lb.db_path.endswith("alpaca.live.sqlite") and lb.audit_path.endswith("audit.live.jsonl")
        lb.open_account(A)
        lb.place_session_orders(A, S, INTENTS[:1])
        assert live.count("POST", "/v2/orders") == 1 and paper.count("POST", "/v2/orders") == 0
        assert b.orders(A).empty
        with pytest.raises(BrokerError, match="enforce_market_hours"):
            make(paper, tmp_path, enforce_market_hours=False, live_api_key="k", live_secret_key="s").routed(True)


_CHILD = """
import sys
from qt_resources.alpaca_broker import AlpacaBroker
from qt_resources.broker import OrderIntent
b = AlpacaBroker(**__import__("json").loads(sys.argv[1]))
b.open_account("alpha")
b.place_session_orders("alpha", sys.argv[2], [OrderIntent(s, "buy", 1, "t") for s in ("AAPL", "IBM", "MSFT")])
"""


@pytest.mark.parametrize("lands", ["before the restart", "after the restart"])
def test_a_process_killed_mid_submission_reconciles_without_duplicates(server, tmp_path, lands):
    """The child is killed while its first POST hangs at the broker (which then does create the order). A new
    process reconciles: if the order has landed it is found by client order id; if not, it is sent again and
    the late original is refused by the broker as a duplicate id. Either way the other two are sent once."""
    server.faults.append(Fault(match="POST /v2/orders", delay=3.0))  # the first POST hangs...
    kw = {"db_path": str(tmp_path / "alpaca.sqlite"), "api_key": "test-key", "secret_key": "test-secret",
          "url_override": server.url, "timeout_seconds": 30, "audit_path": str(tmp_path / "audit.jsonl")}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(kw), S], cwd=os.getcwd(),
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while server.count("POST", "/v2/orders") < 1:
            assert time.monotonic() < deadline and child.poll() is None, "the child never sent its order"
            time.sleep(0.02)
        os.killpg(child.pid, signal.SIGKILL)  # mid-submission: the POST is in flight
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    coids = [client_order_id(A, S, s, "buy") for s in ("AAPL", "IBM", "MSFT")]
    b = AlpacaBroker(**{**kw, "timeout_seconds": 5, "backoff_seconds": 0.05})
    assert b.orders(A).set_index("client_order_id").loc[coids[0], "status"] == "submitted"
    if lands == "before the restart":
        time.sleep(3.3)  # the hung request completes at the broker after the client died
        report = b.reconcile(A)
        assert {"client_order_id": coids[0], "was": "submitted", "now": "accepted"} in report["orders_updated"]
    else:
        assert b.reconcile(A)["orders_unresolved"] == [coids[0]]  # still in flight: unknown to the broker
    rows = b.place_session_orders(A, S, [])  # the re-run sends what was planned and never sent
    assert {r["status"] for r in rows} == {"accepted"}
    time.sleep(3.5 if lands == "after the restart" else 0)  # the late original reaches the broker
    assert_exactly_once(server, coids)
    posts = [r["status"] for r in server.requests if r["method"] == "POST"]
    assert posts.count(200) == 3 and (len(posts) == 3 if lands == "before the restart" else posts.count(422) == 1)
    assert verify(tmp_path / "audit.jsonl") == (True, [])
    # the child died inside a batch whose audit flush comes at its end: what it committed reached the log anyway
    # (through the outbox, flushed by the next process), each transition exactly once
    logged = [(r["data"]["client_order_id"], r["data"]["status"]) for r in AuditLog(tmp_path / "audit.jsonl").records()
              if r["kind"] == "transition"]
    with sqlite3.connect(kw["db_path"]) as con:
        ledger = con.execute("select client_order_id, status from order_events order by rowid").fetchall()
    assert sorted(logged) == sorted(ledger) and len(set(logged)) == len(logged)


def test_garbled_replies_on_read_and_cancel_are_unknown_outcomes_retried(server, tmp_path):
    """A 200 whose body is not JSON (a proxy's error page) on the lookups and cancels of the kill switch: each is
    retried like a timeout, and every order is canceled exactly once."""
    b = make(server, tmp_path)
    rows = b.place_session_orders(A, S, INTENTS)
    server.faults.extend([Fault(match="GET /v2/orders:by_client_order_id", garble=True),
                          Fault(match="DELETE /v2/orders/", garble=True),  # handled, then garbled
                          Fault(match="GET /v2/orders:by_client_order_id", garble=True)])
    assert sorted(b.cancel_open(A, "kill")) == sorted(r["client_order_id"] for r in rows)
    assert {server.order(r["client_order_id"])["status"] for r in rows} == {"canceled"}
    assert [r["status"] for r in server.requests if r["status"] == "garbled"] == ["garbled"] * 3
    assert set(b.orders(A)["status"]) == {"canceled"}


def test_a_reply_that_stays_garbled_is_a_broker_error_and_the_kill_switch_goes_on(server, tmp_path):
    b = make(server, tmp_path, max_attempts=2)
    rows = b.place_session_orders(A, S, INTENTS)
    first, second = (r["client_order_id"] for r in rows)
    server.faults.extend([Fault(match="GET /v2/orders:by_client_order_id", garble=True) for _ in range(2)])
    with pytest.raises(BrokerError) as e:
        b.cancel_open(A, "kill")
    assert f"{first}: Alpaca GET order {first}" in str(e.value) and "GarbledReply" in str(e.value)
    assert "1 done" in str(e.value)
    assert server.order(second)["status"] == "canceled"  # past the failed one
    assert b.cancel_open(A, "kill again") == [first] and server.order(first)["status"] == "canceled"
    for path, call in (("GET /v2/account", b.account), ("GET /v2/orders", lambda: b.reconcile(A)),
                       ("GET /v2/positions", lambda: b.reconcile(A))):
        server.faults[:] = [Fault(match=path, garble=True) for _ in range(2)]
        with pytest.raises(BrokerError, match="unreadable reply"):
            call()


def test_a_session_whose_ledger_was_lost_completes_exactly_once(server, tmp_path):
    """The ledger is deleted after the session's first order reached Alpaca (a crash before the second was sent,
    then the disk lost): reconciliation adopts the order at the broker, the orders run completes the session
    (the adopted order stands for its intent, the other is sent once), and a further run changes nothing."""
    b = make(server, tmp_path)
    first = b.place_session_orders(A, S, INTENTS[:1])[0]["client_order_id"]
    (tmp_path / "alpaca.sqlite").unlink()
    with pytest.raises(BrokerError, match=f"ledger {tmp_path / 'alpaca.sqlite'} was deleted while this process"):
        b.place_session_orders(A, S, INTENTS)  # this process must not go on with an empty ledger
    from qt_resources import broker

    broker._READY.pop(str(tmp_path / "alpaca.sqlite"))  # a new process, as after a restore from nothing
    fresh = make(server, tmp_path)
    assert fresh.reconcile(A)["orders_adopted"] == [first]
    assert not fresh.session_done(A, S)
    rows = fresh.place_session_orders(A, S, INTENTS)  # used to fail on the unique client order id, every run
    assert fresh.session_done(A, S) and len(rows) == 2
    second = client_order_id(A, S, "IBM", "buy")
    assert_exactly_once(server, [first, second])
    again = fresh.place_session_orders(A, S, INTENTS)
    assert [r["client_order_id"] for r in again] == [r["client_order_id"] for r in rows]
    assert server.count("POST", "/v2/orders") == 2


def test_a_corrupt_ledger_is_named(server, tmp_path):
    (tmp_path / "alpaca.sqlite").write_bytes(b"this is not a SQLite database" * 100)
    with pytest.raises(BrokerError, match=f"ledger {tmp_path / 'alpaca.sqlite'} cannot be opened: file is not a"):
        make(server, tmp_path)


def test_reconciliation_costs_what_changed(server, tmp_path, monkeypatch):
    """The first reconciliation of a ledger looks back a week; later ones list the orders still open here and
    those submitted since the last one, and write a transaction only for an order whose state changed."""
    b = make(server, tmp_path)
    rows = b.place_session_orders(A, S, INTENTS)
    for r in rows:
        server.fill(r["client_order_id"], price=100.0)
    applied = []
    real = AlpacaBroker._apply
    monkeypatch.setattr(AlpacaBroker, "_apply", lambda self, *a, **k: applied.append(a[1].client_order_id)
                        or real(self, *a, **k))

    def after_params():
        return [pd.Timestamp(q["query"]["after"]) for q in server.requests
                if q["method"] == "GET" and q["path"] == "/v2/orders" and "after" in q["query"]]

    first = b.reconcile(A)
    assert sorted(applied) == sorted(r["client_order_id"] for r in rows)  # both fills booked
    assert first["orders_listed"] == 2 and min(after_params()) < pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=7)
    n, applied[:] = len(after_params()), []
    second = b.reconcile(A)
    assert applied == [] and second["orders_updated"] == []  # nothing changed: no transaction per order
    newest = after_params()[n:]
    assert newest and min(newest) > pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=1, hours=2)  # not a week back
