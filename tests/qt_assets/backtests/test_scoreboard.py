"""The scoreboard ranks strategies and agents on one common window with the same metrics, the DSR where a sweep
chose the parameters, and the config keys in which they differ; two materialisations compare by metadata."""

import numpy as np
import pandas as pd
import pytest

from qt_assets.backtests.metrics import returns_metrics
from qt_assets.backtests.scoreboard import MIN_SESSIONS, common_window, config_deltas, score


def _curve(start, n, drift, seed=0):
    idx = pd.bdate_range(start, periods=n)
    r = np.random.default_rng(seed).normal(drift, 0.01, n)
    return pd.Series(1e5 * np.cumprod(1 + r), index=idx)


def test_entries_are_ranked_on_the_common_window_only():
    """A strategy from 2020 and an agent from mid-2020: both are scored on the agent's sessions only, rebased to
    the session before the window (the strategy's earlier gains do not count)."""
    strat = _curve("2020-01-01", 300, 0.002, seed=1)
    agent = _curve("2020-07-01", 120, 0.0005, seed=2)
    table, win, why = score({"s": strat, "agent a": agent}, {"s": "strategy", "agent a": "agent (rule)"})
    assert why is None and win == (agent.index[0], min(strat.index[-1], agent.index[-1]))
    assert set(table["sessions"]) == {len(agent[(agent.index >= win[0]) & (agent.index <= win[1])])}
    cut = strat[(strat.index >= win[0]) & (strat.index <= win[1])]
    before = strat[strat.index < win[0]].iloc[-1]
    expected = returns_metrics(cut.to_frame(), before).iloc[0]
    assert table.loc["s", "sharpe"] == pytest.approx(expected["sharpe"])
    assert table.loc["s", "total_return"] == pytest.approx(cut.iloc[-1] / before - 1)
    # the strategy's whole-history total return is not what is ranked
    assert table.loc["s", "total_return"] < strat.iloc[-1] / 1e5 - 1
    assert list(table["rank"]) == [1, 2] and table["sharpe"].is_monotonic_decreasing


def test_no_ranking_without_enough_common_sessions_and_says_why():
    a, b = _curve("2020-01-01", 50, 0.001), _curve("2020-03-06", 50, 0.001)
    table, win, why = score({"a": a, "b": b}, {})
    assert table.empty and f"(< {MIN_SESSIONS})" in why
    table, win, why = score({"a": a, "c": _curve("2021-01-01", 50, 0.001)}, {})
    assert win is None and why.startswith("the curves share no session")
    assert common_window({"a": a}) == (a.index[0], a.index[-1])


def test_dsr_where_a_sweep_chose_the_parameters():
    s = _curve("2020-01-01", 250, 0.001, seed=3)
    trials = np.random.default_rng(4).normal(0.02, 0.03, 40)
    table, _, _ = score({"s": s, "t": _curve("2020-01-01", 250, 0.001, seed=5)}, {}, {"s": trials})
    assert 0 <= table.loc["s", "dsr"] <= 1 and table.loc["s", "sweep_trials"] == 40
    assert np.isnan(table.loc["t", "dsr"])


def test_config_deltas_show_only_the_keys_that_differ():
    a = {"strategy": {"rule": "sma_cross", "params": {"fast": 10, "slow": 50}, "entry": "state"}, "risk": {"cap": 0.25}}
    b = {"strategy": {"rule": "sma_cross", "params": {"fast": 20, "slow": 50}, "entry": "cross"}, "risk": {"cap": 0.25}}
    c = {"strategy": {"rule": "rsi", "name": "c"}, "agent": {"kind": "rule"}, "risk": {"cap": 0.25}}
    d = config_deltas({"a": a, "b": b, "c": c})
    assert list(d.columns) == ["strategy.entry", "strategy.params.fast", "strategy.rule"]
    assert d.loc["a", "strategy.params.fast"] == 10 and d.loc["c", "strategy.params.fast"] == "-"
    assert "agent.kind" not in d.columns and "strategy.name" not in d.columns  # only one entry has it; the row
    assert list(config_deltas({"a": a, "b": b}).columns) == ["strategy.entry", "strategy.params.fast"]


def test_two_materialisations_compare_by_metrics_and_config():
    import dagster as dg

    from qt_jobs.compare import compare

    a = {"sharpe": dg.MetadataValue.float(0.5), "trades": dg.MetadataValue.int(10), "window": "x",
         "strategy_config": dg.MetadataValue.json({"strategy": {"params": {"fast": 10}, "entry": "state"}})}
    b = {"sharpe": dg.MetadataValue.float(0.75), "trades": dg.MetadataValue.int(12), "window": "x",
         "strategy_config": dg.MetadataValue.json({"strategy": {"params": {"fast": 20}, "entry": "state"}})}
    metrics, changed = compare(a, b)
    assert ("sharpe", 0.5, 0.75, 0.25) in metrics and ("trades", 10.0, 12.0, 2.0) in metrics
    assert changed == [("strategy.params.fast", 10, 20)]
