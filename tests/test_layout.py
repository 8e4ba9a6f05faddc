"""The layering CONTRIBUTING.md states, read from the code's imports: qt_resources imports no other package of
ours; qt_assets and qt_sensors import only qt_resources; only qt_jobs loads everything. Inside qt_assets, the
libraries (engines, models, rules) import neither Dagster nor an asset module, so they run and test without it."""

import ast

from tests.conftest import REPO

ALLOWED = {"qt_resources": set(), "qt_assets": {"qt_resources"}, "qt_sensors": {"qt_resources"},
           "qt_jobs": {"qt_assets", "qt_sensors", "qt_resources"}}
ASSET_MODULES = {"agents", "alt_data", "backtests", "execution", "features", "market_data", "research",
                 "walk_forward", "partition_events", "price_quality"}
LIBRARIES = {"engine", "metrics", "strategies", "sweep", "training", "tuning", "evaluation", "regime", "guardian",
             "agent_llm"}


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_packages_import_only_downwards():
    wrong = []
    for pkg, allowed in ALLOWED.items():
        for f in sorted((REPO / pkg).rglob("*.py")):
            for mod in _imports(f):
                top = mod.split(".")[0]
                if top in ALLOWED and top != pkg and top not in allowed:
                    wrong.append(f"{f.relative_to(REPO)} imports {mod}")
    assert not wrong, wrong


def test_every_qt_assets_module_is_classified():
    modules = {f.stem for f in (REPO / "qt_assets").glob("*.py")} - {"__init__"}
    assert modules == ASSET_MODULES | LIBRARIES, modules ^ (ASSET_MODULES | LIBRARIES)


def test_libraries_import_neither_dagster_nor_asset_modules():
    wrong = []
    for name in sorted(LIBRARIES):
        for mod in _imports(REPO / "qt_assets" / f"{name}.py"):
            parts = mod.split(".")
            if parts[0].startswith("dagster") or (parts[0] == "qt_assets" and len(parts) > 1
                                                   and parts[1] in ASSET_MODULES):
                wrong.append(f"qt_assets/{name}.py imports {mod}")
    assert not wrong, wrong
