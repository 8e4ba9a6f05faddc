"""The sizing seam as docs/extending.md describes it: one file registering one multiplier function, named in
qtos.yaml's ``plugins:``; the config validates the kind and its keys from the registry, and backtests, the
compiled sweep and rule agents size with it."""

import textwrap

import numpy as np
import pandas as pd
import pytest
import yaml

from qt_resources.config import ConfigError, load_config
from tests.conftest import REPO, repo_config

INVERSE_PRICE = textwrap.dedent('''\
    """inverse_price {budget}: each position gets `budget` / price of weight, capped at 1."""
    import numpy as np

    from qt_resources.plugins import Param, sizing_kind


    @sizing_kind("inverse_price", {"budget": Param(5.0, float, 0, 1000, "weight x price per position", open_lo=True)},
                 description="budget / price per position (cheaper symbols weigh more), re-targeted each session")
    def inverse_price(params, close):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.nan_to_num(np.minimum(1.0, params["budget"] / close.to_numpy(dtype=float)), nan=0.0)
''')


def _project(tmp_path, sizing: dict):
    (tmp_path / "my_sizing").mkdir(exist_ok=True)
    (tmp_path / "my_sizing" / "inverse_price.py").write_text(INVERSE_PRICE)
    raw = repo_config()
    raw["plugins"] = ["my_sizing"]
    raw["backtest"]["strategies"] = [{"name": "cheap", "kind": "rule", "rule": "sma_cross",
                                      "params": {"fast": 5, "slow": 20}, "sizing": sizing,
                                      "sweep": {"fast": [3, 5], "slow": [20]}}]
    raw["backtest"].pop("walk_forward", None)
    raw["agents"].append({"name": "cheap_agent", "kind": "rule", "rule": "sma_cross",
                          "params": {"fast": 5, "slow": 20}, "sizing": sizing})
    (tmp_path / "qtos.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return tmp_path / "qtos.yaml"


def test_a_sizing_kind_added_in_one_file_is_validated_from_the_config(tmp_path):
    cfg = load_config(_project(tmp_path, {"kind": "inverse_price", "budget": 20}))
    assert cfg.backtest.strategies[0].sizing.kind_params() == {"budget": 20.0}
    assert load_config(_project(tmp_path, {"kind": "inverse_price"})).backtest.strategies[0].sizing.kind_params() \
        == {"budget": 5.0}
    with pytest.raises(ConfigError) as exc:
        load_config(_project(tmp_path, {"kind": "inverse_price", "budget": 0, "budgt": 3}))
    assert exc.value.problems == [
        "backtest.strategies[0].sizing.budget: 0 is not in (0, 1000]",
        "backtest.strategies[0].sizing.budgt: unknown parameter of sizing kind 'inverse_price' (known: budget)",
        "agents[2].sizing.budget: 0 is not in (0, 1000]",
        "agents[2].sizing.budgt: unknown parameter of sizing kind 'inverse_price' (known: budget)"]
    with pytest.raises(ConfigError) as exc:
        load_config(_project(tmp_path, {"kind": "inverse_prices"}))
    assert exc.value.problems[0].startswith(
        "backtest.strategies[0].sizing.kind: 'inverse_prices' is not a registered sizing kind (registered: equal, "
        "fixed_fraction, inverse_price, target_percent, vol_target;")


def test_the_added_sizing_kind_sizes_backtests_sweeps_and_agents(tmp_path):
    from qt_assets.agents.assets import AgentInputs, rule_intents
    from qt_assets.backtests.runs import run_strategy, run_sweep
    from qt_assets.backtests.metrics import portfolio_metrics
    from tests.qt_assets.backtests.test_engine import random_bars

    cfg = load_config(_project(tmp_path, {"kind": "inverse_price", "budget": 5}))
    st = cfg.backtest.strategies[0]
    risk = cfg.risk_for(st)
    bars = random_bars(np.random.default_rng(2), 300, cfg.universe.symbols, start=60.0, vol=0.015)
    bars.close.iloc[:, 1] *= 0.3  # one cheap symbol: its weight is larger
    bars.open.iloc[:, 1] *= 0.3
    _, weights, _ = run_strategy(cfg, st.for_combo({"fast": 5, "slow": 20}), bars)
    # independent of the registry: direction x min(1, 5 / close), capped per position, gross scaled down
    c = bars.close

    def expected(risk):
        long = (c.rolling(5, min_periods=5).mean() > c.rolling(20, min_periods=20).mean()) & c.rolling(20).mean().notna()
        w = (long.astype(float) * np.minimum(1.0, 5.0 / c)).clip(upper=risk.max_position_pct)
        gross = w.abs().sum(axis=1)
        return w.mul(np.where(gross > risk.max_gross_exposure, risk.max_gross_exposure / gross, 1.0), axis=0)

    w = expected(risk)
    np.testing.assert_allclose(weights.to_numpy(), w.to_numpy(), rtol=0, atol=1e-15)
    held = weights[weights > 0]
    assert held.iloc[:, 1].mean() > held.drop(columns=held.columns[1]).mean().max()  # the cheap symbol weighs more

    table = run_sweep(cfg, st, bars, None)
    for _, row in table.iterrows():
        pf_i, _, _ = run_strategy(cfg, st.for_combo({"fast": int(row["fast"]), "slow": int(row["slow"])}), bars)
        m = portfolio_metrics(pf_i, cfg.backtest.initial_cash).iloc[0]
        for k in m.index:
            assert row[k] == pytest.approx(m[k], rel=1e-12, abs=1e-15, nan_ok=True), k

    agent = next(a for a in cfg.agents if a.name == "cheap_agent")
    sessions = [d.strftime("%Y-%m-%d") for d in c.index[-5:]]
    intents = rule_intents(cfg, agent, AgentInputs(sessions=sessions, closes=c, bars=pd.DataFrame(),
                                                   features=pd.DataFrame(), regime=pd.DataFrame()))
    last = intents[intents["session"] == sessions[-1]].set_index("symbol")["target_weight"]
    np.testing.assert_allclose(last.reindex(c.columns).to_numpy(), expected(cfg.risk_for(agent)).iloc[-1].to_numpy(),
                               rtol=0, atol=1e-15)
    assert intents["reason"].str.contains(r"\(inverse_price sizing\)").any()


def test_the_docs_show_this_sizing_file_verbatim():
    assert INVERSE_PRICE in (REPO / "docs" / "extending.md").read_text()


def test_the_built_in_kinds_params_are_the_config_keys_with_the_same_defaults_and_bounds():
    """The built-in kinds' parameters are declared twice, as SizingSection keys (documented, validated by pydantic)
    and in their registry entries (what the sizing code reads): they must agree."""
    from qt_resources.config import SizingSection
    from qt_resources.plugins import SIZING_KINDS

    fields = SizingSection.model_fields
    checked = 0
    for name in ("equal", "fixed_fraction", "target_percent", "vol_target"):
        for key, p in SIZING_KINDS.get(name).params.items():
            f = fields[key]
            bounds = {type(m).__name__: getattr(m, type(m).__name__.lower()) for m in f.metadata}
            lo_key = "Gt" if p.open_lo else "Ge"
            assert (f.default, bounds.get(lo_key), bounds.get("Le")) == (p.default, p.lo, p.hi), (name, key)
            checked += 1
    assert checked == 5
