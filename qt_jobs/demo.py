"""``make demo``: materialise the whole graph offline in two runs of ``full_graph``: the research assets
(prices, benchmark, news, filings, dbt features/labels, model, backtest) over every configured session, then
the trading side (market regime, agents' decisions and guarded targets, orders, journal, agent reports and the
scoreboard) over the last year of the model's trading window (after the gate window), where a paper account can
trade honestly (``--trading-sessions 0``: the whole trading window). Prints the time per
stage and where to look.
Usage: ``python -m qt_jobs.demo [--start S --end E]``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from qt_resources.config import REPO_ROOT


def ensure_dagster_home() -> Path:
    # The instance's storage sets these too; here they also hold for a DAGSTER_HOME with stock storage.
    from qt_jobs.event_log import ensure_batching_env

    ensure_batching_env()
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    link = home / "dagster.yaml"
    if not link.exists():
        link.symlink_to(REPO_ROOT / "dagster.yaml")
    return home


def full_graph_job():
    from qt_jobs.definitions import defs
    from qt_jobs.jobs import FULL_GRAPH

    return defs.resolve_job_def(FULL_GRAPH)


RESEARCH_GROUPS = ("market_data", "alt_data", "features", "research", "backtests")
TRADING_GROUPS = ("agents", "execution", "scoreboard")


def run_full_graph(start: str | None = None, end: str | None = None, instance=None, log_level: str = "INFO",
                   executor: str = "in_process", groups: tuple[str, ...] | None = None):
    """Execute ``full_graph`` over [start, end] (default: every configured session) in one run, for all
    assets or those of ``groups``. ``executor``: in_process (the job's default) or multiprocess."""
    import dagster as dg

    from qt_jobs.definitions import defs

    job = full_graph_job()
    keys = job.partitions_def.get_partition_keys()
    start, end = start or keys[0], end or keys[-1]
    tags = {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}
    selection = None
    if groups:
        selection = list(dg.AssetSelection.groups(*groups).resolve(defs.resolve_asset_graph()))
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}},
                  "execution": {"config": {executor: {}}}}
    instance = instance or dg.DagsterInstance.get()
    return dg.execute_job(dg.reconstructable(full_graph_job), instance=instance, tags=tags,
                          run_config=run_config, asset_selection=selection), instance


def walk_forward_job():
    from qt_jobs.definitions import defs
    from qt_jobs.jobs import WALK_FORWARD

    return defs.resolve_job_def(WALK_FORWARD) if WALK_FORWARD in {j.name for j in defs.resolve_all_job_defs()} else None


def run_walk_forward(instance=None):
    """Every walk-forward window (one run: the window asset has a single-run backfill policy) and the report."""
    import dagster as dg

    keys = walk_forward_job().partitions_def.get_partition_keys()
    instance = instance or dg.DagsterInstance.get()
    return dg.execute_job(dg.reconstructable(walk_forward_job), instance=instance,
                          tags={"dagster/asset_partition_range_start": keys[0],
                                "dagster/asset_partition_range_end": keys[-1]}), instance


def out_of_sample_start() -> str:
    """First session of the trading window: after train_end + embargo, and after the gate window + embargo when
    ``research.split.gate_sessions`` is set: where the model agent may trade."""
    from qt_resources.config import load_config

    cfg = load_config()
    keys = full_graph_job().partitions_def.get_partition_keys()
    later = [k for k in keys if k > cfg.research.split.train_end.isoformat()]
    start = min(cfg.embargo, len(later) - 1)
    if cfg.research.split.gate_sessions:  # the gate window, then another embargo
        start = min(start + cfg.research.split.gate_sessions + cfg.embargo, len(later) - 1)
    return later[start]


def step_times(instance, run_id: str) -> list[tuple[str, str, float, float | None, int]]:
    """Per step of the run, from its event log: (step, status, seconds, seconds of event bookkeeping, partition
    events). Bookkeeping is the time from the step's first output (its compute done) to its end, shown for
    steps that wrote several partitions of an asset (a ranged step's per-partition events)."""
    from dagster import DagsterEventType

    stats = sorted(instance.get_run_step_stats(run_id), key=lambda s: s.start_time or 0)
    records = instance.event_log_storage.get_records_for_run(
        run_id, of_type={DagsterEventType.STEP_OUTPUT, DagsterEventType.ASSET_CHECK_EVALUATION}, limit=1_000_000)
    first_output: dict[str, float] = {}
    for r in records.records:
        first_output.setdefault(r.event_log_entry.step_key, r.event_log_entry.timestamp)
    out = []
    for s in stats:
        start, end = s.start_time or 0, s.end_time or 0
        parts = [m.dagster_event for m in s.materialization_events
                 if m.dagster_event is not None and m.dagster_event.partition is not None]
        n = len(parts)
        ranged = n > len({m.asset_key for m in parts})  # some asset got several partitions in this step
        book = end - first_output[s.step_key] if ranged and s.step_key in first_output else None
        out.append((s.step_key, s.status.value, end - start, book, n))
    return out


