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


def test_paper_broker_and_backtest_engine_charge_the_same(tmp_path):
    """One cost model: the same order costs the same in the paper broker and in the backtest engine
    (slippage + half the spread on the price, commission with its minimum)."""
    import numpy as np
    import pandas as pd

    from qt_assets.backtests.engine import Bars, simulate
    from qt_resources.costs import CostModel

    costs = CostModel(commission_bps=10, slippage_bps=20, min_commission=5.0, spread_bps=10)
    b = PaperBroker(db_path=str(tmp_path / "p.sqlite"), initial_cash=10_000, commission_bps=10, slippage_bps=20,
                    min_commission=5.0, spread_bps=10)
    b.open_account("a")
    b.place_session_orders("a", "2012-01-03", [OrderIntent("AAPL", "buy", 10, "t")])
    fill = b.fill_pending("a", "2012-01-04", {"AAPL": 100.0})[0]
    assert fill["price"] == pytest.approx(100.0 * (1 + 0.002 + 0.0005))
    assert fill["commission"] == pytest.approx(5.0)  # 10 bps of $1,002.50 is $1.00 < the $5 minimum

    idx = pd.DatetimeIndex(["2012-01-03", "2012-01-04"])
    px = pd.DataFrame({"AAPL": [100.0, 100.0]}, index=idx)
    pf = simulate(pd.DataFrame({"AAPL": [0.1, np.nan]}, index=idx), Bars(px, px, px, px), costs, 10_000.0)
    o = pf.orders.records_readable.iloc[0]
    assert o["Size"] == pytest.approx(fill["qty"]) and o["Price"] == pytest.approx(fill["price"])
    assert o["Fees"] == pytest.approx(fill["commission"])
    assert pf.cash().iloc[-1] == pytest.approx(b.cash("a"))


def test_paper_lifecycle_is_timestamped_transition_by_transition(broker):
    broker.place_session_orders("a", "2012-01-03", [OrderIntent(s, "buy", q, "t")
                                                    for s, q in (("AAPL", 500), ("IBM", 1), ("MSFT", 1))])
    broker.fill_pending("a", "2012-01-04", {"AAPL": 100.0, "MSFT": 10.0})  # no IBM open: its day order expires
    ids = {s: client_order_id("a", "2012-01-03", s, "buy") for s in ("AAPL", "IBM", "MSFT")}
    steps = {s: [st for st, _ in broker.events(c)] for s, c in ids.items()}
    assert steps == {"AAPL": ["new", "submitted", "accepted", "partially_filled", "canceled"],  # cash ran out
                     "IBM": ["new", "submitted", "accepted", "expired"],
                     "MSFT": ["new", "submitted", "accepted", "filled"]}
    at = [t for _, t in broker.events(ids["AAPL"])]
    assert at == sorted(at) and all(t.endswith("+00:00") for t in at)
