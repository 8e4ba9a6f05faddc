"""Research sensors against a real MLflow registry (SQLite), a real DuckDB warehouse and an ephemeral Dagster
instance, evaluated with Dagster's sensor test utilities (build_sensor_context + evaluate_tick)."""

import json
import math

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from qt_assets.agents.assets import build_agent_assets
from qt_resources.llm import NoLLM
from qt_resources.calendar import sessions
from qt_resources.config import parse_config
from qt_resources.registry import MlflowRegistry
from qt_resources.warehouse import DuckDBWarehouse
from qt_sensors.research import build_research_sensors, psi

RETRAIN, DECISIONS = "retrain_model", "decisions_refresh"


def _cfg(model: str):
    return parse_config({
        "universe": {"symbols": ["AAA", "BBB"]},
        "data": {"start": "2020-01-01", "end": "2021-12-31"},
        "features": {"set": ["f_a", "f_b", "f_c"]},
        "research": {"model": {"name": model}, "split": {"train_end": "2020-06-30"},
                     "retrain": {"after_sessions": 3, "drift_psi": 0.25, "drift_window": 10, "drift_bins": 10}},
        "agents": [{"name": "alpha", "kind": "model", "model": model},
                   {"name": "beta", "kind": "model", "model": model},
                   {"name": "gamma", "kind": "model", "model": model}],
    })


def _sensors(model: str) -> dict[str, dg.SensorDefinition]:
    return {s.name: s for s in build_research_sensors(_cfg(model), retrain_job=RETRAIN, decisions_job=DECISIONS)}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """One real MLflow store for the module (creating its SQLite schema is the slow part); each test uses its
    own registered model name."""
    return MlflowRegistry(store_dir=str(tmp_path_factory.mktemp("mlflow")))


def _register(registry: MlflowRegistry, name: str, tags_per_version: list[dict]) -> None:
    client = registry.client()
    client.create_registered_model(name)
    for i, tags in enumerate(tags_per_version, start=1):
        mv = client.create_model_version(name, source=f"{registry.store_dir}/artifacts/{name}/{i}", tags=tags)
        assert str(mv.version) == str(i)


def _tick(sensor, cursor=None, instance=None, definitions=None, **resources):
    ctx = dg.build_sensor_context(instance=instance or dg.DagsterInstance.ephemeral(), cursor=cursor,
                                  resources=resources, definitions=definitions)
    return sensor.evaluate_tick(ctx)


def _decisions_definitions(model: str, sensor, resources) -> dg.Definitions:
    """The real decisions/<agent> assets and a session-partitioned job over them: partitioned run requests
    with an asset selection are resolved (and validated) against these."""
    partitions = dg.StaticPartitionsDefinition(sessions("2021-01-04", "2021-01-08"))
    job = dg.define_asset_job(DECISIONS, selection=dg.AssetSelection.groups("agents"))
    assets = build_agent_assets(_cfg(model), partitions, dg.AssetKey("features_daily"))
    return dg.Definitions(assets=assets, jobs=[job], sensors=[sensor], resources=resources)


# --- psi --------------------------------------------------------------------------------------
def test_psi_hand_computed():
    train = np.arange(1, 11, dtype=float)  # 2 bins: one edge at the median 5.5 -> p_train = (0.5, 0.5)
    # live (1, 1, 1, 9) -> p_live = (0.75, 0.25): 0.25 ln(0.75/0.5) - 0.25 ln(0.25/0.5) = 0.25 ln 3
    assert psi(train, np.array([1, 1, 1, 9.0]), 2) == pytest.approx(0.25 * math.log(3), abs=1e-12)
    # NaNs are dropped, not binned
    assert psi(np.append(train, np.nan), np.array([1, 1, np.nan, 1, 9.0]), 2) == pytest.approx(0.25 * math.log(3))
    # an empty live bin is floored at 1e-4: p_live = (1, 1e-4)
    expected = (1 - 0.5) * math.log(1 / 0.5) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    assert psi(train, np.array([1.0, 2, 3]), 2) == pytest.approx(expected, abs=1e-12)
    # values at or beyond the training range fall in the open outer bins; an edge value goes up
    assert psi(train, np.array([-100.0, 5.5]), 2) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(psi(train, np.array([np.nan, np.nan]), 2))
    with pytest.raises(ValueError):
        psi(train, train, 1)


def test_psi_identical_is_zero_and_shift_is_large():
    rng = np.random.default_rng(0)
    x = rng.normal(size=2000)
    assert psi(x, x, 10) == pytest.approx(0.0, abs=1e-12)
    assert psi(x, rng.normal(size=2000), 10) < 0.05
    assert psi(x, rng.normal(loc=1.0, size=2000), 10) > 0.25


# --- champion_changed -----------------------------------------------------------------------------
def _materialise(instance, agent: str, partition: str, version: str) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(
        asset_key=dg.AssetKey(["decisions", agent]), partition=partition, metadata={"model_version": version}))


