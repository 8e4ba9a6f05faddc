import pytest
import yaml

from qt_resources.config import ConfigError, load_config, parse_config
from qt_assets.features.assets import available_features
from tests.conftest import REPO, repo_config


def problems(raw) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(raw, "test", known_features=available_features())
    return exc.value.problems


def test_repo_config_is_valid():
    cfg = load_config(REPO / "qtos.yaml", known_features=available_features())
    assert cfg.universe.symbols == ["AAPL", "GOOG", "IBM", "MSFT"]
    assert cfg.embargo >= cfg.label.horizon
    assert len(cfg.fingerprint()) == 16


def test_training_threads_do_not_change_the_fingerprint_but_results_do():
    base = parse_config(repo_config(), "test")
    raw = repo_config()
    raw["research"]["model"]["n_jobs"] = 2
    assert parse_config(raw, "test").fingerprint() == base.fingerprint()
    raw["research"]["model"]["seed"] = 8
    assert parse_config(raw, "test").fingerprint() != base.fingerprint()


def test_error_names_key_path_and_value():
    raw = repo_config()
    raw["agents"][0]["risk"] = {"max_position_pct": 1.7}
    assert problems(raw) == ["agents[0].risk.max_position_pct: 1.7 is not <= 1"]


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r["universe"].update(symbols=["AAPL", "aapl"]), "universe.symbols[1]: 'aapl' does not match"),
    (lambda r: r["data"].update(provider="bloomberg"), "data.provider: 'bloomberg' is not one of"),
    (lambda r: r["label"].update(horizon=0), "label.horizon: 0 is not >= 1"),
    (lambda r: r.update(brokerr={}), "brokerr: unknown key"),
    (lambda r: r.pop("research"), "research: required key is missing"),
    (lambda r: r["features"]["set"].append("alpha_42"), "features.set[7]: 'alpha_42' is not a feature of dbt_features"),
    (lambda r: r["research"]["split"].update(train_end="2020-01-01"), "research.split.train_end: 2020-01-01 is not inside"),
    (lambda r: r["agents"][0].update(model="other"), "agents[0].model: 'other' is not a model this project trains"),
    (lambda r: r["agents"][0]["selection"].update(top_k=9), "agents[0].selection.top_k: 9 is more than"),
    (lambda r: r["data"].update(start="2013-01-01", end="2012-01-01"), "data.start: 2013-01-01 is not before data.end"),
    (lambda r: r["label"].update(price="open"), "research.split.embargo: 5 is less than the label's span (6 sessions)"),
    (lambda r: r["label"].update(kind="meta_label"), "label.kind: 'meta_label' is not one of"),
    (lambda r: r["backtest"]["strategies"][1]["params"].update(fastt=3),
     "backtest.strategies[1].params.fastt: unknown parameter of rule 'sma_cross' (known: fast, slow)"),
    (lambda r: r["backtest"]["strategies"][1]["params"].update(fast=200),
     "backtest.strategies[1].params.fast: 200 is not below slow (100)"),
    (lambda r: r["backtest"]["strategies"][1]["sweep"].update(fast=[5, 2.5]),
     "backtest.strategies[1].sweep.fast[1]: 2.5 is not a whole number"),
    (lambda r: r["backtest"]["strategies"][1]["sweep"].update(sl=[0.05, 1.0]),
     "backtest.strategies[1].sweep.sl[1]: 1.0 is not in (0, 1)"),
    (lambda r: r["backtest"]["strategies"][2]["params"].update(lower=80),
     "backtest.strategies[2].params.lower: 80 is not below upper (70)"),
    (lambda r: r["backtest"]["strategies"][3]["params"].update(k=5), "backtest.strategies[3].params.k: 5 picks per side"),
    (lambda r: r["backtest"]["strategies"][1].pop("rule"), "backtest.strategies[1].rule: required for kind 'rule'"),
    (lambda r: r["backtest"]["strategies"][1].update(sizing={"kind": "martingale"}),
     "backtest.strategies[1].sizing.kind: 'martingale' is not a registered sizing kind (registered: equal, fixed_fraction"),
    (lambda r: r["backtest"]["strategies"][1].update(stops={"sl": 1.5}), "backtest.strategies[1].stops.sl: 1.5 is not < 1"),
    (lambda r: r["backtest"].update(execution="same_close"), "backtest.execution: 'same_close' is not one of"),
    (lambda r: r["backtest"]["walk_forward"].update(strategy="sma_cross"),
     "backtest.walk_forward.strategy: 'sma_cross' is not a model strategy"),
    (lambda r: r["backtest"]["strategies"][0].update(model="other"), "backtest.strategies[0].model: 'other' is not a model"),
    (lambda r: r["backtest"]["strategies"][0].update(entry="cross"), "backtest.strategies[0].entry: 'cross' is for rule"),
    (lambda r: r["backtest"]["strategies"][1].update(entry="event"), "backtest.strategies[1].entry: 'event' is not one of"),
    (lambda r: r["backtest"].update(shares="half"), "backtest.shares: 'half' is not one of"),
    # agents: unknown feature, model, prompt file, rule parameter; kinds and their required keys
    (lambda r: r["agents"].append({"name": "x", "kind": "llm", "prompt": "prompts/llm_agent.md", "features": ["ret_1d", "alpha_42"],
                                   "context": ["features"]}) or r.update(llm={"kind": "openai"}),
     "agents[2].features[1]: 'alpha_42' is not a feature of dbt_features"),
    (lambda r: r["agents"].append({"name": "x", "kind": "llm", "prompt": "prompts/nope.md"}) or r.update(llm={"kind": "openai"}),
     "agents[2].prompt: 'prompts/nope.md' is not a file"),
    (lambda r: r["agents"].append({"name": "x", "kind": "hybrid", "model": "qtos_xgb", "prompt": "prompts/hybrid_agent.md"}),
     "agents[2].kind: 'hybrid' needs an llm section with kind: openai"),
    (lambda r: r["agents"].append({"name": "x", "kind": "hybrid", "prompt": "prompts/hybrid_agent.md"}) or r.update(llm={"kind": "openai"}),
     "agents[2].model: required for kind 'hybrid'"),
    (lambda r: r["agents"].append({"name": "x", "kind": "llm"}) or r.update(llm={"kind": "openai"}),
     "agents[2].prompt: required for kind 'llm'"),
    (lambda r: r["agents"][1]["params"].update(fast=300), "agents[1].params.fast: 300 is not below slow (100)"),
    (lambda r: r["agents"][1]["params"].update(window=3), "agents[1].params.window: unknown parameter of rule 'sma_cross'"),
    (lambda r: r["agents"][1].pop("rule"), "agents[1].rule: required for kind 'rule'"),
    (lambda r: r["agents"][1].update(kind="oracle"), "agents[1].kind: 'oracle' is not one of"),
    (lambda r: r["agents"][1].update(context=["tea_leaves"]), "agents[1].context[0]: 'tea_leaves' is not one of"),
    (lambda r: r["agents"][1].update(name="trend2", model="qtos_xgb"), "agents[1].model: only model and hybrid agents take a model"),
    (lambda r: r["agents"][1].update(name="xgb_daily"), "agents[1].name: 'xgb_daily' is used by another agent"),
    (lambda r: r["risk"].update(max_open_positions=0), "risk.max_open_positions: 0 is not >= 1"),
    (lambda r: r["regime"].update(method="astrology"), "regime.method: 'astrology' is not one of"),
    (lambda r: r["risk"].update(kelly_window=10), "risk.kelly_window: 10 is below kelly_min_trades (20)"),
    (lambda r: r["agents"][1].update(risk={"kelly_min_trades": 150}), "agents[1].risk.kelly_window: 100 is below kelly_min_trades (150)"),
    (lambda r: r["allocation"].update(discipline_min_trades=80), "allocation.discipline_window: 50 is below discipline_min_trades (80)"),
    (lambda r: r["regime"].update(breadth_off=0.7), "regime.breadth_off: 0.7 is not below regime.breadth_on (0.6)"),
])
def test_each_error_names_its_key(mutate, expected):
    raw = repo_config()
    mutate(raw)
    found = problems(raw)
    assert any(p.startswith(expected) for p in found), found


