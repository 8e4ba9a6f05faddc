import pytest

from qt_resources.broker import BrokerError, OrderIntent, PaperBroker, client_order_id


@pytest.fixture
def broker(tmp_path):
    b = PaperBroker(db_path=str(tmp_path / "paper.sqlite"), initial_cash=10_000, commission_bps=10, slippage_bps=20)
    b.open_account("a")
    return b


def test_orders_are_placed_once_per_session(broker):
    first = broker.place_session_orders("a", "2012-01-03", [OrderIntent("AAPL", "buy", 10, "t")])
    again = broker.place_session_orders("a", "2012-01-03", [OrderIntent("AAPL", "buy", 10, "t"),
                                                            OrderIntent("IBM", "buy", 5, "t")])
    assert [o["client_order_id"] for o in first] == [client_order_id("a", "2012-01-03", "AAPL", "buy")]
    assert again == first
    assert len(broker.orders("a")) == 1


def test_fill_at_next_open_with_shared_costs(broker):
    broker.place_session_orders("a", "2012-01-03", [OrderIntent("AAPL", "buy", 10, "t")])
    assert broker.fill_pending("a", "2012-01-03", {"AAPL": 100.0}) == []  # not on the signal's own bar
    fills = broker.fill_pending("a", "2012-01-04", {"AAPL": 100.0})
    assert len(fills) == 1
    price = 100.0 * (1 + 0.002)
    assert fills[0]["price"] == pytest.approx(price)
    assert fills[0]["commission"] == pytest.approx(10 * price * 0.001)
    assert broker.cash("a") == pytest.approx(10_000 - 10 * price - 10 * price * 0.001)
    assert broker.positions("a") == {"AAPL": 10}
    assert broker.fill_pending("a", "2012-01-04", {"AAPL": 100.0}) == []  # no double fill
    o = broker.orders("a").iloc[0]
    assert o["status"] == "filled" and o["fill_session"] == "2012-01-04"


def test_unaffordable_buy_is_cut_and_remainder_canceled(broker):
    broker.place_session_orders("a", "2012-01-03", [OrderIntent("AAPL", "buy", 500, "t")])
    fills = broker.fill_pending("a", "2012-01-04", {"AAPL": 100.0})
    assert fills[0]["qty"] == 99  # 10,000 / (100.2 * 1.001)
    assert broker.orders("a").iloc[0]["status"] == "canceled"
    assert broker.cash("a") >= 0


def test_refuses_to_rewrite_an_earlier_session(broker):
    broker.place_session_orders("a", "2012-01-05", [])
    with pytest.raises(BrokerError, match="refusing to place orders for the earlier session 2012-01-04"):
        broker.place_session_orders("a", "2012-01-04", [OrderIntent("AAPL", "buy", 1, "t")])


def test_state_survives_a_new_broker_instance(broker, tmp_path):
    broker.place_session_orders("a", "2012-01-03", [OrderIntent("AAPL", "buy", 10, "t")])
    broker.fill_pending("a", "2012-01-04", {"AAPL": 50.0})
    again = PaperBroker(db_path=broker.db_path, initial_cash=10_000, commission_bps=10, slippage_bps=20)
    assert again.positions("a") == {"AAPL": 10}
    assert again.session_done("a", "2012-01-03")
