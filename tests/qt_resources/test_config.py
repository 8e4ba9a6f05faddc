import pytest
import yaml

from qt_resources.config import ConfigError, load_config, parse_config
from qt_assets.features import available_features
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
    (lambda r: r["backtest"]["strategies"][2]["params"].update(lower=80),
     "backtest.strategies[2].params.lower: 80 is not below upper (70)"),
    (lambda r: r["backtest"]["strategies"][3]["params"].update(k=5), "backtest.strategies[3].params.k: 5 picks per side"),
    (lambda r: r["backtest"]["strategies"][1].pop("rule"), "backtest.strategies[1].rule: required for kind 'rule'"),
    (lambda r: r["backtest"]["strategies"][1].update(sizing={"kind": "martingale"}),
     "backtest.strategies[1].sizing.kind: 'martingale' is not one of"),
    (lambda r: r["backtest"]["strategies"][1].update(stops={"sl": 1.5}), "backtest.strategies[1].stops.sl: 1.5 is not < 1"),
    (lambda r: r["backtest"].update(execution="same_close"), "backtest.execution: 'same_close' is not one of"),
    (lambda r: r["backtest"]["walk_forward"].update(strategy="sma_cross"),
     "backtest.walk_forward.strategy: 'sma_cross' is not a model strategy"),
    (lambda r: r["backtest"]["strategies"][0].update(model="other"), "backtest.strategies[0].model: 'other' is not a model"),
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


def test_definitions_load_fails_with_key_path(tmp_path):
    from qt_jobs.definitions import load_definitions

    raw = repo_config()
    raw["risk"]["max_gross_exposure"] = 3
    p = tmp_path / "qtos.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"risk\.max_gross_exposure: 3 is not <= 1"):
        load_definitions(str(p))