def test_invalid_yaml_names_line(tmp_path):
    p = tmp_path / "qtos.yaml"
    p.write_text("universe:\n  symbols: [AAPL\n")
    with pytest.raises(ConfigError, match=r"<yaml>: not valid YAML at line \d+, column \d+"):
        load_config(p)


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    p = tmp_path / "qtos.yaml"
    text = (REPO / "qtos.yaml").read_text()
    text = text.replace("  provider: bundled", "  provider: bundled\n  provider: csv", 1)  # data.provider twice
    p.write_text(text)
    first = next(n for n, line in enumerate(text.splitlines(), start=1) if line == "  provider: bundled")
    with pytest.raises(ConfigError, match=rf"<yaml>: key 'provider' is given twice, on line {first} and on line "
                                          rf"{first + 1}: remove one"):
        load_config(p)


@pytest.mark.parametrize("listings, expected", [
    ({"NVDA": {"delisted": "2011-01-03"}}, "universe.listings: {'NVDA': "),
    ({"IBM": {"listed": "2011-01-03", "delisted": "2010-01-04"}},
     "universe.listings.IBM.delisted: '2010-01-04' is before listed 2011-01-03"),
    ({"IBM": {"until": "2011-01-03"}}, "universe.listings.IBM.until: unknown key"),
])
def test_listings_are_validated(listings, expected):
    raw = repo_config()
    raw["universe"]["listings"] = listings
    found = problems(raw)
    assert any(f.startswith(expected) for f in found), found
    assert "not in universe.symbols" in found[0] or "is before listed" in found[0] or "unknown key" in found[0]


