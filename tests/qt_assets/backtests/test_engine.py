"""The backtest engine on hand-computed cases: next-bar fills, costs, long/short, stops, order sequencing."""

import numpy as np
import pandas as pd
import pytest

from qt_assets.backtests.engine import Bars, Stops, simulate, stop_exits
from qt_resources.costs import CostModel

IDX = pd.date_range("2021-01-04", periods=6, freq="B")


def bars(open_, close=None, high=None, low=None, cols=("A",)):
    o = pd.DataFrame(np.asarray(open_, float).reshape(len(IDX[:len(open_)]), -1), index=IDX[:len(open_)], columns=list(cols))
    c = o * 1.0 if close is None else pd.DataFrame(np.asarray(close, float).reshape(o.shape), index=o.index, columns=o.columns)
    h = np.maximum(o, c) if high is None else pd.DataFrame(np.asarray(high, float).reshape(o.shape), index=o.index, columns=o.columns)
    lo = np.minimum(o, c) if low is None else pd.DataFrame(np.asarray(low, float).reshape(o.shape), index=o.index, columns=o.columns)
    return Bars(o, h, lo, c)


def random_bars(rng, n, cols, start=100.0, drift=0.0, vol=0.02, gap=0.005, range_=0.01) -> Bars:
    """Seeded random daily bars: closes a random walk, opens a gap from the previous close, highs/lows a band."""
    idx = pd.date_range("2020-01-01", periods=n, freq="B")
    close = pd.DataFrame(start * np.exp(np.cumsum(rng.normal(drift, vol, (n, len(cols))), 0)), index=idx,
                         columns=list(cols))
    open_ = close.shift(1).bfill() * np.exp(rng.normal(0, gap, (n, len(cols))))
    return Bars(open_, np.maximum(open_, close) * (1 + range_), np.minimum(open_, close) * (1 - range_), close)


def weights(rows, cols=("A",)):
    return pd.DataFrame(np.asarray(rows, float).reshape(len(rows), -1), index=IDX[:len(rows)], columns=list(cols))


def orders(pf):
    return pf.orders.records_readable.reset_index(drop=True)


def test_two_trades_fees_and_slippage_by_hand():
    """Buy 100 % at bar 1's open, sell at bar 3's open; 10 bps commission, 50 bps slippage, 20 bps spread."""
    b = bars([10, 20, 30, 40, 50], close=[11, 21, 31, 41, 51])
    w = weights([1.0, np.nan, 0.0, np.nan, np.nan])
    costs = CostModel(commission_bps=10, slippage_bps=50, spread_bps=20)
    pf = simulate(w, b, costs, 1000.0, group_by=None)
    o = orders(pf)
    assert list(o["Timestamp"]) == [IDX[1], IDX[3]]  # decided on bars 0 and 2, filled on the next bars
    buy_px = 20 * (1 + 0.005 + 0.001)
    # target value = 1.0 * 1000 at bar 1's open (20): 50 shares planned, more than the cash covers with slippage
    # and commission, so the buy is cut to size * buy_px * (1 + 0.001) = 1000
    size = 1000 / (buy_px * 1.001)
    fee1 = 0.001 * size * buy_px
    assert o.loc[0, "Price"] == pytest.approx(buy_px)
    assert o.loc[0, "Size"] == pytest.approx(size)
    assert o.loc[0, "Fees"] == pytest.approx(fee1)
    sell_px = 40 * (1 - 0.006)
    assert o.loc[1, "Price"] == pytest.approx(sell_px)
    assert o.loc[1, "Fees"] == pytest.approx(0.001 * size * sell_px)
    cash = 1000 - size * buy_px - fee1 + size * sell_px - 0.001 * size * sell_px
    assert pf.value().iloc[-1] == pytest.approx(cash)
    assert pf.cash().iloc[-1] == pytest.approx(cash)


def test_minimum_commission_per_order():
    b = bars([10, 10, 10, 10])
    pf = simulate(weights([0.01, np.nan, 0.0, np.nan]), b, CostModel(commission_bps=5, min_commission=1.0), 10_000.0)
    o = orders(pf)
    assert len(o) == 2
    assert list(o["Fees"]) == pytest.approx([1.0, 1.0])  # 5 bps of $100 is $0.05 < $1 minimum
    big = simulate(weights([1.0, np.nan]), bars([10, 10]), CostModel(commission_bps=5, min_commission=1.0), 10_000.0)
    assert orders(big).loc[0, "Fees"] == pytest.approx(0.0005 * orders(big).loc[0, "Size"] * 10, rel=1e-9)


