"""A tiny code location for tests/qt_jobs/test_queue.py: an asset in the `broker` concurrency pool (like every
orders/<agent> asset) that takes a few seconds, and an asset outside it."""

import os
import time

import dagster as dg

from qt_assets.execution.assets import BROKER_POOL


@dg.asset(pool=BROKER_POOL)
def slow_orders() -> None:
    time.sleep(float(os.environ.get("QTOS_TEST_SLOW_S", "8")))


@dg.asset
def unrelated() -> None:
    pass


defs = dg.Definitions(assets=[slow_orders, unrelated], jobs=[
    dg.define_asset_job("orders_like", selection=[slow_orders], executor_def=dg.in_process_executor),
    dg.define_asset_job("other", selection=[unrelated], executor_def=dg.in_process_executor),
])
