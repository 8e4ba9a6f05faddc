"""The rule seam as docs/extending.md describes it: one file registering one function, named in qtos.yaml's
``plugins:``; the config validates it from the registry, and backtests, sweeps and rule agents use it."""

import textwrap

import numpy as np
import pandas as pd
import pytest
import yaml

from qt_resources.config import ConfigError, load_config
from qt_resources.plugins import RULES, RegistryError, Rule
from tests.conftest import repo_config

# the file a user writes (the example of docs/extending.md, verbatim: a test below checks the page shows it)
BREAKOUT = textwrap.dedent('''\
    """breakout {window}: long while the close is above the highest close of the previous `window` sessions."""
    import numpy as np

    from qt_resources.plugins import Param, rule


    @rule("breakout", {"window": Param(20, int, 2, 500, "sessions of the prior high")},
          description="long while the close is above the prior `window`-session high")
    def breakout(params, close, longshort, cache):
        prior_high = close.shift(1).rolling(int(params["window"]), min_periods=int(params["window"])).max()
        long = (close > prior_high).to_numpy(dtype=float)
        if longshort:
            prior_low = close.shift(1).rolling(int(params["window"]), min_periods=int(params["window"])).min()
            return long - (close < prior_low).to_numpy(dtype=float)
        return long
''')


