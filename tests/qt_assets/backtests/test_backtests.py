"""Metrics on known series, strategies' signals and sizing, sweeps and the deflated Sharpe ratio."""

import numpy as np
import pandas as pd
import pytest

from qt_assets.backtests.engine import Bars, simulate
from qt_assets.backtests.metrics import (benchmark_metrics, deflated_sharpe, expected_max_sharpe, portfolio_metrics,
                               probabilistic_sharpe, returns_metrics)
from qt_assets.backtests.indicators import wilder_rsi
from qt_assets.backtests.strategies import rule_direction, size_weights, sweep_grid
from qt_resources.config import RiskLimits, SelectionSection, SizingSection, StrategySection
from qt_resources.costs import CostModel


def test_returns_metrics_by_hand():
    v = pd.DataFrame({"s": [110.0, 99.0, 99.0, 121.0, 108.9]}, index=pd.date_range("2021-01-04", periods=5, freq="B"))
    r = np.array([0.1, -0.1, 0.0, 121 / 99 - 1, 108.9 / 121 - 1])
    m = returns_metrics(v, 100.0).iloc[0]
    assert m["total_return"] == pytest.approx(0.089)
    assert m["cagr"] == pytest.approx(1.089 ** (252 / 5) - 1)
    assert m["ann_volatility"] == pytest.approx(r.std(ddof=1) * np.sqrt(252))
    assert m["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * np.sqrt(252))
    downside = np.sqrt(np.mean(np.minimum(r, 0) ** 2))
    assert m["sortino"] == pytest.approx(r.mean() * 252 / (downside * np.sqrt(252)))
    assert m["max_drawdown"] == pytest.approx(99 / 110 - 1)  # peak 110, trough 99
    assert m["max_drawdown_sessions"] == 2  # two sessions below 110, recovered at 121
    assert m["calmar"] == pytest.approx(m["cagr"] / 0.1)
    # a drawdown that is never recovered counts to the end
    v2 = pd.DataFrame({"s": [100.0, 90.0, 95.0, 97.0]})
    assert returns_metrics(v2, 100.0).iloc[0]["max_drawdown_sessions"] == 3
    # a loss on the first session is a drawdown from the initial cash
    v3 = pd.DataFrame({"s": [90.0, 95.0, 101.0]})
    assert returns_metrics(v3, 100.0).iloc[0]["max_drawdown"] == pytest.approx(-0.1)


def test_returns_metrics_equal_vectorbts_returns_accessor():
    """The fused kernel computes vectorbt's formulas (252-session year): checked column by column on random
    paths; for a flat path (zero deviation) and one that never loses (no downside) vectorbt reports +inf, and
    these metrics are undefined (NaN) instead."""
    from qt_assets.backtests.engine import vbt

    vbt()
    rng = np.random.default_rng(3)
    idx = pd.date_range("2020-01-01", periods=300, freq="B")
    r = rng.normal(0.0004, 0.012, (300, 40))
    r[0] = np.abs(r[0])  # vectorbt's drawdown starts at the first value: keep it a peak for the comparison
    v = pd.DataFrame(1e5 * np.cumprod(1 + r, axis=0), index=idx)
    v[40] = 1e5  # flat
    v[41] = 1e5 * np.cumprod(np.full(300, 1.001))  # never loses
    m = returns_metrics(v, 1e5)
    ret = v / v.shift(1).fillna(1e5) - 1
    acc = ret.vbt.returns(year_freq="252 days")
    ref = {"cagr": acc.annualized(), "ann_volatility": acc.annualized_volatility(), "sharpe": acc.sharpe_ratio(),
           "sortino": acc.sortino_ratio(), "max_drawdown": acc.max_drawdown()}
    for k, want in ref.items():
        got, want = m[k].to_numpy(), want.to_numpy().copy()
        if k in ("sharpe", "sortino"):
            assert np.isinf(want[40 if k == "sharpe" else 41])  # vectorbt's convention
            want[np.isinf(want)] = np.nan
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, err_msg=k)
    assert np.isnan(m.loc[40, "sharpe"]) and np.isnan(m.loc[41, "sortino"])
    assert np.isfinite(m.drop(columns=["sharpe", "sortino", "calmar"]).to_numpy(dtype=float)).all()
    bad = v.copy()
    bad.iloc[5, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        returns_metrics(bad, 1e5)


def test_trade_metrics_two_trades_by_hand():
    idx = pd.date_range("2021-01-04", periods=7, freq="B")
    px = pd.DataFrame({"A": [10.0, 10, 12, 12, 10, 8, 8]}, index=idx)
    b = Bars(px, px, px, px)
    # long 50 % at 10 (bar 1) -> out at 12 (bar 3); long 50 % at 10 (bar 4) -> out at 8 (bar 6)
    w = pd.DataFrame({"A": [0.5, np.nan, 0.0, 0.5, np.nan, 0.0, np.nan]}, index=idx)
    pf = simulate(w, b, CostModel(commission_bps=10), 1000.0)
    m = portfolio_metrics(pf, 1000.0).iloc[0]
    o = pf.orders.records_readable
    q1, q2 = o["Size"].iloc[0], o["Size"].iloc[2]
    pnl1 = q1 * 2 - 0.001 * q1 * 10 - 0.001 * q1 * 12
    pnl2 = -q2 * 2 - 0.001 * q2 * 10 - 0.001 * q2 * 8
    assert m["trades"] == 2 and m["closed_trades"] == 2
    assert m["win_rate"] == pytest.approx(0.5)
    assert m["profit_factor"] == pytest.approx(pnl1 / -pnl2)
    assert m["expectancy"] == pytest.approx((pnl1 + pnl2) / 2)
    assert m["avg_holding_sessions"] == pytest.approx(2.0)
    assert m["fees_paid"] == pytest.approx(0.001 * (q1 * 10 + q1 * 12 + q2 * 10 + q2 * 8))
    notional = q1 * 22 + q2 * 18
    assert m["turnover"] == pytest.approx(notional / pf.value().mean() / (7 / 252))
    assert m["exposure"] == pytest.approx(4 / 7)  # bars 1, 2 and 4, 5 hold a position


def test_alpha_beta():
    rng = np.random.default_rng(0)
    b = pd.Series(rng.normal(0.0005, 0.01, 500))
    r = pd.DataFrame({"s": 0.0002 + 1.5 * b})
    m = benchmark_metrics(r, b).iloc[0]
    assert m["beta"] == pytest.approx(1.5) and m["alpha"] == pytest.approx(0.0002 * 252)
    assert m["correlation"] == pytest.approx(1.0)
    # sessions where either side is unknown are left out, pair by pair
    r2 = pd.DataFrame({"s": rng.normal(0, 0.01, 500)})
    r2.iloc[[3, 50, 51], 0] = np.nan
    b2 = b.copy()
    b2.iloc[[0, 50, 400]] = np.nan
    ok = r2["s"].notna() & b2.notna()
    x, y = r2["s"][ok].to_numpy(), b2[ok].to_numpy()
    beta = np.cov(x, y)[0, 1] / y.var(ddof=1)
    m2 = benchmark_metrics(r2, b2).iloc[0]
    assert m2["beta"] == pytest.approx(beta, rel=1e-12)
    assert m2["alpha"] == pytest.approx((x.mean() - beta * y.mean()) * 252, rel=1e-10)
    assert m2["correlation"] == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)


