"""A small partitioned graph for the event-log contract and crash tests (tests/qt_jobs/test_event_log.py): a
partitioned asset with a code version, data versions, tags, a blocking and a non-blocking check and an
observation; a two-asset multi-asset downstream; an unpartitioned summary. ``QTOS_TOY_FAIL_CHECK=1`` makes the
blocking check fail (its downstream then does not run)."""

import os

import dagster as dg

N_PARTITIONS = int(os.environ.get("QTOS_TOY_PARTITIONS", "60"))
PARTS = dg.StaticPartitionsDefinition([f"2020-{1 + i // 28:02d}-{1 + i % 28:02d}" for i in range(N_PARTITIONS)])


@dg.asset(partitions_def=PARTS, backfill_policy=dg.BackfillPolicy.single_run(), code_version="v1",
          check_specs=[dg.AssetCheckSpec("alpha_ok", asset="alpha", blocking=True),
                       dg.AssetCheckSpec("alpha_rows", asset="alpha")])
def alpha(context: dg.AssetExecutionContext):
    keys = context.partition_keys
    context.log_event(dg.AssetObservation(asset_key="alpha", partition=keys[0], metadata={"seen": len(keys)}))
    ok = os.environ.get("QTOS_TOY_FAIL_CHECK") != "1"
    return dg.MaterializeResult(
        metadata={"rows": len(keys), "first": keys[0]}, tags={"qtos/source": "toy"},
        data_version=dg.DataVersion(f"{keys[0]}..{keys[-1]}"),
        check_results=[dg.AssetCheckResult(check_name="alpha_ok", passed=ok, metadata={"n": len(keys)}),
                       dg.AssetCheckResult(check_name="alpha_rows", passed=True,
                                           severity=dg.AssetCheckSeverity.WARN)])


@dg.multi_asset(specs=[dg.AssetSpec("beta", deps=["alpha"], code_version="v1"),
                       dg.AssetSpec("gamma", deps=["alpha"], code_version="v1")],
                partitions_def=PARTS, backfill_policy=dg.BackfillPolicy.single_run())
def beta_gamma(context: dg.AssetExecutionContext):
    yield dg.MaterializeResult(asset_key="beta", metadata={"n": len(context.partition_keys)})
    yield dg.MaterializeResult(asset_key="gamma")


@dg.asset(deps=["beta"], code_version="v1")
def summary():
    return dg.MaterializeResult(metadata={"done": True})


toy_job = dg.define_asset_job("toy_job", selection=["alpha", "beta", "gamma"])
defs = dg.Definitions(assets=[alpha, beta_gamma, summary], jobs=[toy_job])


def run_range(instance, first: int = 0, last: int | None = None):
    keys = PARTS.get_partition_keys()
    last = len(keys) - 1 if last is None else last
    return defs.resolve_job_def("toy_job").execute_in_process(
        instance=instance, raise_on_error=False,
        tags={"dagster/asset_partition_range_start": keys[first], "dagster/asset_partition_range_end": keys[last]})


if __name__ == "__main__":  # a run in a child process (crash tests): python -m tests.event_log_defs [first last]
    import sys

    args = [int(a) for a in sys.argv[1:]]
    run_range(dg.DagsterInstance.get(), *args)
