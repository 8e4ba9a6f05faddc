"""Jobs. All default to the in-process executor on purpose: the graph is a chain on a 2-core machine, so a
process per step buys no parallelism (BENCHMARKS.md measures the two within 2 s). Storage is multiprocess-safe (Parquet
per session; DuckDB written by the dbt step only), so a run may switch with run config
``{"execution": {"config": {"multiprocess": {}}}}`` (tested)."""

from __future__ import annotations

import json
import os

import dagster as dg

from qt_resources.config import ProjectConfig
from qt_sensors.market_data import PRICES_BACKFILL

FULL_GRAPH = "full_graph"
DAILY_PATH = "daily_path"
SPINE_CELERY = "spine_celery"
CELERY_BROKER_ENV, CELERY_BACKEND_ENV = "QTOS_CELERY_BROKER", "QTOS_CELERY_BACKEND"
CELERY_QUEUE_ENV = "QTOS_CELERY_QUEUE"  # the queue steps go to (workers: `-q <it>`); default dagster-celery's
CELERY_DEFAULTS = {CELERY_BROKER_ENV: "redis://127.0.0.1:6379/0", CELERY_BACKEND_ENV: "redis://127.0.0.1:6379/1"}
RETRAIN = "retrain"
REFRESH_DECISIONS = "refresh_decisions"
WALK_FORWARD = "walk_forward"
WALK_FORWARD_GROUP = dg.AssetSelection.groups("walk_forward")
RESEARCH = dg.AssetSelection.groups("research", "backtests")
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}


def config_tags(cfg: ProjectConfig) -> dict[str, str]:
    """Run tags that record what actually ran: the config fingerprint and the resolved config."""
    return {"qtos/config_fingerprint": cfg.fingerprint(),
            "qtos/config": json.dumps(cfg.resolved(), sort_keys=True, separators=(",", ":"))}


def build_jobs(cfg: ProjectConfig, partitions: dg.PartitionsDefinition) -> list:
    tags = config_tags(cfg)
    def session_job(name: str, selection, description: str) -> dg.UnresolvedAssetJobDefinition:
        return dg.define_asset_job(name, selection=selection, partitions_def=partitions,
                                   executor_def=dg.multi_or_in_process_executor, config=IN_PROCESS, tags=tags,
                                   description=description)

    full = session_job(FULL_GRAPH, dg.AssetSelection.all() - WALK_FORWARD_GROUP,
                       "Materialise the whole graph (prices -> features -> model -> backtest -> decisions -> "
                       "orders) for a session range in one run.")
    daily = session_job(DAILY_PATH, dg.AssetSelection.all() - RESEARCH - WALK_FORWARD_GROUP,
                        "One session: prices -> features -> decisions (champion model) -> orders.")
    backfill = session_job(PRICES_BACKFILL, dg.AssetSelection.assets("prices"),
                           "Prices only, for a session range in one run (used by the price_gaps sensor).")
    retrain = dg.define_asset_job(
        RETRAIN,
        selection=RESEARCH,
        executor_def=dg.in_process_executor,
        tags=tags,
        description="training_set -> trained_model (Optuna, MLflow) -> model_promotion -> backtest reports on the "
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
    jobs = [full, daily, backfill, retrain, refresh, celery_spine(partitions, tags)]
    if cfg.backtest.walk_forward is not None:
        from qt_assets.backtests.walk_forward import window_partitions

        jobs.append(dg.define_asset_job(
            WALK_FORWARD, selection=WALK_FORWARD_GROUP, partitions_def=window_partitions(cfg),
            executor_def=dg.in_process_executor, tags=tags,
            description="Walk-forward backtest: one model per window (partition) on the features already built, "
                        "then the stitched out-of-sample report. Backfill a window range to rebuild it."))
    return jobs


def celery_executor_def():
    """dagster-celery's executor on our broker: ``QTOS_CELERY_BROKER`` / ``QTOS_CELERY_BACKEND`` when set (read by
    Dagster at launch, so a password in the URL never lands in run config), else the local Redis; steps go to the
    queue ``QTOS_CELERY_QUEUE`` (default ``dagster``), so several deployments can share one broker. Without
    dagster-celery (the ``production`` extra) the job stays in the graph and a launch fails saying what to install."""
    from qt_resources.extras import missing_extra

    missing = missing_extra("dagster_celery", f"job {SPINE_CELERY}")
    if missing:
        @dg.executor(name="celery_qtos")
        def celery_not_installed(_init_context):
            raise dg.DagsterInvariantViolationError(missing)

        return celery_not_installed
    from dagster_celery import celery_executor

    def source(name: str):
        return {"env": name} if os.environ.get(name) else CELERY_DEFAULTS[name]

    return celery_executor.configured(
        {"broker": source(CELERY_BROKER_ENV), "backend": source(CELERY_BACKEND_ENV),
         "config_source": {"task_default_queue": os.environ.get(CELERY_QUEUE_ENV, "dagster")}}, name="celery_qtos")


def celery_spine(partitions: dg.PartitionsDefinition, tags: dict) -> dg.UnresolvedAssetJobDefinition:
    """The daily path (prices -> features -> decisions -> orders) with every step a Celery task: scale-out over
    workers started with `dagster-celery worker start -A dagster_celery.app -y deploy/celery.yaml`. A run with
    no live worker waits in the broker: start the workers first."""
    return dg.define_asset_job(
        SPINE_CELERY, selection=dg.AssetSelection.all() - RESEARCH - WALK_FORWARD_GROUP, partitions_def=partitions,
        executor_def=celery_executor_def(), tags=tags,
        description="The daily path on dagster-celery workers (Redis or RabbitMQ broker).")