def test_psr_and_dsr():
    rng = np.random.default_rng(1)
    r = rng.normal(0.002, 0.01, 1000)  # per-session Sharpe ~0.2 over 1000 sessions: clearly positive
    assert probabilistic_sharpe(r, 0.0) > 0.99
    assert probabilistic_sharpe(r, 0.4) < 0.01
    from scipy import stats
    sr = r.mean() / r.std(ddof=1)
    z = (sr - 0.1) * np.sqrt(999) / np.sqrt(1 - stats.skew(r) * sr + (stats.kurtosis(r, fisher=False) - 1) / 4 * sr ** 2)
    assert probabilistic_sharpe(r, 0.1) == pytest.approx(stats.norm.cdf(z))
    # with one trial the expected maximum is 0; it grows with the number of trials and their dispersion
    trials = rng.normal(0, 0.05, 1000)
    assert expected_max_sharpe(trials[:10]) < expected_max_sharpe(trials)
    # the best of 1000 pure-noise strategies looks good on its own but not after deflation
    noise = rng.normal(0, 0.01, (500, 1000))
    srs = noise.mean(0) / noise.std(0, ddof=1)
    best = noise[:, srs.argmax()]
    dsr, sr0 = deflated_sharpe(best, srs)
    assert probabilistic_sharpe(best, 0.0) > 0.95 and dsr < 0.5 and sr0 > 0


