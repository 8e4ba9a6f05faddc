"""Per-partition events that stay per partition.

A step over N session partitions returns one ``MaterializeResult``; Dagster copies its metadata into each of
the N ``ASSET_MATERIALIZATION`` events (serialised and stored N times). :func:`partitioned_result` keeps only
small scalar entries (counts, names, fingerprints: a few hundred bytes) in those events and puts the run-level
summaries (tables, JSON, markdown, paths) once into an ``AssetObservation`` of the range's last partition,
which the UI lists under the asset's events and that partition. A step over one partition (the daily
increment) keeps everything in its one materialisation, as before.
"""

from __future__ import annotations

import dagster as dg

SMALL_TEXT = 200  # characters: a longer string is a summary, not a per-partition fact
SCALAR_TYPES = (dg.IntMetadataValue, dg.FloatMetadataValue, dg.BoolMetadataValue)
RUN_SUMMARY = "run_summary"


def is_small(value) -> bool:
    if value is None or isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        return len(value) <= SMALL_TEXT
    if isinstance(value, SCALAR_TYPES):
        return True
    if isinstance(value, dg.TextMetadataValue):
        return len(value.text) <= SMALL_TEXT
    return False


def partitioned_result(context: dg.AssetExecutionContext, metadata: dict, *, asset_key=None,
                       check_results=None) -> dg.MaterializeResult:
    """A ``MaterializeResult`` for the step's partitions whose per-partition events carry only the small
    entries of ``metadata``; the rest goes into one observation (see the module docstring)."""
    keys = sorted(context.partition_keys) if (context.has_partition_key or context.has_partition_key_range) else []
    if len(keys) <= 1:
        return dg.MaterializeResult(asset_key=asset_key, metadata=metadata, check_results=check_results)
    small = {k: v for k, v in metadata.items() if is_small(v)}
    big = {k: v for k, v in metadata.items() if not is_small(v)}
    if big:
        key = dg.AssetKey.from_coercible(asset_key) if asset_key is not None else context.asset_key
        context.log_event(dg.AssetObservation(
            asset_key=key, partition=keys[-1],
            description=f"summary of run {context.run_id} over {len(keys)} partitions {keys[0]}..{keys[-1]}",
            metadata={**big, "run_first_partition": keys[0], "run_last_partition": keys[-1],
                      "run_partitions": len(keys)}))
        small[RUN_SUMMARY] = f"observation on partition {keys[-1]} ({', '.join(sorted(big))})"
    return dg.MaterializeResult(asset_key=asset_key, metadata=small, check_results=check_results)