def test_definitions_load_fails_with_key_path(tmp_path):
    from qt_jobs.definitions import load_definitions

    raw = repo_config()
    raw["risk"]["max_gross_exposure"] = 3
    p = tmp_path / "qtos.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"risk\.max_gross_exposure: 3 is not <= 1"):
        load_definitions(str(p))


def test_agent_risk_overrides_only_the_keys_it_sets_and_regime_multipliers_keep_defaults():
    raw = repo_config()
    raw["agents"][1]["risk"] = {"max_position_pct": 0.1}
    raw["allocation"] = {"regime_multiplier": {"risk_off": 0.2}}
    cfg = parse_config(raw, "test", known_features=available_features())
    r = cfg.risk_for(cfg.agents[1])
    assert r.max_position_pct == 0.1 and r.max_open_positions == cfg.risk.max_open_positions == 3
    assert r.max_drawdown_pct == cfg.risk.max_drawdown_pct and cfg.risk_for(cfg.agents[0]) == cfg.risk
    assert cfg.allocation.regime_multiplier == {"risk_on": 1.0, "neutral": 0.75, "risk_off": 0.2}


def test_the_cli_prints_the_problem_list_not_a_stack_of_our_frames(tmp_path):
    import os
    import subprocess

    from tests.conftest import REPO

    raw = repo_config()
    raw["risk"]["max_gross_exposure"] = 3
    raw["data"]["provider"] = "bloomberg"
    (tmp_path / "qtos.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "home").mkdir()
    env = {**os.environ, "QTOS_CONFIG": str(tmp_path / "qtos.yaml"), "DAGSTER_HOME": str(tmp_path / "home")}
    r = subprocess.run([str(REPO / ".venv" / "bin" / "dagster"), "definitions", "validate", "-m", "qt_jobs.definitions"],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 1
    assert "- data.provider: 'bloomberg' is not one of" in out and "- risk.max_gross_exposure: 3 is not <= 1" in out
    assert "qt_resources/config/" not in out and out.count('File "') <= 1, out  # one line of ours at most


def test_a_band_wider_than_every_target_weight_is_refused_with_both_values():
    """sma_cross with equal sizing over 100 symbols targets 1 % per position: a 2 % rebalance_band would swallow
    every order (the 100-symbol run that placed no trade in five years)."""
    raw = repo_config()
    raw["universe"]["symbols"] = [f"S{i:03d}" for i in range(100)]
    st = raw["backtest"]["strategies"][1]
    st["rebalance_band"] = 0.02
    st["sizing"] = {"kind": "equal"}
    found = [p for p in problems(raw) if "rebalance_band" in p]
    assert found == ["backtest.strategies[1].rebalance_band: 0.02 is wider than every weight the sizing targets "
                     "(0.01: 1/100 per position with sizing 'equal'): no order would ever be placed; lower the band "
                     "below 0.01 or hold fewer positions"]
    ok = repo_config()  # 4 symbols: 1/4 per position; a change of exactly the band is not below it
    ok["backtest"]["strategies"][1].update(rebalance_band=0.25, sizing={"kind": "equal"})
    parse_config(ok, "test")
    raw2 = repo_config()
    raw2["backtest"]["strategies"][1].update(rebalance_band=0.3, sizing={"kind": "target_percent", "weight": 0.25})
    assert any("0.3 is wider than every weight the sizing targets (0.25: sizing.weight of sizing "
               "'target_percent')" in p for p in problems(raw2))