def test_next_close_execution():
    b = bars([10, 20, 30], close=[11, 21, 31])
    pf = simulate(weights([0.5, np.nan, np.nan]), b, CostModel(), 1000.0, execution="next_close")
    o = orders(pf)
    assert o.loc[0, "Timestamp"] == IDX[1] and o.loc[0, "Price"] == pytest.approx(21.0)
    assert o.loc[0, "Size"] == pytest.approx(500 / 21)


def test_same_bar_foresight_earns_nothing_from_that_bar():
    """A weight equal to the sign of the same bar's return would be a money machine if filled on that bar."""
    rng = np.random.default_rng(3)
    n = 300
    idx = pd.date_range("2020-01-01", periods=n, freq="B")
    close = pd.DataFrame(100 * np.exp(np.cumsum(rng.normal(0, 0.02, (n, 2)), 0)), index=idx, columns=["A", "B"])
    open_ = close.shift(1).fillna(close.iloc[0]) * np.exp(rng.normal(0, 0.01, (n, 2)))
    b = Bars(open_, np.maximum(open_, close), np.minimum(open_, close), close)
    same_bar = close / close.shift(1) - 1
    w = np.sign(same_bar).fillna(0) * 0.5
    cheat = float(np.prod(1 + (w * same_bar).sum(1)) - 1)
    assert cheat > 10  # the foresight would be enormous...
    for execution in ("next_open", "next_close"):
        pf = simulate(w, b, CostModel(), 1e6, execution=execution)
        assert abs(pf.total_return()) < 1.0  # ...but the engine fills on the next bar, so it earns nothing like it


def test_long_short_signs():
    """Short 50 % at 100 and cover at 80: +10 % of equity; long 50 % from 100 to 80: -10 %."""
    b = bars([100, 100, 90, 80, 80])
    short = simulate(weights([-0.5, np.nan, np.nan, 0.0]), b, CostModel(), 1000.0)
    long_ = simulate(weights([0.5, np.nan, np.nan, 0.0]), b, CostModel(), 1000.0)
    assert short.value().iloc[-1] == pytest.approx(1100.0)
    assert long_.value().iloc[-1] == pytest.approx(900.0)
    assert orders(short).loc[0, "Side"] == "Sell" and orders(short).loc[1, "Side"] == "Buy"


def test_sells_fund_buys_in_the_same_bar():
    """Rotating 100 % from A to B on one bar: the sale of A is executed first, so B is bought in full."""
    b = bars([[10, 10], [10, 10], [10, 10], [10, 10]], cols=("A", "B"))
    w = weights([[1.0, 0.0], [0.0, 1.0], [np.nan, np.nan], [np.nan, np.nan]], cols=("A", "B"))
    pf = simulate(w, b, CostModel(commission_bps=10), 1000.0)
    o = orders(pf).sort_values("Order Id")
    assert list(zip(o["Timestamp"], o["Column"], o["Side"])) == [(IDX[1], "A", "Buy"), (IDX[2], "A", "Sell"),
                                                                  (IDX[2], "B", "Buy")]
    sold = o.iloc[1]["Size"] * 10 - o.iloc[1]["Fees"]
    assert o.iloc[2]["Size"] * 10 * 1.001 == pytest.approx(sold)  # every dollar of the sale went into B


def test_rebalance_band_skips_small_retargets():
    b = bars([10, 11, 12, 13, 14])
    dense = weights([0.5, 0.5, 0.5, 0.5])
    no_band = simulate(dense, b, CostModel(), 1000.0)
    band = simulate(dense, b, CostModel(), 1000.0, rebalance_band=0.05)
    assert len(orders(no_band)) == 4  # re-targets to 50 % on every bar as the price drifts up
    # with a 5 % band the drift is left alone until it exceeds 5 % of equity: at 12 and 13 the weight is 0.522 and
    # 0.542; at 14 it is 636.4 / 1136.4 = 0.560, so the position is cut back to 50 % there
    assert list(orders(band)["Timestamp"]) == [IDX[1], IDX[4]]


def test_stop_loss_at_level_and_gap_at_open():
    # entry at bar 1's open (100); bar 2's low touches 95 (5 % stop) -> exit at 95
    b = bars([100, 100, 99, 98], close=[100, 100, 97, 98], high=[100, 101, 99, 99], low=[100, 99, 94, 97])
    pf = simulate(weights([1.0, np.nan, np.nan, np.nan]), b, CostModel(), 1000.0, stops=Stops(sl=0.05))
    o = orders(pf)
    assert list(o["Timestamp"]) == [IDX[1], IDX[2]] and o.loc[1, "Price"] == pytest.approx(95.0)
    assert list(stop_exits(pf)["kind"]) == ["stop_loss"]
    # the next bar opens at 90, below the stop: the exit fills at the open, not at the (better) level
    g = bars([100, 100, 90, 90], high=[100, 101, 92, 91], low=[100, 99, 88, 89])
    o = orders(simulate(weights([1.0, np.nan, np.nan, np.nan]), g, CostModel(), 1000.0, stops=Stops(sl=0.05)))
    assert o.loc[1, "Price"] == pytest.approx(90.0)