def test_champion_changed_requests_latest_partitions_on_a_hand_promotion(registry, tmp_path):
    name = "m_champ"
    sensor = _sensors(name)["champion_changed"]
    assert sensor.job_name == DECISIONS and sensor.default_status == dg.DefaultSensorStatus.STOPPED
    instance = dg.DagsterInstance.ephemeral()
    defs = _decisions_definitions(name, sensor, {"model_registry": registry, "llm": NoLLM(),
                                                 "warehouse": DuckDBWarehouse(root=str(tmp_path))})

    def tick(cursor=None):
        return _tick(sensor, cursor=cursor, instance=instance, definitions=defs, model_registry=registry)

    no_model = tick()
    assert no_model.run_requests == [] and "no version has alias 'champion'" in no_model.skip_message

    _register(registry, name, [{}, {}])
    client = registry.client()
    client.set_registered_model_alias(name, "champion", "1")
    _materialise(instance, "alpha", "2021-01-04", "1")
    _materialise(instance, "alpha", "2021-01-05", "1")
    _materialise(instance, "beta", "2021-01-04", "1")  # beta is a session behind; gamma never materialised

    # first tick: the decisions already record the champion -> only the cursor is written
    first = tick()
    assert first.run_requests == [] and "already uses v1" in first.skip_message
    assert json.loads(first.cursor) == {name: "1"}

    # promotion by hand in the MLflow UI
    client.set_registered_model_alias(name, "champion", "2")
    moved = tick(first.cursor)
    got = sorted((r.partition_key, [k.to_user_string() for k in r.asset_selection], r.run_key)
                 for r in moved.run_requests)
    assert got == [("2021-01-04", ["decisions/beta", "guarded_targets/beta"], f"champion-{name}-v2-2021-01-04"),
                   ("2021-01-05", ["decisions/alpha", "guarded_targets/alpha"], f"champion-{name}-v2-2021-01-05")]
    assert all(r.tags["qtos/trigger"] == "champion_changed" and r.tags["qtos/champion_version"] == "2"
               and r.tags["dagster/partition"] == r.partition_key for r in moved.run_requests)
    assert json.loads(moved.cursor) == {name: "2"}

    # next tick, alias unchanged: nothing
    again = tick(moved.cursor)
    assert again.run_requests == [] and "still v2" in again.skip_message

    # a fresh cursor (sensor reset) while the stored decisions are from v1: the first tick does request
    fresh = tick()
    assert sorted(r.run_key for r in fresh.run_requests) == [f"champion-{name}-v2-2021-01-04",
                                                            f"champion-{name}-v2-2021-01-05"]

    # the decisions were rebuilt with v2 (e.g. by the gate's own full-graph run): no redundant request
    _materialise(instance, "alpha", "2021-01-05", "2")
    _materialise(instance, "beta", "2021-01-04", "2")
    client.set_registered_model_alias(name, "champion", "1")
    client.set_registered_model_alias(name, "champion", "2")
    rebuilt = tick(first.cursor)
    assert rebuilt.run_requests == [] and json.loads(rebuilt.cursor) == {name: "2"}


# --- retrain_on_new_data ----------------------------------------------------------------------------
def _store_prices(wh: DuckDBWarehouse, sessions: list[str]) -> None:
    wh.write_partitions("prices", pd.DataFrame({"session": sessions, "symbol": "AAA", "close": 1.0}), sessions)


def test_retrain_on_new_data_threshold_and_cursor(registry, tmp_path):
    name = "m_data"
    sensor = _sensors(name)["retrain_on_new_data"]
    assert sensor.job_name == RETRAIN
    wh = DuckDBWarehouse(root=str(tmp_path))
    _store_prices(wh, ["2021-01-04", "2021-01-05", "2021-01-06", "2021-01-07"])

    untrained = _tick(sensor, model_registry=registry, warehouse=wh)
    assert untrained.run_requests == [] and "train first" in untrained.skip_message

    # no champion alias: the highest version (2, data_end 01-05) counts
    _register(registry, name, [{"data_end": "2020-12-31"}, {"data_end": "2021-01-05"}])
    below = _tick(sensor, model_registry=registry, warehouse=wh)
    assert below.run_requests == [] and "2 new price sessions" in below.skip_message

    _store_prices(wh, ["2021-01-08"])
    at = _tick(sensor, model_registry=registry, warehouse=wh)
    [req] = at.run_requests
    assert req.run_key == f"new-data-{name}-2021-01-08"
    assert req.tags["qtos/trigger"] == "new_data" and req.tags["qtos/new_sessions"] == "3"
    assert req.tags["qtos/data_end"] == "2021-01-05" and at.cursor == "2021-01-08"

    repeat = _tick(sensor, cursor=at.cursor, model_registry=registry, warehouse=wh)
    assert repeat.run_requests == [] and "already requested" in repeat.skip_message

    _store_prices(wh, ["2021-01-11"])
    more = _tick(sensor, cursor=at.cursor, model_registry=registry, warehouse=wh)
    assert [r.run_key for r in more.run_requests] == [f"new-data-{name}-2021-01-11"]
    assert more.run_requests[0].tags["qtos/new_sessions"] == "4"

    # the champion alias wins over the highest version: v1 saw data to 2020-12-31 -> 6 new sessions
    registry.client().set_registered_model_alias(name, "champion", "1")
    champ = _tick(sensor, model_registry=registry, warehouse=wh)
    assert champ.run_requests[0].tags["qtos/new_sessions"] == "6"