def test_rules_point_in_time_and_by_hand():
    idx = pd.date_range("2021-01-04", periods=8, freq="B")
    close = pd.DataFrame({"A": [1.0, 2, 3, 4, 3, 2, 1, 2]}, index=idx)
    d = rule_direction("sma_cross", {"fast": 1, "slow": 3}, close, longshort=True)
    # sma3: nan nan 2 3 3.33 3 2 1.67 ; fast=close
    assert list(d["A"]) == [0, 0, 1, 1, -1, -1, -1, 1]
    rsi = wilder_rsi(close, 2)
    assert np.isnan(rsi["A"].iloc[1]) and rsi["A"].iloc[2] == 100.0
    # a change after D never changes the direction at or before D
    later = close.copy()
    later.iloc[5:] *= 3
    for rule, p in [("sma_cross", {"fast": 1, "slow": 3}), ("rsi_threshold", {"window": 2, "lower": 30, "upper": 70}),
                    ("momentum_topk", {"lookback": 2, "k": 1, "rebalance": 2, "skip": 0})]:
        a, b = rule_direction(rule, p, close, True), rule_direction(rule, p, later, True)
        pd.testing.assert_frame_equal(a.iloc[:5], b.iloc[:5])


def test_cross_entry_waits_for_the_crossover_a_state_entry_does_not():
    """entry: state enters where SMA(slow) first exists with fast above it; entry: cross (the crossover event of
    other engines) only after the direction changes, then follows it, long-only and long/short."""
    from qt_assets.backtests.strategies import strategy_weights

    idx = pd.date_range("2021-01-04", periods=13, freq="B")
    close = pd.DataFrame({"A": [1.0, 2, 3, 4, 5, 4, 3, 2, 1, 2, 3, 4, 5]}, index=idx)
    # sma2 > sma3 on rows 2-5 and 10-12, below on rows 6-9; SMA(3) exists from row 2
    sign = lambda **kw: list(np.sign(strategy_weights(  # noqa: E731
        StrategySection(name="s", kind="rule", rule="sma_cross", params={"fast": 2, "slow": 3}, **kw), close,
        RiskLimits(max_position_pct=1.0))["A"]).astype(int))
    assert sign() == [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1]
    assert sign(entry="cross") == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]
    assert sign(direction="longshort") == [0, 0, 1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1]
    assert sign(direction="longshort", entry="cross") == [0, 0, 0, 0, 0, 0, -1, -1, -1, -1, 1, 1, 1]
    # a symbol whose bars start later: its signal exists later, and so does its first event
    late = close.copy()
    late["B"] = [np.nan] * 4 + [5.0, 4, 3, 2, 1, 2, 3, 4, 5]
    w = strategy_weights(StrategySection(name="s", kind="rule", rule="sma_cross", params={"fast": 2, "slow": 3},
                                         entry="cross"), late, RiskLimits(max_position_pct=1.0))
    # B's SMA(3) exists from row 6 with fast below it; its first crossover is on row 10
    assert list(np.sign(w["B"]).astype(int)) == [0] * 10 + [1, 1, 1]
    assert list(np.sign(w["A"]).astype(int)) == sign(entry="cross")


