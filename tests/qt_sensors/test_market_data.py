import json
from datetime import datetime
from zoneinfo import ZoneInfo

import dagster as dg
import pandas as pd

from qt_jobs.schedules import build_schedules
from qt_resources.calendar import sessions
from qt_resources.warehouse import DuckDBWarehouse
from qt_sensors.market_data import build_gap_sensor, contiguous_ranges

KEYS = sessions("2012-06-01", "2012-07-31")


def _store(wh: DuckDBWarehouse, keys: list[str]) -> None:
    wh.write_partitions("prices", pd.DataFrame({"session": keys, "symbol": "IBM", "close": 1.0}), keys)


def _evaluate(sensor, wh, cursor=None):
    ctx = dg.build_sensor_context(cursor=cursor, resources={"warehouse": wh})
    return sensor.evaluate_tick(ctx)


def test_contiguous_ranges():
    # Friday 06-01 and Monday 06-04 are consecutive sessions; 06-06 breaks the run
    assert contiguous_ranges(["2012-06-05", "2012-06-01", "2012-06-04", "2012-06-07"], KEYS) == [
        ("2012-06-01", "2012-06-05"), ("2012-06-07", "2012-06-07")]


def test_gap_sensor_requests_exactly_the_missing_ranges_once(tmp_path):
    wh = DuckDBWarehouse(root=str(tmp_path))
    missing = ["2012-06-04", "2012-06-05", "2012-06-06", "2012-07-03", "2012-07-31"]
    _store(wh, [k for k in KEYS if k not in missing])
    sensor = build_gap_sensor(dg.StaticPartitionsDefinition(KEYS))
    first = _evaluate(sensor, wh)
    got = [(r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
           for r in first.run_requests]
    assert got == [("2012-06-04", "2012-06-06"), ("2012-07-03", "2012-07-03"), ("2012-07-31", "2012-07-31")]
    assert all(r.job_name in (None, "prices_backfill") for r in first.run_requests)
    # same gaps, cursor carried: nothing re-requested
    second = _evaluate(sensor, wh, first.cursor)
    assert second.run_requests == [] and "already requested" in second.skip_message
    # a gap filled in the meantime leaves the cursor; a new gap is requested
    _store(wh, ["2012-07-03"])
    (tmp_path / "prices" / "session=2012-06-29" / "data.parquet").unlink()
    third = _evaluate(sensor, wh, second.cursor)
    assert [r.tags["dagster/asset_partition_range_start"] for r in third.run_requests] == ["2012-06-29"]
    assert "2012-07-03...2012-07-03" not in json.loads(third.cursor)


def test_gap_sensor_retries_after_the_interval(tmp_path):
    wh = DuckDBWarehouse(root=str(tmp_path))
    _store(wh, KEYS[1:])
    sensor = build_gap_sensor(dg.StaticPartitionsDefinition(KEYS), retry_after_s=0)
    first = _evaluate(sensor, wh)
    again = _evaluate(sensor, wh, first.cursor)
    assert [r.run_key for r in first.run_requests] == [f"price-gap:{KEYS[0]}...{KEYS[0]}:1"]
    assert [r.run_key for r in again.run_requests] == [f"price-gap:{KEYS[0]}...{KEYS[0]}:2"]


def test_schedule_runs_on_sessions_only():
    sched = build_schedules(dg.StaticPartitionsDefinition(KEYS))[0]
    ny = ZoneInfo("America/New_York")

    def tick(day):
        ctx = dg.build_schedule_context(scheduled_execution_time=datetime(*day, 17, 15, tzinfo=ny))
        return sched.evaluate_tick(ctx)

    early_close = tick((2012, 7, 3))
    assert [r.tags["dagster/partition"] for r in early_close.run_requests] == ["2012-07-03"]
    assert "not an XNYS session" in tick((2012, 7, 4)).skip_message  # Independence Day
    assert "outside the configured sessions" in tick((2012, 8, 1)).skip_message
