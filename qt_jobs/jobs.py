"""Jobs. All default to the in-process executor on purpose: the graph is a chain on a 2-core machine, so a
process per step buys no parallelism (BENCHMARKS.md measures the two within 2 s). Storage is multiprocess-safe (Parquet
per session; DuckDB written by the dbt step only), so a run may switch with run config
``{"execution": {"config": {"multiprocess": {}}}}`` (tested)."""

from __future__ import annotations

import json

import dagster as dg

from qt_resources.config import ProjectConfig
from qt_sensors.market_data import PRICES_BACKFILL

FULL_GRAPH = "full_graph"
DAILY_PATH = "daily_path"
RETRAIN = "retrain"
REFRESH_DECISIONS = "refresh_decisions"
RESEARCH = dg.AssetSelection.groups("research", "backtests")
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}


def config_tags(cfg: ProjectConfig) -> dict[str, str]:
    """Run tags that record what actually ran: the config fingerprint and the resolved config."""
    return {"qtos/config_fingerprint": cfg.fingerprint(),
            "qtos/config": json.dumps(cfg.resolved(), sort_keys=True, separators=(",", ":"))}


def build_jobs(cfg: ProjectConfig, partitions: dg.PartitionsDefinition) -> list:
    tags = config_tags(cfg)
    full = dg.define_asset_job(
        FULL_GRAPH,
        selection=dg.AssetSelection.all(),
        partitions_def=partitions,
        executor_def=dg.multi_or_in_process_executor,
        config=IN_PROCESS,
        tags=tags,
        description="Materialise the whole graph (prices -> features -> model -> backtest -> decisions -> orders) "
                    "for a session range in one run.",
    )
    daily = dg.define_asset_job(
        DAILY_PATH,
        selection=dg.AssetSelection.all() - RESEARCH,
        partitions_def=partitions,
        executor_def=dg.multi_or_in_process_executor,
        config=IN_PROCESS,
        tags=tags,
        description="One session: prices -> features -> decisions (champion model) -> orders.",
    )
    backfill = dg.define_asset_job(
        PRICES_BACKFILL,
        selection=dg.AssetSelection.assets("prices"),
        partitions_def=partitions,
        executor_def=dg.multi_or_in_process_executor,
        config=IN_PROCESS,
        tags=tags,
        description="Prices only, for a session range in one run (used by the price_gaps sensor).",
    )
    retrain = dg.define_asset_job(
        RETRAIN,
        selection=RESEARCH,
        executor_def=dg.in_process_executor,
        tags=tags,
        description="training_set -> trained_model (Optuna, MLflow) -> model_promotion -> backtest_report on the "
                    "features already built (what the new-data and drift sensors launch).",
    )
    refresh = dg.define_asset_job(
        REFRESH_DECISIONS,
        selection=dg.AssetSelection.groups("agents"),
        partitions_def=partitions,
        executor_def=dg.in_process_executor,
        tags=tags,
        description="Re-materialise agents' decisions for a session (what the champion_changed sensor launches).",
    )
    return [full, daily, backfill, retrain, refresh]