def test_whole_shares_are_sized_after_commission_by_hand():
    """shares: whole (the config's default): floor(w x V' / (fill x (1 + commission))), V' less the close's
    commission on a flip, as backtesting.py sizes; gross: w x V / price (before commission, fractional)."""
    idx = pd.date_range("2021-01-04", periods=5, freq="B")
    px = pd.DataFrame({"A": [100.0, 100, 110, 110, 110]}, index=idx)
    bars = Bars(px, px, px, px)
    w = pd.DataFrame({"A": [1.0, np.nan, -1.0, np.nan, np.nan]}, index=idx)
    costs = CostModel(commission_bps=20, slippage_bps=0)

    def sizes(order_sizing):
        pf = simulate(w, bars, costs, 10_000.0, order_sizing=order_sizing)
        rec = np.sort(pf.orders.records_arr, order="id")
        return [float(r["size"]) * (1 if r["side"] == 0 else -1) for r in rec], [float(r["fees"]) for r in rec]

    got, fees = sizes("whole")
    # buy floor(10000 / 100.2) = 99 (fee 19.80, cash 80.20); at 110: V = 80.20 + 99 x 110 = 10,970.20,
    # V' = V - 0.002 x 99 x 110 = 10,948.42, short floor(10,948.42 / 110.22) = 99: sell 198
    assert got == [99.0, -198.0]
    assert fees == pytest.approx([19.8, 0.002 * 198 * 110])
    net, _ = sizes("net")
    assert net == pytest.approx([10_000 / 100.2, -(10_948.42 - 0.002 * (10_000 / 100.2 - 99) * 110) / 110.22
                                 - 10_000 / 100.2], rel=1e-3)
    assert net[0] == pytest.approx(10_000 / 100.2)
    gross, _ = sizes("gross")
    assert gross[0] == pytest.approx((10_000 - 0.002 * 10_000 / 1.002) / 100, rel=1e-9)  # cut: cash can't pay
    assert abs(gross[1]) > abs(net[1]) > 198


def test_rsi_latch_and_momentum_schedule():
    idx = pd.date_range("2021-01-04", periods=6, freq="B")
    rsi_like = pd.DataFrame({"A": [50, 20, 50, 80, 50, 20]}, index=idx)
    from qt_assets.backtests.kernels import latch_direction_nb
    r = rsi_like.to_numpy(dtype=float).copy()
    r[4, 0] = np.nan  # a missing value carries the state
    for ls, want in [(False, [0, 1, 1, 0, 0, 1]), (True, [0, 1, 1, -1, -1, 1])]:
        out = np.empty(r.shape)
        latch_direction_nb(r, 30.0, 70.0, ls, out)
        assert list(out[:, 0]) == want
    close = pd.DataFrame({"A": [1.0, 2, 3, 4, 5, 6], "B": [1.0, 1, 1, 10, 10, 10]}, index=idx)
    d = rule_direction("momentum_topk", {"lookback": 1, "k": 1, "rebalance": 3, "skip": 0}, close, False)
    # first ranking on bar 1 (A +100 % beats B 0 %), next on bar 4 (B 0 % vs A +25 %: A), held in between
    assert list(d["A"]) == [0, 1, 1, 1, 1, 1] and list(d["B"]) == [0, 0, 0, 0, 0, 0]
    d = rule_direction("momentum_topk", {"lookback": 1, "k": 1, "rebalance": 2, "skip": 0}, close, False)
    assert list(d["B"]) == [0, 0, 0, 1, 1, 0]  # bar 3: B +900 % wins; bar 5: A again