def test_entry_bar_does_not_stop_and_take_profit_and_short_stop():
    # bar 1 (entry bar) dips to 90, below the 5 % stop: not used to stop the entry made at its open
    b = bars([100, 100, 104, 104], high=[100, 101, 111, 105], low=[100, 90, 103, 103])
    pf = simulate(weights([1.0, np.nan, np.nan, np.nan]), b, CostModel(), 1000.0, stops=Stops(sl=0.05, tp=0.1))
    o = orders(pf)
    assert list(o["Timestamp"]) == [IDX[1], IDX[2]] and o.loc[1, "Price"] == pytest.approx(110.0)
    assert list(stop_exits(pf)["kind"]) == ["take_profit"]
    # short from 100 with a 5 % stop: bar 2's high 106 >= 105 -> cover at 105
    s = bars([100, 100, 101, 101], high=[100, 100, 106, 102], low=[100, 99, 100, 100])
    o = orders(simulate(weights([-1.0, np.nan, np.nan, np.nan]), s, CostModel(), 1000.0, stops=Stops(sl=0.05)))
    assert o.loc[1, "Side"] == "Buy" and o.loc[1, "Price"] == pytest.approx(105.0)


def test_trailing_stop_uses_highs_before_the_bar():
    # entry 100 at bar 1; bar 2 high 120 -> from bar 3 the trailing 10 % stop is at 108; bar 3 low 107 -> exit 108
    b = bars([100, 100, 115, 112, 112], high=[100, 100, 120, 113, 113], low=[100, 100, 110, 107, 111])
    pf = simulate(weights([1.0, np.nan, np.nan, np.nan, np.nan]), b, CostModel(), 1000.0,
                  stops=Stops(sl=0.1, trailing=True))
    o = orders(pf)
    assert list(o["Timestamp"]) == [IDX[1], IDX[3]] and o.loc[1, "Price"] == pytest.approx(108.0)
    assert list(stop_exits(pf)["kind"]) == ["trailing_stop"]


def test_no_reentry_on_a_repeated_target_but_on_a_fresh_one():
    b = bars([100, 100, 90, 90, 90, 90], high=[100] * 2 + [91] * 4, low=[100, 100, 89, 89, 89, 89])
    dense = simulate(weights([1.0] * 6), b, CostModel(), 1000.0, stops=Stops(sl=0.05))
    assert len(orders(dense)) == 2  # entry, stop; the same target repeated does not re-enter
    sparse = simulate(weights([1.0, np.nan, np.nan, 1.0, np.nan, np.nan]), b, CostModel(), 1000.0, stops=Stops(sl=0.05))
    o = orders(sparse)
    assert len(o) == 3 and o.loc[2, "Timestamp"] == IDX[4] and o.loc[2, "Side"] == "Buy"  # a new signal re-enters


def test_unknown_symbol_and_execution_are_errors():
    b = bars([10, 10])
    with pytest.raises(ValueError, match=r"symbols \['Z'\] have no bars"):
        simulate(weights([1.0, np.nan], cols=("Z",)), b, CostModel(), 1000.0)
    with pytest.raises(ValueError, match="execution: 'same_close'"):
        simulate(weights([1.0, np.nan]), b, CostModel(), 1000.0, execution="same_close")


def test_value_and_exposure_from_the_pass_equal_vectorbts():
    rng = np.random.default_rng(8)
    n = 120
    b = random_bars(rng, n, "ABC", start=50.0)
    w = pd.DataFrame(np.where(rng.random((n, 3)) < 0.2, rng.uniform(-0.4, 0.4, (n, 3)), np.nan),
                     index=b.close.index, columns=b.close.columns)
    pf = simulate(w, b, CostModel(5, 2, 1.0, 4), 1e4, stops=Stops(sl=0.05, tp=0.08))
    np.testing.assert_allclose(pf.qt_value.iloc[:, 0], pf.value(), rtol=1e-10)
    np.testing.assert_allclose(pf.qt_gross.iloc[:, 0], pf.asset_value(group_by=False).abs().sum(axis=1), rtol=1e-10)
    assert len(pf.orders.records) > 20 and pf.stop_count.sum() > 0
