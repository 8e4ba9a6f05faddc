"""The layering CONTRIBUTING.md states, read from the code's imports: qt_resources imports no other package of
ours; qt_assets and qt_sensors import only qt_resources; only qt_jobs loads everything. Inside qt_assets, the
libraries (engines, models, rules) import neither Dagster nor an asset module, so they run and test without it."""

import ast

from tests.conftest import REPO

ALLOWED = {"qt_resources": set(), "qt_assets": {"qt_resources"}, "qt_sensors": {"qt_resources"},
           "qt_jobs": {"qt_assets", "qt_sensors", "qt_resources"}}
STAGES = ("market_data", "alt_data", "features", "research", "backtests", "agents", "execution")  # data order
# per stage: the modules holding Dagster assets; every other module of the stage is a library
ASSET_MODULES = {stage: {"assets"} for stage in STAGES} | {"backtests": {"assets", "walk_forward"}}
SHARED = {"__init__", "partition_events"}  # qt_assets' top level: the package docstring, shared Dagster plumbing


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


def test_qt_assets_is_one_package_per_stage():
    top = {p.stem if p.is_file() else p.name for p in (REPO / "qt_assets").iterdir()
           if p.suffix == ".py" or (p.is_dir() and p.name != "__pycache__")}
    assert top == set(STAGES) | SHARED, top ^ (set(STAGES) | SHARED)
    for stage in STAGES:
        assert (REPO / "qt_assets" / stage / "assets.py").is_file(), stage
        assert (REPO / "tests" / "qt_assets" / stage).is_dir() or stage == "alt_data", f"tests/qt_assets/{stage}"


def _libraries():
    for stage in STAGES:
        for f in sorted((REPO / "qt_assets" / stage).rglob("*.py")):  # with the stage's sub-packages (rules/, ...)
            if f.parent.name != stage or f.stem not in ASSET_MODULES[stage]:
                yield f


def test_libraries_import_neither_dagster_nor_asset_modules():
    """A stage's library modules (and its __init__) run without Dagster: a test or a notebook imports the engine,
    the rules or the guardian without loading the graph."""
    asset_modules = {f"qt_assets.{stage}.{m}" for stage in STAGES for m in ASSET_MODULES[stage]}
    asset_modules |= {"qt_assets.partition_events"}
    libraries = list(_libraries())
    assert len(libraries) >= 12, libraries
    wrong = []
    for f in libraries:
        for mod in _imports(f):
            if mod.split(".")[0].startswith("dagster") or any(mod == a or mod.startswith(a + ".")
                                                              for a in asset_modules):
                wrong.append(f"{f.relative_to(REPO)} imports {mod}")
    assert not wrong, wrong


def test_a_library_imports_without_dagster():
    """Checked by running: the engine, the rules, the guardian and the feature kernels (which dbt's process
    imports) load in a fresh interpreter with no dagster module imported."""
    import subprocess
    import sys

    code = ("import sys; import qt_assets.backtests.strategies, qt_assets.backtests.sweep, qt_assets.agents.guardian, "
            "qt_assets.research.training, qt_assets.features.kernels; bad = [m for m in sys.modules if m.split('.')[0].startswith('dagster')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_model_pickled_before_the_move_loads():
    """Registered models pickle their pipeline's classes by module name: qt_assets.training.MedianImputer (before
    the stage packages) still resolves, to the class now in qt_assets.research.training."""
    import pickle

    from qt_assets.research.training import MedianImputer

    old = pickle.dumps(MedianImputer(), protocol=0).replace(b"qt_assets.research.training", b"qt_assets.training")
    assert b"qt_assets.training" in old
    assert type(pickle.loads(old)) is MedianImputer


def test_validating_a_config_loads_no_heavy_library():
    """Loading the registries (every config validation: the CLI, sensors, the docs) imports every built-in rule,
    sizing kind and model family; their modules keep pandas, numba, vectorbt, sklearn and xgboost inside the
    functions that use them."""
    import subprocess
    import sys

    code = ("import sys; import qt_resources.config as c; c.load_config(); heavy = sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('pandas', 'numba', 'vectorbt', 'sklearn', 'xgboost', 'dagster')); print(heavy); "
            "sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
