"""A 10-asset chain of trivial assets (a0 -> a1 -> ... -> a9) for bench/bench_executors.py: per-step executor
overhead with nothing else in the step. Three jobs over the same assets, one per executor."""

import os

import dagster as dg
from dagster_celery import celery_executor

N = 10


def _make(i: int) -> dg.AssetsDefinition:
    @dg.asset(name=f"a{i}", deps=[f"a{i - 1}"] if i else [], group_name="chain")
    def step() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"i": i})

    return step


ASSETS = [_make(i) for i in range(N)]
_broker = os.environ.get("QTOS_CELERY_BROKER", "redis://127.0.0.1:6379/7")
_backend = os.environ.get("QTOS_CELERY_BACKEND", "redis://127.0.0.1:6379/8")

defs = dg.Definitions(assets=ASSETS, jobs=[
    dg.define_asset_job("chain_in_process", executor_def=dg.in_process_executor),
    dg.define_asset_job("chain_multiprocess", executor_def=dg.multiprocess_executor),
    dg.define_asset_job("chain_forkserver", executor_def=dg.multiprocess_executor.configured(
        {"start_method": {"forkserver": {"preload_modules": ["dagster", "dagster_celery"]}}})),
    dg.define_asset_job("chain_celery", executor_def=celery_executor.configured(
        {"broker": _broker, "backend": _backend})),
])