def _project(tmp_path, strategy: dict, agent_params: dict | None = None):
    (tmp_path / "my_rules").mkdir(exist_ok=True)
    (tmp_path / "my_rules" / "breakout.py").write_text(BREAKOUT)
    raw = repo_config()
    raw["plugins"] = ["my_rules"]
    raw["backtest"]["strategies"] = [{"name": "brk", "kind": "rule", **strategy}]
    raw["backtest"].pop("walk_forward", None)
    raw["agents"].append({"name": "brk_agent", "kind": "rule", "rule": "breakout", "params": agent_params or {}})
    (tmp_path / "qtos.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return tmp_path / "qtos.yaml"


def test_a_rule_added_in_one_file_is_validated_from_the_config(tmp_path):
    path = _project(tmp_path, {"rule": "breakout", "params": {"window": 10}, "sweep": {"window": [5, 10, 30]}})
    cfg = load_config(path)
    st = cfg.backtest.strategies[0]
    assert isinstance(RULES.get("breakout"), Rule) and "breakout" in RULES.names()
    assert st.rule_params() == {"window": 10}
    # its parameter table is the config's: range, whole numbers, unknown keys, for params and sweeps alike
    with pytest.raises(ConfigError) as exc:
        load_config(_project(tmp_path, {"rule": "breakout", "params": {"window": 1, "windw": 3},
                                        "sweep": {"window": [5, 2.5]}}, agent_params={"window": 900}))
    assert exc.value.problems == [
        "backtest.strategies[0].params.window: 1.0 is not in [2, 500]",
        "backtest.strategies[0].params.windw: unknown parameter of rule 'breakout' (known: window)",
        "backtest.strategies[0].sweep.window[1]: 2.5 is not a whole number",
        "agents[2].params.window: 900.0 is not in [2, 500]"]
    # a name nobody registered: the error lists what is registered, the new rule included
    with pytest.raises(ConfigError) as exc:
        load_config(_project(tmp_path, {"rule": "breakouts"}))
    (msg,) = exc.value.problems
    assert msg.startswith("backtest.strategies[0].rule: 'breakouts' is not a registered rule (registered: breakout, "
                          "momentum_topk, rsi_threshold, sma_cross; to add one see docs/extending.md)"), msg
    # the fingerprint covers the plugin file's contents
    fp = cfg.fingerprint()
    path = _project(tmp_path, {"rule": "breakout", "params": {"window": 10}, "sweep": {"window": [5, 10, 30]}})
    assert load_config(path).fingerprint() == fp
    (tmp_path / "my_rules" / "breakout.py").write_text(BREAKOUT + "\n# edited\n")
    assert load_config(path).fingerprint() != fp


def test_a_missing_or_broken_plugin_file_is_named(tmp_path):
    raw = repo_config()
    raw["plugins"] = ["nowhere.py", "broken.py"]
    (tmp_path / "broken.py").write_text("import numpy as np\nraise RuntimeError('half-written rule')\n")
    (tmp_path / "qtos.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "qtos.yaml")
    assert exc.value.problems[0] == f"plugins[0]: 'nowhere.py': no such file or folder (relative to {tmp_path})"
    assert exc.value.problems[1] == f"plugins[1]: {tmp_path / 'broken.py'}: RuntimeError: half-written rule"


def test_a_plugin_cannot_replace_a_built_in_rule(tmp_path):
    (tmp_path / "mine.py").write_text("from qt_resources.plugins import Param, rule\n\n\n"
                                      "@rule('sma_cross', {'fast': Param(5, int, 1, 9)})\n"
                                      "def sma_cross(params, close, longshort, cache):\n    return close * 0.0\n")
    raw = repo_config()
    raw["plugins"] = ["mine.py"]
    (tmp_path / "qtos.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "qtos.yaml")
    assert "RegistryError: rule 'sma_cross' is registered twice: by qt_assets.backtests.rules.sma_cross and " \
           "qtos_plugin_mine_" in exc.value.problems[0]
    assert RULES.get("sma_cross").module == "qt_assets.backtests.rules.sma_cross"
    with pytest.raises(RegistryError):
        RULES.get("no_such_rule")


def test_the_added_rule_trades_in_a_backtest_a_sweep_and_an_agent(tmp_path):
    """Its directions drive the engine (entries the session after the close breaks out, at the open), the sweep
    runs it through its generic path and gives each combination exactly its own backtest's metrics, and a rule
    agent turns it into targets with the strategy's sizing."""
    from qt_assets.agents.assets import AgentInputs, rule_intents
    from qt_assets.backtests.runs import run_strategy, run_sweep
    from qt_assets.backtests.metrics import portfolio_metrics
    from tests.qt_assets.backtests.test_engine import random_bars

    cfg = load_config(_project(tmp_path, {"rule": "breakout", "params": {"window": 10}, "sweep": {"window": [5, 10]}},
                               agent_params={"window": 10}))
    st = cfg.backtest.strategies[0]
    bars = random_bars(np.random.default_rng(11), 300, cfg.universe.symbols, drift=0.0004, vol=0.015)
    pf, weights, _ = run_strategy(cfg, st.for_combo({"window": 10}), bars)
    # independent of the registry: the breakout condition computed here
    c = bars.close
    signal = c > c.shift(1).rolling(10, min_periods=10).max()
    held = weights.fillna(0.0) > 0
    assert held.to_numpy().sum() > 20
    assert (held == signal).all().all()
    orders = pf.orders.records_readable
    assert len(orders) > 10
    first_buy = orders[orders["Side"] == "Buy"].iloc[0]
    sym = first_buy["Column"][1] if isinstance(first_buy["Column"], tuple) else first_buy["Column"]
    entry_day = signal[sym].idxmax()  # first session the close broke out: filled at the next session's open
    nxt = c.index[c.index.get_loc(entry_day) + 1]
    assert first_buy["Timestamp"] == nxt

    table = run_sweep(cfg, st, bars, None)
    assert list(table["window"]) == [5, 10]
    for _, row in table.iterrows():
        pf_i, _, _ = run_strategy(cfg, st.for_combo({"window": int(row["window"])}), bars)
        m = portfolio_metrics(pf_i, cfg.backtest.initial_cash).iloc[0]
        for k in m.index:
            assert row[k] == pytest.approx(m[k], rel=1e-12, abs=1e-15, nan_ok=True), k

    agent = next(a for a in cfg.agents if a.name == "brk_agent")
    sessions = [d.strftime("%Y-%m-%d") for d in c.index[-5:]]
    inp = AgentInputs(sessions=sessions, closes=c, bars=pd.DataFrame(), features=pd.DataFrame(), regime=pd.DataFrame())
    intents = rule_intents(cfg, agent, inp)
    last = intents[intents["session"] == sessions[-1]].set_index("symbol")
    assert (last["score"] == signal.iloc[-1].astype(float)).all()
    assert last["reason"].str.startswith("breakout(window=10)").all()
    assert isinstance(weights, pd.DataFrame)


def test_the_docs_show_this_rule_file_verbatim():
    from tests.conftest import REPO

    assert BREAKOUT in (REPO / "docs" / "extending.md").read_text()