def print_steps(instance, run_id: str) -> None:
    rows = step_times(instance, run_id)
    print(f"{'stage':<34}{'status':<9}{'seconds':>8}{'compute':>9}{'events':>8}{'bookkeeping':>13}")
    for step, status, dur, book, n in rows:
        comp = dur - (book or 0.0)
        bk = f"{book:>7.2f} s" + (f" {1000 * book / n:>4.1f}ms/ev" if n else "") if book is not None else ""
        print(f"{step[:33]:<34}{status:<9}{dur:>8.1f}{comp:>9.1f}{n:>8}  {bk}")
    comp = sum(d - (b or 0.0) for _, _, d, b, _ in rows)
    book = sum(b or 0.0 for _, _, _, b, _ in rows)
    print(f"{'steps: compute / bookkeeping':<43}{comp:>8.1f}{sum(n for *_, n in rows):>8}  {book:>7.2f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--start", help="first session (default: data.start)")
    ap.add_argument("--end", help="last session (default: data.end)")
    ap.add_argument("--trading-sessions", type=int, default=252,
                    help="paper-trade the last N out-of-sample sessions (default 252, a year; 0 = all)")
    args = ap.parse_args(argv)
    home = ensure_dagster_home()
    keys = [k for k in full_graph_job().partitions_def.get_partition_keys() if not args.end or k <= args.end]
    oos = max(out_of_sample_start(), args.start or "")
    if args.trading_sessions:
        oos = max(oos, keys[-args.trading_sessions])
    plan = [("research", RESEARCH_GROUPS, args.start, args.end),
            ("trading", TRADING_GROUPS, oos, args.end)]
    t_all = time.perf_counter()
    for name, groups, start, end in plan:
        t0 = time.perf_counter()
        result, instance = run_full_graph(start, end, groups=groups)
        wall = time.perf_counter() - t0
        print(f"\nQTOS demo, {name} run {result.run_id} over {start or 'data.start'}..{end or 'data.end'}: "
              f"{'SUCCESS' if result.success else 'FAILED'}")
        print_steps(instance, result.run_id)
        print(f"{'run total (incl. start-up)':<43}{wall:>8.1f}")
        if not result.success:
            return 1
    if walk_forward_job() is not None:
        t0 = time.perf_counter()
        result, instance = run_walk_forward()
        print(f"\nQTOS demo, walk-forward run {result.run_id} over every window: "
              f"{'SUCCESS' if result.success else 'FAILED'}")
        print_steps(instance, result.run_id)
        print(f"{'run total (incl. start-up)':<43}{time.perf_counter() - t0:>8.1f}")
        if not result.success:
            return 1
    print(f"{'demo total':<43}{time.perf_counter() - t_all:>8.1f}")
    from qt_resources.config import load_config

    c = load_config()
    reports = sorted(c.reports_dir.glob("backtests/*/equity.png"), key=lambda p: p.stat().st_mtime)
    print(f"""
Where to look
  Dagster UI : DAGSTER_HOME={home} .venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000   (or: make dagster-ui)
  MLflow UI  : .venv/bin/mlflow ui --backend-store-uri sqlite:///{c.mlflow_dir / 'mlflow.db'} --host 127.0.0.1 --port 5000   (or: make mlflow-ui)
  Backtests  : {c.reports_dir / 'backtests'} ({len(reports)} reports: equity.png, trades.csv, sweep_heatmap.png)
  Warehouse  : {c.warehouse_dir} (Parquet per session, qtos.duckdb, paper_broker.sqlite)
  Agents     : {', '.join(a.name for a in c.agents)}: decisions/, guarded_targets/ (rules that clipped each target),
               trade_journal (asset metadata in the UI; table {c.warehouse_dir / 'trade_journal'}),
               agent_report/<agent> ({c.reports_dir / 'agents'})
  Scoreboard : {c.reports_dir / 'scoreboard.png'} (every strategy and agent on one window; asset scoreboard)
  Compare    : DAGSTER_HOME={home} .venv/bin/python -m qt_jobs.compare backtest_report/<strategy>
""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
