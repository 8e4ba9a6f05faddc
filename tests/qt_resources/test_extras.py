"""Optional integrations (pyproject extras): a config selecting one whose package is missing is refused when it
loads, one problem per setting, each naming the extra to install. The real default-only venv is exercised in
tests/test_environment.py; here the import lookup is replaced."""

import pytest

from qt_assets.features.assets import available_features
from qt_resources.config import ConfigError, parse_config
from qt_resources.extras import missing_extras
from tests.conftest import repo_config


def _cfg(**sections):
    raw = repo_config()
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v}
    return parse_config(raw, "test", known_features=available_features())


def nothing_installed(_module):
    return None


def test_the_shipped_config_needs_no_extra():
    assert missing_extras(_cfg(), installed=nothing_installed) == []


@pytest.mark.parametrize("sections, setting, dist, extra", [
    ({"broker": {"kind": "alpaca"}}, "broker.kind: 'alpaca'", "alpaca-py", "live"),
    ({"data": {"provider": "yfinance"}}, "data.provider: 'yfinance'", "yfinance", "live"),
    ({"data": {"provider": "alpaca"}}, "data.provider: 'alpaca'", "alpaca-py", "live"),
    ({"news": {"provider": "alpaca"}}, "news.provider: 'alpaca'", "alpaca-py", "live"),
    ({"llm": {"kind": "openai"}}, "llm.kind: 'openai'", "openai", "live"),
])
def test_a_selected_integration_without_its_package_names_the_extra(sections, setting, dist, extra):
    cfg = _cfg(**sections)  # the test environment has every extra: this loads
    assert missing_extras(cfg) == []
    (problem,) = missing_extras(cfg, installed=nothing_installed)
    assert problem.startswith(f"{setting} needs {dist}, which is in the '{extra}' extra")
    assert f"make install EXTRAS={extra}" in problem


def test_every_missing_integration_is_listed_in_the_config_error(monkeypatch):
    import qt_resources.extras as extras

    monkeypatch.setattr(extras.missing_extras, "__defaults__", (nothing_installed,))  # what parse_config calls
    raw = repo_config()
    raw["broker"] = {**raw["broker"], "kind": "alpaca"}
    raw["llm"] = {"kind": "openai"}
    with pytest.raises(ConfigError) as exc:
        parse_config(raw, "test", known_features=available_features())
    assert [p.split(" needs ")[0] for p in exc.value.problems] == ["broker.kind: 'alpaca'", "llm.kind: 'openai'"]
