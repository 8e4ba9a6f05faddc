import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import dagster as dg
import pytest
import yaml

from qt_jobs.jobs import DAILY_PATH, FULL_GRAPH
from qt_resources.calendar import sessions
from tests.conftest import REPO, SHORT_WINDOW, write_config

EXPECTED = {("prices",), ("benchmark",), ("warehouse_files",), ("stg_prices",), ("stg_benchmark",), ("stg_news_sentiment",), ("stg_insider_flow",),
            ("features_daily",), ("labels",), ("benchmark_daily",),
            ("training_set",), ("trained_model",), ("model_promotion",), ("news",), ("news_sentiment",), ("insider_filings",), ("insider_flow",),
            ("backtest_report", "xgb_topk"), ("backtest_report", "sma_cross"), ("backtest_report", "rsi_reversion"),
            ("backtest_report", "momentum"), ("sweep_report", "sma_cross"), ("walk_forward_scores", "xgb_topk"),
            ("walk_forward", "xgb_topk"), ("market_regime",), ("decisions", "xgb_daily"), ("decisions", "trend"),
            ("guarded_targets", "xgb_daily"), ("guarded_targets", "trend"), ("trade_journal",),
            ("orders", "xgb_daily"), ("orders", "trend"), ("agent_report", "xgb_daily"), ("agent_report", "trend"),
            ("scoreboard",), ("price_warmup",)}


def test_definitions_load_from_the_repo_config():
    from qt_jobs.definitions import defs

    assert {tuple(k.path) for k in defs.resolve_all_asset_keys()} == EXPECTED
    assert defs.resolve_job_def(FULL_GRAPH) and defs.resolve_job_def(DAILY_PATH)
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.group_name, key
        assert node.description, key
        # the CLI's --partition-range needs a single-run policy on every selected asset
        assert node.backfill_policy == dg.BackfillPolicy.single_run(), key
    assert defs.resolve_job_def(FULL_GRAPH).tags["qtos/config_fingerprint"]
    assert {s.name for s in defs.sensors} >= {"price_gaps"}
    assert {s.name for s in defs.schedules} == {"daily_after_close"}


def test_workspace_and_pyproject_name_the_same_code_location():
    ws = yaml.safe_load((REPO / "workspace.yaml").read_text())
    pp = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert ws["load_from"][0]["python_module"]["module_name"] == pp["tool"]["dagster"]["module_name"] == "qt_jobs.definitions"