def test_sizing_kinds_and_caps():
    idx = pd.date_range("2021-01-04", periods=4, freq="B")
    d = pd.DataFrame({"A": [1.0, 1, 0, -1], "B": [1.0, 1, 1, 1]}, index=idx)
    close = pd.DataFrame({"A": [10.0, 11, 12, 13], "B": [5.0, 5, 5, 5]}, index=idx)
    risk = RiskLimits(max_position_pct=0.4, max_gross_exposure=0.6)
    w = size_weights(d, close, SizingSection(kind="equal"), risk, slots=2)
    assert list(w["A"]) == pytest.approx([0.3, 0.3, 0.0, -0.3])  # 0.5 capped at 0.4, gross 0.8 scaled to 0.6
    ff = size_weights(d, close, SizingSection(kind="fixed_fraction", fraction=0.2), risk, slots=2)
    assert np.isnan(ff["A"].iloc[1]) and ff["A"].iloc[2] == 0.0 and ff["A"].iloc[3] == pytest.approx(-0.2)
    assert ff["B"].iloc[0] == pytest.approx(0.2) and ff["B"].iloc[1:].isna().all()  # entry only, then drift
    n = 60
    rng = np.random.default_rng(2)
    cl = pd.DataFrame({"A": 100 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))}, index=pd.RangeIndex(n))
    vt = size_weights(pd.DataFrame({"A": np.ones(n)}), cl, SizingSection(kind="vol_target", target_vol=0.1,
                                                                          vol_lookback=20, max_weight=1.0),
                      RiskLimits(max_position_pct=1.0, max_gross_exposure=1.0), slots=1)
    realised = np.log(cl["A"]).diff().iloc[40:60].std() * np.sqrt(252)
    assert vt["A"].iloc[59] == pytest.approx(min(1.0, 0.1 / realised))
    assert vt["A"].iloc[:20].eq(0).all()  # no weight before the volatility is known


def test_model_strategy_weights_by_hand():
    """Model strategy (and model agents, which call it): per session the top_k scores above min_score get
    1/top_k each, capped at max_position_pct, the gross scaled down to max_gross_exposure; the rest 0."""
    from qt_assets.backtests.strategies import strategy_weights

    rng = np.random.default_rng(5)
    sessions = pd.date_range("2021-01-04", periods=20, freq="B").strftime("%Y-%m-%d")
    scores = pd.DataFrame([(s, sym, rng.normal()) for s in sessions for sym in "ABCDE"], columns=["session", "symbol", "score"])
    risk = RiskLimits(max_position_pct=0.3, max_gross_exposure=0.5)
    sel = SelectionSection(top_k=3, min_score=0.1)
    st = StrategySection(name="m", kind="model", selection=sel)
    close = pd.DataFrame(1.0, index=pd.DatetimeIndex(sessions), columns=list("ABCDE"))
    w = strategy_weights(st, close, risk, scores=scores)
    for s, g in scores.groupby("session"):
        top = g.sort_values("score", ascending=False).head(3)
        chosen = set(top.loc[top["score"] > 0.1, "symbol"])
        ref = {sym: (min(1 / 3, 0.3) if sym in chosen else 0.0) for sym in "ABCDE"}
        gross = sum(ref.values())
        ref = {k: v * min(1.0, 0.5 / gross) if gross else v for k, v in ref.items()}
        np.testing.assert_allclose(w.loc[s].to_numpy(), [ref[c] for c in "ABCDE"], atol=1e-12)
    assert (w.sum(axis=1) > 0.45).any()  # the gross cap binds on some sessions


def test_sweep_grid_drops_invalid_combinations():
    st = StrategySection(name="s", kind="rule", rule="sma_cross", sweep={"fast": [5, 50], "slow": [20, 50]})
    assert sweep_grid(st) == [{"fast": 5, "slow": 20}, {"fast": 5, "slow": 50}]


