"""The production instance (deploy/production/dagster.yaml) against the real PostgreSQL: storage, queue limits
and retries as configured, and a run's records landing in Postgres."""

from pathlib import Path

import dagster as dg
import pytest
import yaml

from qt_assets.execution.assets import BROKER_POOL
from tests.conftest import REPO
from tests.pg import PG_HOST, PG_PORT, PG_USER, _connect, ensure_postgres, fresh_database, drop_database

PROD = REPO / "deploy" / "production"


@pytest.fixture
def prod_instance(monkeypatch):
    ensure_postgres()
    url = fresh_database("dagster")
    db = url.rsplit("/", 1)[1]
    for k, v in {"DAGSTER_PG_HOST": PG_HOST, "DAGSTER_PG_PORT": str(PG_PORT), "DAGSTER_PG_USER": PG_USER,
                 "DAGSTER_PG_PASSWORD": "unused-with-trust-auth", "DAGSTER_PG_DB": db}.items():
        monkeypatch.setenv(k, v)
    inst = dg.DagsterInstance.from_config(str(PROD))
    try:
        yield inst, db
    finally:
        inst.dispose()
        drop_database(url)


def test_production_instance_is_postgres_backed_queued_and_retrying(prod_instance):
    inst, db = prod_instance
    assert {type(x).__name__ for x in (inst.run_storage, inst.event_log_storage, inst.schedule_storage)} == \
        {"PostgresRunStorage", "BatchedPostgresEventLogStorage", "PostgresScheduleStorage"}
    from dagster_postgres.event_log import PostgresEventLogStorage

    assert isinstance(inst.event_log_storage, PostgresEventLogStorage)  # Dagster's own batch path
    assert type(inst.run_coordinator).__name__ == "QueuedRunCoordinator"
    c = inst.get_concurrency_config()
    assert c.run_queue_config.max_concurrent_runs == 4
    assert c.pool_config.default_pool_limit == 1 and c.pool_config.pool_granularity.value == "run"
    assert inst.run_retries_enabled and inst.run_retries_max_retries == 1
    assert not inst.run_retries_retry_on_asset_or_op_failure  # a failed check or step is not retried blindly


def test_a_run_on_the_production_instance_is_recorded_in_postgres(prod_instance):
    inst, db = prod_instance

    @dg.asset
    def probe() -> int:
        return 1

    res = dg.materialize([probe], instance=inst)
    assert res.success
    with _connect(db) as con, con.cursor() as cur:
        cur.execute("select status from runs where run_id = %s", (res.run_id,))
        assert cur.fetchone() == ("SUCCESS",)
        cur.execute("select count(*) from event_logs where run_id = %s and dagster_event_type = "
                    "'ASSET_MATERIALIZATION'", (res.run_id,))
        assert cur.fetchone() == (1,)


def test_every_order_placing_asset_is_in_the_broker_pool():
    from qt_jobs.definitions import load_definitions

    graph = load_definitions().resolve_asset_graph()
    orders = [k for k in graph.get_all_asset_keys() if k.path[0] == "orders"]
    assert orders and all(graph.get(k).pools == {BROKER_POOL} for k in orders)


def test_the_embedded_default_stays_sqlite():
    cfg = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert "storage" not in cfg and cfg["telemetry"] == {"enabled": False}
    assert cfg["event_log_storage"] == {"module": "qt_jobs.event_log", "class": "BatchedSqliteEventLogStorage"}
    assert yaml.safe_load((PROD / "dagster.yaml").read_text())["telemetry"] == {"enabled": False}
    assert not any(Path(PROD).glob("*.db"))