def _cli(args, env, cwd=REPO, timeout=420):
    exe = Path(sys.executable).parent / "dagster"
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_partition_range_and_multiprocess_daily_path(tmp_path):
    """`dagster asset materialize --partition-range` runs in one process; then the daily path runs under the
    multiprocess executor (storage survives it) for the last session."""
    cfg = write_config(tmp_path, **SHORT_WINDOW)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    env = {**os.environ, "QTOS_CONFIG": str(cfg), "DAGSTER_HOME": str(home)}
    r = _cli(["asset", "materialize", "-m", "qt_jobs.definitions", "--select", "prices,benchmark",
              "--partition-range", "2010-03-01...2011-06-30"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    files = list((tmp_path / "warehouse" / "prices").glob("session=*/data.parquet"))
    assert len(files) == len(sessions("2010-03-01", "2011-06-30")) == 339
    # the job form of a range backfill, as one run (what the price_gaps sensor launches)
    gap = tmp_path / "warehouse" / "prices" / "session=2010-07-06" / "data.parquet"
    gap.unlink()
    r = _cli(["job", "execute", "-m", "qt_jobs.definitions", "-j", "prices_backfill", "--tags",
              json.dumps({"dagster/asset_partition_range_start": "2010-07-01",
                          "dagster/asset_partition_range_end": "2010-07-09"})], env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert gap.exists()
    # train a model first so the daily path has a champion
    r = _cli(["asset", "materialize", "-m", "qt_jobs.definitions", "--select",
              "stg_prices,stg_benchmark,stg_news_sentiment,stg_insider_flow,benchmark_daily,features_daily,labels,"
              "training_set,trained_model,model_promotion"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    run_config = tmp_path / "multiprocess.yaml"
    run_config.write_text(yaml.safe_dump({"execution": {"config": {"multiprocess": {"max_concurrent": 2}}}}))
    r = _cli(["job", "execute", "-m", "qt_jobs.definitions", "-j", DAILY_PATH, "-c", str(run_config),
              "--tags", json.dumps({"dagster/partition": "2011-06-30"})], env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Launching subprocess for" in r.stdout + r.stderr  # steps really ran in child processes
    inst_out = _cli(["asset", "list", "-m", "qt_jobs.definitions"], env)
    assert "orders/xgb_daily" in inst_out.stdout
    assert (tmp_path / "warehouse" / "decisions" / "xgb_daily" / "session=2011-06-30" / "data.parquet").exists()
    assert (tmp_path / "warehouse" / "paper_broker.sqlite").exists()


def test_synthetic_universe_runs_data_stages_and_alt_data_can_be_switched_off(tmp_path):
    """data/news/filings provider synthetic: any symbols, offline; news/filings provider none: the stage is left
    out, and a feature that needs it is refused with the reason."""
    import dagster as dg

    from qt_jobs.definitions import load_definitions
    from qt_resources.config import ConfigError
    from tests.conftest import SHORT_WINDOW, write_config

    symbols = [f"Q{i:02d}" for i in range(12)]
    base = dict(SHORT_WINDOW, universe={"symbols": symbols, "benchmark": "equal_weight"},
                data={"provider": "synthetic", "seed": 3, "start": "2010-03-01", "end": "2011-06-30"})
    cfg = write_config(tmp_path, **base, news={"provider": "synthetic"}, filings={"provider": "synthetic"})
    defs = load_definitions(str(cfg))
    job = defs.resolve_job_def("full_graph")
    keys = job.partitions_def.get_partition_keys()
    groups = dg.AssetSelection.groups("market_data", "alt_data").resolve(defs.resolve_asset_graph())
    res = job.execute_in_process(asset_selection=list(groups), instance=dg.DagsterInstance.ephemeral(),
                                 tags={"dagster/asset_partition_range_start": keys[0],
                                       "dagster/asset_partition_range_end": keys[20]})
    assert res.success
    wh = tmp_path / "warehouse"
    warm = 300  # price_warmup (group market_data): the sessions before data.start the features need (rsi_14)
    for table in ("prices", "benchmark", "news", "news_sentiment", "insider_filings", "insider_flow"):
        files = sorted((wh / table).glob("session=*/data.parquet"))
        assert len(files) == 21 + (warm if table in ("prices", "benchmark") else 0), table
        assert files[-21].parent.name == f"session={keys[0]}", table
    import pandas as pd

    px = pd.read_parquet(wh / "prices" / f"session={keys[20]}" / "data.parquet")
    assert set(px["symbol"]) <= set(symbols) and len(px) >= 10

    off = tmp_path / "off"
    off.mkdir()
    cfg = write_config(off, **base, news={"provider": "none"}, filings={"provider": "none"})
    graph = load_definitions(str(cfg)).resolve_asset_graph()
    # dbt still declares the optional sources (read as empty): at most external assets, never materialised here
    keys_off = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).is_materializable}
    assert "prices" in keys_off and not keys_off & {"news", "news_sentiment", "insider_filings", "insider_flow"}
    bad = write_config(off, **base, news={"provider": "none"},
                       features={"set": ["ret_1d", "news_sentiment_1d"]})
    with pytest.raises(ConfigError, match=r"features.set\[1\]: 'news_sentiment_1d' needs news data, but "
                                          r"news.provider is 'none'"):
        load_definitions(str(bad))