SWEEP_CASES = {
    "sma_stop_loss": ({"rule": "sma_cross", "stops": {"sl": 0.05}}, {"fast": [3, 5, 10], "slow": [20, 40]}),
    "sma_longshort_band_trailing": ({"rule": "sma_cross", "direction": "longshort", "rebalance_band": 0.02,
                                     "stops": {"sl": 0.04, "tp": 0.1, "trailing": True}},
                                    {"fast": [2, 8], "slow": [15, 30]}),
    "sma_next_close_fixed_fraction": ({"rule": "sma_cross", "sizing": {"kind": "fixed_fraction", "fraction": 0.3},
                                       "min_order_value": 50.0}, {"fast": [4, 6], "slow": [25]}),
    "rsi_vol_target": ({"rule": "rsi_threshold", "sizing": {"kind": "vol_target", "target_vol": 0.2}},
                       {"window": [5, 14], "lower": [30, 40], "upper": [60, 70]}),
    "rsi_longshort_take_profit": ({"rule": "rsi_threshold", "direction": "longshort", "stops": {"tp": 0.05}},
                                  {"window": [7], "lower": [35], "upper": [55, 65]}),
    "momentum_target_percent": ({"rule": "momentum_topk", "sizing": {"kind": "target_percent", "weight": 0.4}},
                                {"lookback": [5, 20], "k": [1, 2], "rebalance": [3, 10]}),
    "sma_stop_levels_swept": ({"rule": "sma_cross", "stops": {"sl": 0.2, "trailing": True}},
                              {"fast": [3, 8], "slow": [20], "sl": [0.02, 0.05], "tp": [0.04, 10]}),
    # entry: cross, in the kernel (sma, rsi) and in the directions passed in (momentum); fractional shares
    "sma_cross_entry_longshort_fractional": ({"rule": "sma_cross", "direction": "longshort", "entry": "cross"},
                                             {"fast": [3, 6], "slow": [15, 30]}),
    "rsi_cross_entry": ({"rule": "rsi_threshold", "entry": "cross"}, {"window": [5, 9], "lower": [40], "upper": [60]}),
    "momentum_cross_entry": ({"rule": "momentum_topk", "entry": "cross"},
                             {"lookback": [5, 20], "k": [1], "rebalance": [1, 5]}),
}


