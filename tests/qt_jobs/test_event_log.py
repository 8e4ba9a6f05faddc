"""Contract and crash tests of the batched SQLite event log (qt_jobs/event_log.py).

The contract: the same runs of the same job (tests/event_log_defs.py: partition range, a re-run of part of it,
a run whose blocking check fails), once on Dagster's stock SqliteEventLogStorage and once on ours, leave the
same rows in every table of every shard (normalised only for what differs between any two runs: run ids,
timestamps, pids, durations), the same partition status as the UI computes it, the same latest
materialisation, tags and data version per partition, the same check evaluations, and the same state after
``dagster asset wipe``. The stock methods the batch path drives are pinned by
source hash, so a Dagster upgrade that changes what ``store_event`` writes fails here first.

The gap sensor (qt_sensors/market_data.py) reads the stored warehouse partitions, not the event log, so the
storage cannot change its view; it is not compared here.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import DagsterEventType

from qt_jobs import event_log
from tests.conftest import REPO
from tests.event_log_defs import PARTS, run_range

STOCK_YAML = "telemetry: {enabled: false}\n"
ASSETS = [dg.AssetKey(k) for k in ("alpha", "beta", "gamma")]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
DATETIME = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?$")
VOLATILE_KEYS = {"timestamp", "pid", "duration_ms", "log_timestamp", "start_time", "end_time", "event_timestamp",
                 "log_key", "last_wipe_timestamp"}
DIGITS_IN_TEXT = re.compile(r"\d[\d.]*(ms|s|m|h)?\b")  # counts and durations in messages


@pytest.fixture(autouse=True)
def _batching_env(monkeypatch):
    # both storages see the same Dagster settings (the planned-events setting changes which events exist)
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", event_log.DEFAULT_BATCH_SIZE)
    monkeypatch.setenv("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "true")
    monkeypatch.delenv("QTOS_TOY_FAIL_CHECK", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", "/nonexistent/other-instance")  # never read: the log follows its instance


def instance_at(home: Path, ours: bool) -> dg.DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text() if ours else STOCK_YAML)
    return dg.DagsterInstance.from_config(str(home))


def _norm(value, runs: list[str], key: str | None = None):
    if key in VOLATILE_KEYS:
        return None
    if isinstance(value, dict):
        return {k: _norm(v, runs, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_norm(v, runs) for v in value]
    if isinstance(value, str):
        for i, r in enumerate(runs):
            value = value.replace(r, f"RUN{i}")
        if value[:1] in "{[":
            try:
                return _norm(json.loads(value), runs)
            except ValueError:
                pass
        if DATETIME.match(value):
            return "DATETIME"
        if key in ("user_message", "message", "description", "text"):
            return DIGITS_IN_TEXT.sub("#", value)
        return UUID.sub("UUID", value)
    return value


def dump(home: Path, runs: list[str]) -> dict:
    """Every table of every shard, rows in primary-key order, normalised."""
    out = {}
    base = home / "history" / "runs"
    shards = {"index": base / "index.db", **{f"RUN{i}": base / f"{r}.db" for i, r in enumerate(runs)}}
    if (base / ".db").exists():  # the shard of run id "" (stock opens it for cross-run reads)
        shards["RUNLESS"] = base / ".db"
    assert sorted(p.name for p in base.glob("*.db")) == sorted(p.name for p in shards.values())
    for name, path in shards.items():
        con = sqlite3.connect(path)
        for (table,) in con.execute("select name from sqlite_master where type = 'table' order by name"):
            cur = con.execute(f"select * from {table} order by rowid")
            cols = [c[0] for c in cur.description]
            out[f"{name}.{table}"] = [{c: _norm(v, runs, c) for c, v in zip(cols, row)} for row in cur]
        con.close()
    return out


def views(instance: dg.DagsterInstance) -> dict:
    """What the UI and the asset APIs read: partition status, latest materialisation / tags / data version per
    partition, check executions."""
    from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

    store = instance.event_log_storage
    out = {}
    for key in ASSETS:
        status = get_and_update_asset_status_cache_value(instance, key, PARTS)
        latest = store.get_latest_storage_id_by_partition(key, DagsterEventType.ASSET_MATERIALIZATION)
        records = {r.storage_id: r for r in instance.fetch_materializations(key, limit=10_000).records}
        recs = instance.get_asset_records([key])
        last = recs[0].asset_entry.last_materialization_record if recs else None
        subsets = {k: sorted(getattr(status, f"deserialize_{k}_partition_subsets")(PARTS).get_partition_keys())
                   if status else None for k in ("materialized", "failed", "in_progress")}
        out[key.to_user_string()] = {
            "materialized": sorted(instance.get_materialized_partitions(key)),
            "status": subsets,
            "latest": {p: (sid, _norm(str(records[sid].asset_materialization.metadata), [])) for p, sid in latest.items()},
            "tags": store.get_latest_tags_by_partition(key, DagsterEventType.ASSET_MATERIALIZATION,
                                                       tag_keys=["dagster/data_version"]),
            "record": _norm(str(last.event_log_entry.dagster_event.event_specific_data), []) if last else None,
        }
    for check in ("alpha_ok", "alpha_rows"):
        ck = dg.AssetCheckKey(dg.AssetKey("alpha"), check)
        hist = store.get_asset_check_execution_history(ck, limit=100_000)
        out[check] = sorted((h.partition or "", h.status.value) for h in hist)
    return out


def exercise(home: Path, ours: bool) -> tuple[dict, dict, dict, list[str], dict]:
    inst = instance_at(home, ours)
    r1 = run_range(inst)                        # every partition
    r2 = run_range(inst, 10, 19)                # a re-run of part of the range
    os.environ["QTOS_TOY_FAIL_CHECK"] = "1"
    r3 = run_range(inst, 30, 44)                # the blocking check fails: beta/gamma do not run
    del os.environ["QTOS_TOY_FAIL_CHECK"]
    assert r1.success and r2.success and not r3.success
    runs = [r1.run_id, r2.run_id, r3.run_id]
    before = (dump(home, runs), views(inst))
    inst.wipe_assets([dg.AssetKey("beta")])  # SQLite storage (stock too) has no partition wipe
    after = {"dump": dump(home, runs), "views": views(inst)}
    stats = dict(getattr(inst.event_log_storage, "stats", {}))
    inst.dispose()
    return before[0], before[1], after, runs, stats


def test_batched_storage_writes_exactly_what_stock_writes(tmp_path):
    stock = exercise(tmp_path / "stock", ours=False)
    ours = exercise(tmp_path / "ours", ours=True)
    assert type(instance_at(tmp_path / "ours", True).event_log_storage).__name__ == "BatchedSqliteEventLogStorage"
    for name, a, b in (("tables", stock[0], ours[0]), ("views", stock[1], ours[1]), ("after wipe", stock[2], ours[2])):
        assert a.keys() == b.keys(), name
        for k in a:
            assert a[k] == b[k], f"{name}: {k} differs"
    # the comparison is not vacuous: 60 + 10 + 15 alpha partitions, each with its own materialisation row
    assert sum(r["dagster_event_type"] == "ASSET_MATERIALIZATION" and r["asset_key"] == ["alpha"]
               for r in ours[0]["index.event_logs"]) == 85
    assert ours[1]["alpha"]["materialized"] == PARTS.get_partition_keys()
    assert any(status == "FAILED" for _, status in ours[1]["alpha_ok"])
    assert ours[2]["views"]["beta"]["materialized"] == [] and stock[2]["views"]["beta"]["materialized"] == []
    # ...and ours went through the batch path: planned events and every partitioned step's output, per run
    assert ours[4]["batches"] >= 3 * 2 and ours[4]["events"] >= 85 + 70 * 2 and not stock[4]


# ---- what the batch path relies on ------------------------------------------------------------------------
def _stock_sources() -> dict[str, str]:
    from dagster._core.instance.methods.event_methods import EventMethods
    from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

    fns = {"SqliteEventLogStorage.store_event": SqliteEventLogStorage.store_event,
           "SqliteEventLogStorage._connect": SqliteEventLogStorage._connect,
           "SqlEventLogStorage.index_transaction": SqlEventLogStorage.index_transaction,
           "SqlEventLogStorage._store_asset_event": SqlEventLogStorage._store_asset_event,
           "SqlEventLogStorage._get_asset_entry_values": SqlEventLogStorage._get_asset_entry_values,
           "SqlEventLogStorage._store_asset_event_tags": SqlEventLogStorage._store_asset_event_tags,
           "SqlEventLogStorage.store_asset_check_event": SqlEventLogStorage.store_asset_check_event,
           "SqlEventLogStorage._store_asset_check_evaluation_planned":
               SqlEventLogStorage._store_asset_check_evaluation_planned,
           "EventMethods.handle_new_event": EventMethods.handle_new_event}
    return {k: hashlib.sha256(inspect.getsource(f).encode()).hexdigest()[:16] for k, f in fns.items()}


# Dagster 1.13.27. A change here means Dagster changed what store_event writes or how batches reach storage:
# run the contract test above on the new version, then update these and VALIDATED_DAGSTER_VERSIONS together.
PINNED_SOURCES = {
    "SqliteEventLogStorage.store_event": "f89aed40602438b9",
    "SqliteEventLogStorage._connect": "b8435f2665689760",
    "SqlEventLogStorage.index_transaction": "00b2488c8cdfd277",
    "SqlEventLogStorage._store_asset_event": "fdb9340b9eef1c9b",
    "SqlEventLogStorage._get_asset_entry_values": "bb3b9df2c6c371fe",
    "SqlEventLogStorage._store_asset_event_tags": "85d6f17ef04b926f",
    "SqlEventLogStorage.store_asset_check_event": "6d148295fa69bb45",
    "SqlEventLogStorage._store_asset_check_evaluation_planned": "bbecef7ab5ce9d01",
    "EventMethods.handle_new_event": "db900859da5b7e70",
}


def test_stock_code_the_batch_path_drives_is_the_validated_code():
    assert dg.__version__ in event_log.VALIDATED_DAGSTER_VERSIONS
    assert _stock_sources() == PINNED_SOURCES


def test_an_unvalidated_dagster_version_takes_the_stock_path(tmp_path, monkeypatch):
    monkeypatch.setattr(event_log, "VALIDATED_DAGSTER_VERSIONS", frozenset({"0.0.0"}))
    with pytest.warns(UserWarning, match="storing events one by one"):
        inst = instance_at(tmp_path / "home", ours=True)
    assert run_range(inst).success
    assert inst.event_log_storage.stats["batches"] == 0
    assert sorted(inst.get_materialized_partitions(dg.AssetKey("alpha"))) == PARTS.get_partition_keys()
    inst.dispose()


# ---- failures and crashes ----------------------------------------------------------------------------------
def counts(home: Path, run_id: str, asset: str = "alpha") -> tuple[int, int]:
    """(materialisations of ``asset`` in the run shard, in the index shard) for ``run_id``."""
    base = home / "history" / "runs"
    q = ("select count(*) from event_logs where run_id = ? and dagster_event_type = 'ASSET_MATERIALIZATION' "
         "and asset_key = ?")
    out = []
    for shard in (f"{run_id}.db", "index.db"):
        con = sqlite3.connect(base / shard)
        out.append(con.execute(q, (run_id, f'["{asset}"]')).fetchone()[0])
        con.close()
    return tuple(out)


def only_run(home: Path) -> str:
    [run] = [p.stem for p in (home / "history" / "runs").glob("*.db") if p.stem not in ("index", "")]
    return run


@pytest.mark.parametrize("point, before_repair", [
    ("before_run_commit", (0, 0)),    # nothing committed: the batch is lost with its process, nothing half-stored
    ("after_run_commit", (60, 0)),    # the run log has the batch, the asset index not yet: repaired on next open
    ("after_index_commit", (60, 60)),  # both committed, marker not yet removed: the repair adds nothing
])
def test_kill_9_mid_batch_leaves_run_log_and_asset_index_agreeing(tmp_path, point, before_repair):
    home = tmp_path / "home"
    instance_at(home, ours=True).dispose()
    env = {**os.environ, "DAGSTER_HOME": str(home), "QTOS_EVENT_LOG_CRASH_AT": f"{point}:2"}  # 1st batch: planned
    proc = subprocess.run([sys.executable, "-m", "tests.event_log_defs"], cwd=REPO, env=env, timeout=300,
                          capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    run = only_run(home)
    assert counts(home, run) == before_repair
    markers = list((home / "history" / "runs" / event_log.MARKER_DIR).glob("*.pending"))
    assert len(markers) == 1  # the dead batch's marker, unlocked now
    inst = instance_at(home, ours=True)  # opening the storage repairs
    n = before_repair[0]
    assert counts(home, run) == (n, n)
    assert inst.event_log_storage.stats["repaired"] == before_repair[0] - before_repair[1]
    assert not list((home / "history" / "runs" / event_log.MARKER_DIR).glob("*.pending"))
    assert len(inst.get_materialized_partitions(dg.AssetKey("alpha"))) == n
    # a second open finds nothing to do, and a new full run stores each partition once more, exactly
    assert instance_at(home, ours=True).event_log_storage.stats["repaired"] == 0
    res = run_range(inst)
    assert res.success and counts(home, res.run_id) == (60, 60) and counts(home, res.run_id, "beta") == (60, 60)
    inst.dispose()


@pytest.mark.parametrize("point", ["before_run_commit", "after_run_commit"])
def test_a_failing_batch_stores_every_event_exactly_once(tmp_path, monkeypatch, point):
    """An error before the run-shard commit: rolled back and raised, Dagster then stores the events one by one.
    After it: not raised (Dagster's fallback would store the run-shard rows twice); the index is repaired."""
    def fail(name):
        if name == point:
            raise OSError(f"injected failure at {name}")

    monkeypatch.setattr(event_log, "_crash_point", fail)
    inst = instance_at(tmp_path / "home", ours=True)
    res = run_range(inst)
    assert res.success
    for asset in ("alpha", "beta", "gamma"):
        assert counts(tmp_path / "home", res.run_id, asset) == (60, 60)
    stats = inst.event_log_storage.stats
    if point == "after_run_commit":
        assert stats["repaired"] > 0 and stats["batches"] == 0
    else:
        assert stats["repaired"] == 0 and stats["batches"] == 0
    assert not list((tmp_path / "home" / "history" / "runs" / event_log.MARKER_DIR).glob("*.pending"))
    assert sorted(inst.get_materialized_partitions(dg.AssetKey("gamma"))) == PARTS.get_partition_keys()
    inst.dispose()
