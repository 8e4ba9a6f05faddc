import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")

REPO = Path(__file__).resolve().parent.parent


def repo_config() -> dict:
    return yaml.safe_load((REPO / "qtos.yaml").read_text())


def write_config(tmp: Path, **overrides) -> Path:
    """A project config in ``tmp`` with its own warehouse/MLflow/report folders; ``overrides`` replace
    top-level sections."""
    raw = repo_config()
    raw["storage"] = {"warehouse_dir": str(tmp / "warehouse"), "mlflow_dir": str(tmp / "mlflow"),
                      "reports_dir": str(tmp / "reports")}
    raw.update(overrides)
    path = tmp / "qtos.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


SHORT_WINDOW = {
    "data": {"provider": "bundled", "start": "2010-03-01", "end": "2011-06-30"},
    "research": {**repo_config()["research"], "split": {"train_end": "2010-12-31", "embargo": 5, "gate_sessions": 40},
                 "cv": {"folds": 3, "min_train_sessions": 100}, "tuning": {"n_trials": 4},
                 "promotion": {"min_ic": None}},  # gates are tested in tests/qt_assets/research/test_research.py
    "backtest": {**repo_config()["backtest"], "walk_forward": {"strategy": "xgb_topk", "train_sessions": 120,
                                                               "test_sessions": 60}},
}


def local_instance(home: Path):
    """A persistent Dagster instance in ``home`` on the embedded default's storage (dagster.yaml: batched SQLite
    event log), as ``make demo`` uses it."""
    import dagster as dg

    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    return dg.DagsterInstance.from_config(str(home))


def run_summary(instance, key) -> dict:
    """Metadata of the latest run-summary observation of ``key`` (qt_assets/partition_events.py: a step over
    several partitions keeps its tables/JSON there, not in each partition's materialisation)."""
    import dagster as dg

    recs = instance.fetch_observations(dg.AssetKey.from_coercible(key), limit=1).records
    assert recs, f"no run-summary observation for {key}"
    return recs[0].asset_observation.metadata


LONGEST_FIRST = ("test_secrets.py::", "test_celery.py::", "test_definitions.py::test_cli_", "test_queue.py::")


ON_SHORT_RUN = pytest.mark.xdist_group("short_run")  # on every test that uses the short_run fixture
# short-run tests that change the run (retrain a version, move the champion, swap the registry): after the readers
SHORT_RUN_WRITERS = ("tests/qt_assets/research/test_research.py::",)


@pytest.hookimpl(trylast=True)  # after pytest-xdist's own hook
def pytest_collection_modifyitems(config, items):
    """Every test that uses the session-wide short run (directly or through a fixture) must carry ON_SHORT_RUN,
    so that it runs on the one xdist worker that materialises the run.

    pytest-xdist 3.8's `--dist loadgroup` marks a group by appending `@<group>` to `item._nodeid`, which pytest 9.2
    no longer reads (its nodeid comes from `item._id`), so the groups were silently ignored and both workers built
    the short run (seen with `pytest -v -n 2`: a group's tests on gw0 and gw1). The suffix is set here instead."""
    from _pytest.nodeid import coerce_node_id

    unmarked = [i.nodeid for i in items if "short_run" in getattr(i, "fixturenames", ())
                and not any(m.args == ("short_run",) for m in i.iter_markers("xdist_group"))]
    if unmarked:
        raise pytest.UsageError(f"tests using short_run without @ON_SHORT_RUN (tests/conftest.py): {unmarked}")
    if getattr(config.option, "loadgroup", False):
        for item in items:
            groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                             for m in item.iter_markers("xdist_group")})
            if groups and "@" not in item.nodeid:
                item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(groups)}")
    # longest first (pytest --durations on CI, 2026-12-04), so no worker is left with a long test at the end:
    # the secret scan's CLI run, then the short-run group, then the other long ones
    def rank(item) -> float:
        if "short_run" in getattr(item, "fixturenames", ()):
            return 1.5 if any(w in item.nodeid for w in SHORT_RUN_WRITERS) else 1
        return next((2 * k for k, name in enumerate(LONGEST_FIRST) if name in item.nodeid), 2 * len(LONGEST_FIRST))

    items.sort(key=rank)


@pytest.fixture(scope="session")
def short_run(tmp_path_factory):
    """The whole graph materialised in-process on a short window, once per test session."""
    import dagster as dg

    from qt_jobs.definitions import load_definitions
    from qt_jobs.jobs import FULL_GRAPH, WALK_FORWARD

    tmp = tmp_path_factory.mktemp("short")
    cfg_path = write_config(tmp, **SHORT_WINDOW)
    defs = load_definitions(str(cfg_path))
    job = defs.resolve_job_def(FULL_GRAPH)
    keys = job.partitions_def.get_partition_keys()
    instance = local_instance(tmp / "dagster_home")
    result = job.execute_in_process(
        instance=instance,
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
    )
    wf = defs.resolve_job_def(WALK_FORWARD)
    windows = wf.partitions_def.get_partition_keys()
    wf_result = wf.execute_in_process(
        instance=instance,
        tags={"dagster/asset_partition_range_start": windows[0], "dagster/asset_partition_range_end": windows[-1]},
    )
    return {"defs": defs, "result": result, "wf_result": wf_result, "instance": instance, "keys": keys, "tmp": tmp,
            "config": cfg_path}
