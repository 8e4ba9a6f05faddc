"""Gap sensor: compares the stored price partitions with the XNYS calendar and requests one single-run
backfill per contiguous range of missing sessions. The cursor remembers what it requested and when, so a
gap is re-requested only after ``retry_after`` (e.g. when the backfill failed), never in a loop."""

import json
from datetime import datetime, timezone

import dagster as dg

from qt_resources.calendar import session_closes_utc
from qt_resources.warehouse import Warehouse

RETRY_AFTER_S = 6 * 3600
PRICES_BACKFILL = "prices_backfill"


def contiguous_ranges(missing: list[str], ordered: list[str]) -> list[tuple[str, str]]:
    """Group ``missing`` keys into runs of consecutive keys of ``ordered``."""
    pos = {k: i for i, k in enumerate(ordered)}
    out: list[list[str]] = []
    for k in sorted(missing, key=pos.__getitem__):
        if out and pos[k] == pos[out[-1][1]] + 1:
            out[-1][1] = k
        else:
            out.append([k, k])
    return [(a, b) for a, b in out]


def build_gap_sensor(partitions: dg.PartitionsDefinition, retry_after_s: int = RETRY_AFTER_S) -> dg.SensorDefinition:
    keys = partitions.get_partition_keys()
    closes = session_closes_utc(keys[0], keys[-1])

    @dg.sensor(name="price_gaps", job_name=PRICES_BACKFILL, minimum_interval_seconds=3600,
               description="Backfills price sessions that are in the calendar (and closed) but not stored.")
    def price_gaps(context: dg.SensorEvaluationContext, warehouse: Warehouse):
        now = datetime.now(timezone.utc)
        due = [k for k in keys if closes[k] <= now]
        stored = set(warehouse.stored_sessions("prices"))
        missing = [k for k in due if k not in stored]
        cursor = json.loads(context.cursor) if context.cursor else {}
        requests, skipped = [], []
        for start, end in contiguous_ranges(missing, keys):
            rng = f"{start}...{end}"
            last = cursor.get(rng)
            if last and now.timestamp() - last["at"] < retry_after_s:
                skipped.append(rng)
                continue
            attempt = (last["attempt"] + 1) if last else 1
            cursor[rng] = {"at": now.timestamp(), "attempt": attempt}
            requests.append(dg.RunRequest(
                run_key=f"price-gap:{rng}:{attempt}",
                tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end,
                      "qtos/reason": f"gap {rng} ({len(keys[keys.index(start):keys.index(end) + 1])} sessions)"}))
        # forget ranges that are no longer missing, so the cursor stays small
        live = {f"{a}...{b}" for a, b in contiguous_ranges(missing, keys)}
        cursor = {k: v for k, v in cursor.items() if k in live}
        if not requests:
            return dg.SensorResult(skip_reason=f"no new gaps ({len(missing)} missing sessions, "
                                               f"{len(skipped)} ranges already requested)", cursor=json.dumps(cursor))
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor))

    return price_gaps