# --- feature_drift ----------------------------------------------------------------------------------
SYMBOLS = [f"S{i:02d}" for i in range(20)]
TRAIN_TAGS = {"features": "f_a,f_b,f_c,f_gone", "train_start": "2020-01-02", "train_end": "2020-06-30"}


def _features(sessions, rng, shift_a=0.0, nan_c=False) -> pd.DataFrame:
    idx = pd.MultiIndex.from_product([sessions, SYMBOLS], names=["session", "symbol"]).to_frame(index=False)
    n = len(idx)
    return idx.assign(f_a=rng.normal(loc=shift_a, size=n), f_b=rng.normal(size=n),
                      f_c=np.nan if nan_c else rng.normal(size=n))


def _write_features(wh: DuckDBWarehouse, frame: pd.DataFrame) -> None:
    with duckdb.connect(str(wh.duckdb_path)) as con:
        con.register("frame", frame)
        con.execute("create or replace table features_daily as select symbol, cast(session as date) as session, "
                    "f_a, f_b, f_c from frame")


def test_feature_drift_names_exactly_the_shifted_feature(registry, tmp_path):
    name = "m_drift"
    sensor = _sensors(name)["feature_drift"]
    wh = DuckDBWarehouse(root=str(tmp_path))
    _register(registry, name, [TRAIN_TAGS])
    registry.client().set_registered_model_alias(name, "champion", "1")

    missing = _tick(sensor, model_registry=registry, warehouse=wh)
    assert missing.run_requests == [] and "features_daily is not available" in missing.skip_message

    rng = np.random.default_rng(7)
    days = [d.strftime("%Y-%m-%d") for d in pd.bdate_range("2020-01-02", "2020-07-31")]
    stable = _features(days, rng)
    _write_features(wh, stable)
    same = _tick(sensor, model_registry=registry, warehouse=wh)
    assert same.run_requests == [] and "no feature PSI above 0.25" in same.skip_message
    assert "f_gone" in same.skip_message  # a feature missing from the table is reported
    assert json.loads(same.cursor) == {"model_version": "1", "last_session": days[-1]}

    idle = _tick(sensor, cursor=same.cursor, model_registry=registry, warehouse=wh)
    assert idle.run_requests == [] and f"no new session since {days[-1]}" in idle.skip_message

    # ten new sessions: f_a shifted by 1.5 sd, f_b unchanged, f_c all-NaN (skipped, reported)
    new_days = [d.strftime("%Y-%m-%d") for d in pd.bdate_range("2020-08-03", "2020-08-14")]
    _write_features(wh, pd.concat([stable, _features(new_days, rng, shift_a=1.5, nan_c=True)]))
    drift = _tick(sensor, cursor=same.cursor, model_registry=registry, warehouse=wh)
    [req] = drift.run_requests
    assert req.run_key == f"drift-{name}-v1-{new_days[-1]}"
    assert req.tags["qtos/trigger"] == "drift" and req.tags["qtos/model_version"] == "1"
    feats = dict(kv.split(":") for kv in req.tags["qtos/drift_features"].split(","))
    assert list(feats) == ["f_a"] and float(feats["f_a"]) > 0.25
    assert req.tags["qtos/drift_skipped_features"] == "f_gone,f_c"
    # the tag value is psi() of exactly those windows, rounded to 3 places
    train = stable[(stable["session"] >= "2020-01-02") & (stable["session"] <= "2020-06-30")]
    live = _last_window(wh)
    assert len(live) == 10 * len(SYMBOLS)
    assert feats["f_a"] == f"{psi(train['f_a'].to_numpy(), live['f_a'].to_numpy(), 10):.3f}"
    assert json.loads(drift.cursor)["last_session"] == new_days[-1]
    # same data, next tick: no repeat
    assert _tick(sensor, cursor=drift.cursor, model_registry=registry, warehouse=wh).run_requests == []


def _last_window(wh: DuckDBWarehouse) -> pd.DataFrame:
    return wh.query("select * from features_daily where session in "
                    "(select distinct session from features_daily order by session desc limit 10)")
