import numpy as np
import pandas as pd
import pytest

from qt_assets.agents import target_weights
from qt_assets.backtests import portfolio_metrics, run_weights_backtest
from qt_resources.config import RiskLimits, SelectionSection
from qt_resources.costs import CostModel


def _bars(n=200, seed=3):
    rng = np.random.default_rng(seed)
    idx = pd.date_range("2020-01-01", periods=n, freq="B")
    close = pd.DataFrame(100 * np.exp(np.cumsum(rng.normal(0, 0.02, (n, 2)), 0)), index=idx, columns=["A", "B"])
    open_ = close.shift(1).fillna(close.iloc[0]) * np.exp(rng.normal(0, 0.01, (n, 2)))
    return open_, close


def test_same_bar_foresight_earns_nothing_from_that_bar():
    """A signal equal to the sign of the same bar's return would be a money machine if filled on that bar."""
    open_, close = _bars()
    same_bar_ret = close / open_ - 1
    w = (same_bar_ret > 0).astype(float) * 0.5
    pf = run_weights_backtest(w, open_, close, CostModel(), 1e6)
    cheat = float(np.prod(1 + (w * same_bar_ret).sum(1)) - 1)
    assert cheat > 1.0  # the foresight would have been enormous...
    assert pf.total_return() < 0.5 * cheat  # ...but next-bar execution does not earn it


def test_fill_happens_at_next_open_with_costs():
    idx = pd.date_range("2021-01-04", periods=4, freq="B")
    open_ = pd.DataFrame({"A": [10.0, 20.0, 30.0, 40.0]}, index=idx)
    close = pd.DataFrame({"A": [11.0, 21.0, 31.0, 41.0]}, index=idx)
    w = pd.DataFrame({"A": [1.0, np.nan, np.nan, np.nan]}, index=idx)
    costs = CostModel(commission_bps=10, slippage_bps=50)
    pf = run_weights_backtest(w, open_, close, costs, 1000.0)
    o = pf.orders.records_readable
    assert len(o) == 1
    assert o["Timestamp"].iloc[0] == idx[1]  # decided on bar 0, filled on bar 1
    assert o["Price"].iloc[0] == pytest.approx(20.0 * 1.005)
    assert o["Fees"].iloc[0] == pytest.approx(o["Size"].iloc[0] * 20.0 * 1.005 * 0.001)


def test_metrics_on_known_series():
    idx = pd.date_range("2021-01-04", periods=253, freq="B")
    px = pd.DataFrame({"A": 100 * 1.001 ** np.arange(253)}, index=idx)
    pf = run_weights_backtest(pd.DataFrame({"A": [1.0]}, index=idx[:1]), px, px, CostModel(), 1e5)
    m = portfolio_metrics(pf)
    # invested from bar 1's open at bar 0's close price level; 251 growth steps of 0.1% while invested
    assert m["total_return"] == pytest.approx(1.001 ** 251 - 1, rel=1e-9)
    assert m["cagr"] == pytest.approx((1 + m["total_return"]) ** (252 / 253) - 1, rel=1e-9)
    assert m["max_drawdown"] == pytest.approx(0.0, abs=1e-12)


def test_target_weights_caps_and_reasons():
    scores = pd.DataFrame({"session": ["d"] * 4, "symbol": list("ABCD"), "score": [0.3, 0.1, -0.2, 0.05]})
    w = target_weights(scores, SelectionSection(top_k=3, min_score=0.0), RiskLimits(max_position_pct=0.25, max_gross_exposure=0.6))
    got = dict(zip(w["symbol"], w["target_weight"]))
    assert got["A"] == pytest.approx(0.2) and got["B"] == pytest.approx(0.2) and got["D"] == pytest.approx(0.2)
    assert got["C"] == 0.0
    assert "outside top_k=3" in w.set_index("symbol").loc["C", "reason"]  # rank 4 of 4
    assert "-> weight 0.2000" in w.set_index("symbol").loc["A", "reason"]
