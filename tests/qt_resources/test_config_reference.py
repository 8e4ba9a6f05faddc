"""docs/config.md is generated from the config models and committed: it must be current, and it must carry each
key's type, default, constraints and description."""

from qt_resources.config_reference import render


def test_the_generated_docs_are_current():
    from qt_jobs.docs import stale

    assert stale() == [], f"{stale()} stale: run `make docs` and commit"


def test_every_key_is_documented_with_type_default_and_constraints():
    page = render()
    rows = {line.split(" | ")[0].strip("| `"): line for line in page.splitlines() if line.startswith("| `")}
    assert "| `label.horizon` | int | `5` | >= `1`, <= `60` |" in rows["label.horizon"]
    assert "`forward_return_class` \\| `vol_scaled_class` \\| `triple_barrier`" in rows["label.kind"]
    assert "required" in rows["data.start"]
    assert "each matches `^[A-Z][A-Z0-9.\\-]{0,9}$`" in rows["universe.symbols"]
    assert "first session the symbol traded" in rows["universe.listings.<key>.listed"]
    # nested sections of lists and of optional sections are expanded
    assert "agents[].risk.max_position_pct" in rows and "backtest.strategies[].sizing.kind" in rows
    assert "backtest.walk_forward.train_sessions" in rows
    assert not any(k.endswith("base_dir") for k in rows)