@pytest.mark.parametrize("case", sorted(SWEEP_CASES))
def test_sweep_equals_one_backtest_per_combination(case):
    """The compiled sweep gives, for every combination, exactly the metrics of its own backtest (rules, long/short,
    sizing kinds, band, minimum order, stops, next-close fills, benchmark); with one thread or all; and for
    momentum_topk, whose directions are passed in chunks, whatever the chunk size."""
    from qt_assets.backtests.runs import run_strategy, run_sweep
    from qt_resources.config import parse_config

    from tests.qt_assets.backtests.test_engine import random_bars

    extra, grid = SWEEP_CASES[case]
    bars = random_bars(np.random.default_rng(4), 260, "ABCD", drift=0.0003, vol=0.015, gap=0.004, range_=0.003)
    bars.close.iloc[30:40, 1] = np.nan  # a symbol without bars for a while
    bars.open.iloc[30:40, 1] = np.nan

    def cfg_for(**bt):
        return parse_config({
            "universe": {"symbols": list("ABCD")}, "data": {"start": "2020-01-01", "end": "2021-12-31"},
            "features": {"set": ["ret_1d"]}, "research": {"split": {"train_end": "2020-06-30"}},
            "agents": [{"name": "a", "kind": "model", "model": "qtos_xgb"}],
            "backtest": {"costs": {"commission_bps": 5, "min_commission": 1, "slippage_bps": 2, "spread_bps": 3},
                         "execution": "next_close" if "next_close" in case else "next_open",
                         "shares": "fractional" if "fractional" in case else "whole", **bt,
                         "strategies": [{"name": "s", "kind": "rule", **extra, "sweep": grid}]}})

    cfg = cfg_for()
    st = cfg.backtest.strategies[0]
    bench = bars.close.pct_change().mean(axis=1)
    table = run_sweep(cfg, st, bars, bench)
    n = int(np.prod([len(v) for v in grid.values()]))
    assert len(table) == n
    assert table[["alpha", "beta", "correlation"]].notna().all().all()  # computed when a benchmark is given
    assert table["trades"].sum() > 0
    if "sl" in grid:  # the swept stop levels matter: a tighter stop-loss changes the results
        by_sl = table.groupby("sl")["total_return"].apply(tuple)
        assert by_sl.iloc[0] != by_sl.iloc[1]
    for _, row in table.iterrows():
        pf, _, _ = run_strategy(cfg, st.for_combo({k: row[k] for k in grid}), bars)
        m = portfolio_metrics(pf, cfg.backtest.initial_cash, bench).iloc[0]
        for k in m.index:
            assert row[k] == pytest.approx(m[k], rel=1e-12, abs=1e-15, nan_ok=True), (dict(row), k)
    one_thread = run_sweep(cfg_for(sweep_threads=1), st, bars, bench)
    pd.testing.assert_frame_equal(one_thread, table, check_exact=True)
    more_than_cores = run_sweep(cfg_for(sweep_threads=256), st, bars, bench)  # runs on every core numba has
    pd.testing.assert_frame_equal(more_than_cores, table, check_exact=True)
    # one combination per kernel call (only momentum_topk is chunked; the others ignore chunk_cells)
    from qt_assets.backtests.sweep import sweep_metrics
    from qt_assets.backtests.strategies import sweep_grid
    from qt_resources.costs import CostModel

    chunked = sweep_metrics(st, cfg.risk_for(st), sweep_grid(st), bars, CostModel.from_config(cfg.backtest.costs),
                            cfg.backtest.initial_cash, cfg.backtest.execution, bench, chunk_cells=bars.close.size,
                            order_sizing=cfg.backtest.order_sizing)
    pd.testing.assert_frame_equal(chunked, table.drop(columns=list(grid)), check_exact=True)




def test_a_sweep_names_no_best_among_combinations_that_never_trade():
    """A combination that never trades is not a candidate (its flat book has no Sharpe); when none trades the
    sweep names no best, and undefined metrics print as "undefined", never inf."""
    from qt_assets.backtests.runs import pick_best, shown

    table = pd.DataFrame({"fast": [5, 10, 20], "sharpe": [np.nan, 0.4, 1.2], "trades": [0, 12, 3]})
    assert pick_best(table) == (2, "2 of 3 combinations traded")
    table.loc[2, "trades"] = 0  # the highest Sharpe never traded (e.g. a cash book with interest): not a candidate
    assert pick_best(table)[0] == 1
    none = pd.DataFrame({"fast": [5, 10], "sharpe": [np.nan, np.nan], "trades": [0, 0]})
    assert pick_best(none) == (None, "none of the 2 combinations placed a trade")
    assert shown(np.nan) == "undefined" and shown(np.inf) == "undefined" and shown(0.123) == "0.12"


def test_profit_factor_is_undefined_without_a_losing_trade():
    idx = pd.date_range("2021-01-04", periods=5, freq="B")
    px = pd.DataFrame({"A": [10.0, 10, 12, 13, 13]}, index=idx)
    b = Bars(px, px, px, px)
    w = pd.DataFrame({"A": [0.5, np.nan, np.nan, 0.0, np.nan]}, index=idx)
    m = portfolio_metrics(simulate(w, b, CostModel(), 1000.0), 1000.0).iloc[0]
    assert m["closed_trades"] == 1 and m["win_rate"] == 1.0
    assert np.isnan(m["profit_factor"])


def test_a_report_without_trades_fails_its_check_unless_expected():
    from qt_assets.backtests.assets import trades_check

    assert trades_check(12, True).passed
    failed = trades_check(0, True)
    assert not failed.passed and "never became orders" in failed.metadata["why"].value
    assert trades_check(0, False).passed  # expect_trades: false
