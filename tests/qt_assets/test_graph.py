"""The whole graph, materialised in-process on a short window (fixture ``short_run``)."""

import json
import sqlite3

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from qt_jobs.jobs import FULL_GRAPH
from tests.conftest import ON_SHORT_RUN, run_summary
from qt_resources.calendar import sessions

pytestmark = ON_SHORT_RUN  # every test here reads the short run


def keys(defs):
    return set(defs.resolve_all_asset_keys())


def test_every_asset_is_materialised(short_run):
    assert short_run["result"].success and short_run["wf_result"].success
    inst, defs = short_run["instance"], short_run["defs"]
    for key in keys(defs):
        assert inst.get_latest_materialization_event(key) is not None, key
    parts = inst.get_materialized_partitions(dg.AssetKey("prices"))
    assert parts == set(short_run["keys"])
    assert parts == set(sessions("2010-03-01", "2011-06-30"))
    assert inst.get_materialized_partitions(dg.AssetKey(["orders", "xgb_daily"])) == set(short_run["keys"])


def test_run_carries_the_resolved_config(short_run):
    run = short_run["instance"].get_run_by_id(short_run["result"].run_id)
    assert run.tags["qtos/config_fingerprint"]
    assert '"max_position_pct"' in run.tags["qtos/config"]


def test_prices_are_one_file_per_session(short_run):
    wh = short_run["tmp"] / "warehouse" / "prices"
    files = sorted(wh.glob("session=*/data.parquet"))
    stored = [f.parent.name.removeprefix("session=") for f in files]
    assert stored[300:] == short_run["keys"]  # after the 300 warm-up sessions (price_warmup)
    assert len(stored) == 300 + len(short_run["keys"]) and stored[299] < short_run["keys"][0]


def test_model_registered_with_lineage_and_aliases(short_run):
    from mlflow import MlflowClient

    uri = f"sqlite:///{short_run['tmp'] / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champ = client.get_model_version_by_alias("qtos_xgb", "champion")
    chall = client.get_model_version_by_alias("qtos_xgb", "challenger")
    assert str(champ.version) == str(chall.version) == "1"  # MLflow returns versions as int
    for tag in ["features", "objective", "label", "train_start", "train_end", "oos_start", "test_end", "data_end",
                "embargo_sessions", "data_fingerprint", "code_version", "dagster_run_id", "config_fingerprint",
                "optuna_study", "promotion_decision", "promotion_reason", "promotion_window", "test_rank_ic"]:
        assert champ.tags.get(tag), tag
    assert champ.tags["dagster_run_id"] == short_run["result"].run_id
    assert champ.tags["oos_start"] > "2010-12-31" >= champ.tags["train_end"]
    assert champ.tags["promotion_decision"] == "promoted"
    # the gate scored its own window (gate_sessions: 40), which ends an embargo before the traded/reported window
    gate_start, gate_end = champ.tags["gate_window"].split("..")
    assert "2010-12-31" < gate_start and gate_end < champ.tags["oos_start"]
    assert champ.tags["promotion_window"].split("..")[0] == gate_start
    assert champ.tags["promotion_window"].split("..")[1] <= gate_end
    assert champ.tags["promotion_reason"].startswith(f"scored on the gate window {gate_start}..")
    from qt_resources.warehouse import DuckDBWarehouse

    scores = DuckDBWarehouse(root=str(short_run["tmp"] / "warehouse")).read_table("research/test_scores")
    assert str(scores["session"].min())[:10] == champ.tags["oos_start"]  # reports start after the gate
    # the training run: params, metrics, one child run per Optuna trial, lineage artifact, model signature
    run = client.get_run(client.get_model_version("qtos_xgb", "1").run_id)
    assert run.data.params["param_max_depth"] and "test_rank_ic" in run.data.metrics
    assert any(k.startswith("baseline_logistic_regression_") for k in run.data.metrics)
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert len(children) == 4 and all("trial" in c.data.params for c in children)
    lineage = json.loads(open(client.download_artifacts(run.info.run_id, "lineage/training.json", str(short_run["tmp"]))).read())
    assert lineage["features"] == champ.tags["features"].split(",") and lineage["partitions"]["count"] > 300
    assert len(lineage["preprocessing"]["lower"]) == len(lineage["features"])


def test_backtest_reports(short_run):
    inst, tmp = short_run["instance"], short_run["tmp"]
    for name in ("xgb_topk", "sma_cross", "rsi_reversion", "momentum"):
        md = inst.get_latest_materialization_event(dg.AssetKey(["backtest_report", name])).asset_materialization.metadata
        for k in ["total_return", "cagr", "sharpe", "sortino", "max_drawdown", "calmar", "turnover", "fees_paid",
                  "trades", "equity_curve", "metrics", "trades_path"]:
            assert k in md, (name, k)
        assert md["equity_curve"].value.startswith("![equity](data:image/png;base64,")
        assert md["trades"].value > 0, name
        ev = inst.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(dg.AssetKey(["backtest_report", name]), "placed_trades"))
        assert ev is not None and ev.event.dagster_event.event_specific_data.passed, name
        table = md["metrics"].value
        for row in ("win_rate", "profit_factor", "avg_holding_sessions", "exposure", "alpha", "beta"):
            assert row in table, (name, row)
        assert "equal_weight_buy_hold" in table and "benchmark_sp500" in table
        trades = pd.read_csv(md["trades_path"].value)
        assert len(trades) == md["trades"].value and (pd.to_datetime(trades["Entry Timestamp"]) > "2010-03-01").all()
    # the model strategy runs on the out-of-sample window only, and its metrics are on the model's MLflow run
    md = inst.get_latest_materialization_event(dg.AssetKey(["backtest_report", "xgb_topk"])).asset_materialization.metadata
    assert md["window"].value.split("..")[0] > "2010-12-31"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp / 'mlflow' / 'mlflow.db'}")
    run = client.get_run(client.get_model_version("qtos_xgb", md["model_version"].value).run_id)
    assert run.data.metrics["bt_xgb_topk_sharpe"] == pytest.approx(md["sharpe"].value)


def test_agents_are_reported_like_strategies_and_everything_is_ranked_on_one_window(short_run):
    """agent_report/<agent>: the strategy report's metrics, curve and trades on the agent's own book; the
    scoreboard: every strategy and agent on the sessions they all cover, same metrics, DSR for the swept one."""
    inst, tmp = short_run["instance"], short_run["tmp"]
    from qt_resources.warehouse import DuckDBWarehouse

    wh = DuckDBWarehouse(root=str(tmp / "warehouse"))
    starts = {}
    for agent in ("xgb_daily", "trend"):
        md = inst.get_latest_materialization_event(dg.AssetKey(["agent_report", agent])).asset_materialization.metadata
        for k in ("total_return", "sharpe", "max_drawdown", "trades", "metrics", "equity_curve", "agent_config"):
            assert k in md, (agent, k)
        assert md["equity_curve"].value.startswith("![equity](data:image/png;base64,")
        for row in ("win_rate", "profit_factor", "exposure", "alpha", "beta", "max_drawdown_sessions"):
            assert row in md["metrics"].value, (agent, row)
        curve = wh.read_table(f"agents/{agent}/equity")
        g = wh.read_partitions(f"guarded_targets/{agent}")
        assert len(curve) == g["session"].nunique() and curve["value"].iloc[0] > 0
        starts[agent] = str(curve["session"].iloc[0])
    md = inst.get_latest_materialization_event(dg.AssetKey("scoreboard")).asset_materialization.metadata
    assert md["entries"].value == 6 and md["not_yet_materialised"].value == "none"
    first, last = md["window"].value.split("..")
    model_start = wh.read_table("backtests/xgb_topk/equity")["session"].iloc[0]
    assert first == max([*starts.values(), str(model_start)])  # the latest start of all entries
    board = wh.read_table("scoreboard")
    assert set(board["entry"]) == {"xgb_topk", "sma_cross", "rsi_reversion", "momentum", "xgb_daily", "trend"}
    assert (board["sessions"] == md["sessions"].value).all() and list(board["rank"]) == list(range(1, 7))
    assert board.set_index("entry")["dsr"].notna().to_dict() == {
        "xgb_topk": False, "sma_cross": True, "rsi_reversion": False, "momentum": False, "xgb_daily": False,
        "trend": False}
    assert "strategy.rule" in md["config_deltas"].value and md["equity_curves"].value.startswith("![scoreboard]")


def test_sweep_report(short_run):
    md = short_run["instance"].get_latest_materialization_event(
        dg.AssetKey(["sweep_report", "sma_cross"])).asset_materialization.metadata
    assert md["combinations"].value == 42  # 7 x 6, all with fast < slow
    assert 0.0 <= md["deflated_sharpe"].value <= 1.0 and md["heatmap"].value.startswith("![sweep](data:image/png")
    table = pd.read_parquet(md["table_path"].value)
    traded = table[table["trades"] > 0]
    assert md["combinations_traded"].value == len(traded)
    assert len(table) == 42 and traded["sharpe"].max() == pytest.approx(md["best_sharpe"].value)


def test_rule_rsi_equals_the_dbt_feature(short_run):
    """The rule strategies' Wilder RSI is the dbt feature rsi_14 (one definition, two evaluations)."""
    from qt_assets.backtests.indicators import wilder_rsi

    wh = short_run["tmp"] / "warehouse"
    con = duckdb.connect(str(wh / "qtos.duckdb"), read_only=True)
    f = con.execute("select symbol, session, rsi_14 from features_daily").df()
    px = con.execute("select symbol, session, adj_close from stg_prices").df()
    close = px.pivot(index="session", columns="symbol", values="adj_close")
    mine = wilder_rsi(close, 14).stack().rename("mine").reset_index()
    both = f.merge(mine, on=["symbol", "session"]).dropna()
    assert len(both) > 1000
    np.testing.assert_allclose(both["mine"], both["rsi_14"], rtol=1e-9, atol=1e-9)


def test_walk_forward(short_run):
    """One partition per window; each window's model is fit on rows whose labels are known before the window."""
    from qt_assets.backtests.walk_forward import windows
    from qt_resources.config import load_config

    inst, tmp = short_run["instance"], short_run["tmp"]
    wins = windows(load_config(short_run["config"]))
    assert len(wins) >= 3
    assert inst.get_materialized_partitions(dg.AssetKey(["walk_forward_scores", "xgb_topk"])) == {w.key for w in wins}
    md = inst.get_latest_materialization_event(dg.AssetKey(["walk_forward_scores", "xgb_topk"])).asset_materialization.metadata
    table = md["windows"].value
    scores = [pd.read_parquet(tmp / "warehouse" / "walk_forward" / "xgb_topk" / f"window={w.key}" / "data.parquet")
              for w in wins]
    for w, s in zip(wins, scores):
        assert s["session"].min() == w.test_start and s["session"].max() <= w.test_end
        assert w.cut < w.test_start and w.key in table
    # windows tile the out-of-sample period without overlap
    stitched = pd.concat(scores)
    assert not stitched.duplicated(["session", "symbol"]).any()
    rep = inst.get_latest_materialization_event(dg.AssetKey(["walk_forward", "xgb_topk"])).asset_materialization.metadata
    assert rep["windows"].value == len(wins) and rep["trades"].value > 0
    assert rep["window"].value.split("..")[0] == wins[0].test_start
    assert "per_window" in rep and rep["equity_curve"].value.startswith("![equity]")


def test_decisions_have_reasons_and_guarded_targets_respect_limits(short_run):
    from qt_resources.warehouse import DuckDBWarehouse

    wh = DuckDBWarehouse(root=str(short_run["tmp"] / "warehouse"))
    keys = short_run["keys"]
    d = wh.read_partitions("decisions/xgb_daily", keys)
    assert (d["reason"].str.len() > 0).all()
    assert d[d["session"] <= "2010-12-31"]["reason"].str.startswith("flat: session is before the trading window").all()
    assert d[d["target_weight"] > 0]["session"].min() > "2010-12-31"  # in-sample sessions are never traded
    inst = short_run["instance"]
    for agent in ("xgb_daily", "trend"):
        g = wh.read_partitions(f"guarded_targets/{agent}", keys)
        assert len(g) == len(keys) * 4 and g["regime"].isin(["risk_on", "neutral", "risk_off"]).all()
        gross = g.groupby("session")["target_weight"].sum()
        assert (gross <= 1.0 + 0.02 + 1e-9).all() and ((g["target_weight"] > 1e-12).groupby(g["session"]).sum() <= 3).all()
        ev = inst.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(dg.AssetKey(["guarded_targets", agent]), "limits_respected"))
        assert ev is not None and ev.event.dagster_event.event_specific_data.passed
        ev = inst.get_latest_asset_check_evaluation_record(  # both agents trade: the empty-run check passes
            dg.AssetCheckKey(dg.AssetKey(["guarded_targets", agent]), "targets_became_orders"))
        assert ev is not None and ev.event.dagster_event.event_specific_data.passed
    trend = wh.read_partitions("guarded_targets/trend", keys)
    assert (trend["rules"].str.contains("max_open_positions")).any()  # 4 symbols, at most 3 positions
    md = inst.get_latest_materialization_event(dg.AssetKey(["guarded_targets", "xgb_daily"])).asset_materialization.metadata
    assert md["risk_mode"].value in ("normal", "reduced", "defensive", "halted") and "rule_hits" not in md
    assert md["run_summary"].value.startswith("observation on partition")
    summary = run_summary(inst, ["guarded_targets", "xgb_daily"])
    assert "rule_hits" in summary and "latest_targets" in summary
    regime = wh.read_partitions("market_regime", keys)
    assert regime["label"].isin(["risk_on", "neutral", "risk_off"]).all() and len(regime) == len(keys)


def test_paper_broker_account_equals_the_guardians_book(short_run):
    """orders/<agent> executes the guarded targets through the paper broker with the shared cost model; the
    guardian's book made the same fills, so cash and positions agree at the end."""
    from qt_assets.agents.guardian import Book
    from qt_resources.warehouse import DuckDBWarehouse

    wh = DuckDBWarehouse(root=str(short_run["tmp"] / "warehouse"))
    db = sqlite3.connect(short_run["tmp"] / "warehouse" / "paper_broker.sqlite")
    for agent in ("xgb_daily", "trend"):
        book = Book.from_json(wh.read_partitions(f"guardian_state/{agent}", [short_run["keys"][-1]])["book"].iloc[0])
        cash = db.execute("select cash from accounts where agent=?", (agent,)).fetchone()[0]
        pos = dict(db.execute("select symbol, qty from positions where agent=? and qty != 0", (agent,)).fetchall())
        assert cash == pytest.approx(book.cash, rel=1e-9) and pos == book.qty
        assert db.execute("select count(*) from fills where agent=?", (agent,)).fetchone()[0] > 0
    from qt_resources.audit import AuditLog, verify

    audit = short_run["tmp"] / "warehouse" / "audit.jsonl"
    n_fills = db.execute("select count(*) from fills").fetchone()[0]
    assert verify(audit) == (True, []) and sum(r["kind"] == "fill" for r in AuditLog(audit).records()) == n_fills


def test_trade_journal_per_agent(short_run):
    md = short_run["instance"].get_latest_materialization_event(dg.AssetKey("trade_journal")).asset_materialization.metadata
    assert "xgb_daily" in md["journal"].value and "trend" in md["journal"].value
    assert md["narrative"].value.startswith("no narrative: NoLLM")


def test_orders_are_idempotent_on_rematerialisation(short_run):
    defs, inst = short_run["defs"], short_run["instance"]
    db = short_run["tmp"] / "warehouse" / "paper_broker.sqlite"
    count = lambda: sqlite3.connect(db).execute("select count(*) from orders").fetchone()[0]  # noqa: E731
    before = count()
    assert before > 0
    last_keys = short_run["keys"][-20:]
    job = defs.resolve_job_def(FULL_GRAPH)
    res = job.execute_in_process(
        instance=inst, asset_selection=[dg.AssetKey(["orders", "xgb_daily"])],
        tags={"dagster/asset_partition_range_start": last_keys[0],
              "dagster/asset_partition_range_end": last_keys[-1]})
    assert res.success
    assert count() == before
    md = inst.get_latest_materialization_event(dg.AssetKey(["orders", "xgb_daily"])).asset_materialization.metadata
    assert md["orders_placed"].value == 0 and md["orders_already_placed"].value > 0
    assert md["trading_mode"].value == "paper" and md["live_gates"].value.startswith("missing: environment")
    assert md["kill_switch"].value == "off"
    assert "acknowledgement live_ack" in md["live_gates"].value
    # the README's CLI route (`dagster asset materialize`: Dagster's implicit asset job, no tags) takes the
    # acknowledgement as run config; the other gates still hold it on paper, and the run carries the config tags
    implicit = defs.resolve_implicit_global_asset_job_def()
    res = implicit.execute_in_process(
        instance=inst, asset_selection=[dg.AssetKey(["orders", "xgb_daily"])], partition_key=last_keys[-1],
        run_config={"ops": {"orders__xgb_daily": {"config": {"live_ack": "xgb_daily"}}}})
    assert res.success and count() == before
    md = inst.get_latest_materialization_event(dg.AssetKey(["orders", "xgb_daily"])).asset_materialization.metadata
    assert md["trading_mode"].value == "paper" and "acknowledgement" not in md["live_gates"].value
    assert "qtos/config" in inst.get_run_by_id(res.run_id).tags


def _wilder_rsi(px: np.ndarray, n: int = 14) -> np.ndarray:
    d = np.diff(px)
    g, l = np.maximum(d, 0), np.maximum(-d, 0)
    out = np.full(len(px), np.nan)
    ag, al = g[:n].mean(), l[:n].mean()
    out[n] = 100 - 100 / (1 + ag / al)
    for i in range(n, len(d)):
        ag, al = (ag * (n - 1) + g[i]) / n, (al * (n - 1) + l[i]) / n
        out[i + 1] = 100 - 100 / (1 + ag / al)
    return out


def test_features_match_numpy_reference(short_run):
    con = duckdb.connect(str(short_run["tmp"] / "warehouse" / "qtos.duckdb"), read_only=True)
    f = con.execute("select f.*, p.adj_close from features_daily f join stg_prices p using (symbol, session) "
                    "order by symbol, session").df()
    con.close()
    for sym, g in f.groupby("symbol"):
        px = g["adj_close"].to_numpy()
        np.testing.assert_allclose(g["rsi_14"].to_numpy(), _wilder_rsi(px), rtol=0, atol=1e-6, equal_nan=True)
        ret = pd.Series(px).pct_change()
        np.testing.assert_allclose(g["ret_1d"].to_numpy(), ret.to_numpy(), atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(g["ret_5d"].to_numpy(), pd.Series(px).pct_change(5).to_numpy(), atol=1e-12, equal_nan=True)
        vol = ret.rolling(20).std().to_numpy() * np.sqrt(252)
        np.testing.assert_allclose(g["vol_20d"].to_numpy(), vol, atol=1e-9, equal_nan=True)
        sma = pd.Series(px)
        np.testing.assert_allclose(g["sma_ratio_5_20"].to_numpy(),
                                   (sma.rolling(5).mean() / sma.rolling(20).mean()).to_numpy(), atol=1e-12, equal_nan=True)


def test_the_warmup_feeds_the_features_and_nothing_else(short_run):
    """price_warmup stores the sessions before data.start; features_daily computes over them, so rsi_14 on
    data.start is the value of the longer history; training and the rule backtests start at data.start."""
    from qt_resources.warehouse import DuckDBWarehouse

    start = short_run["keys"][0]
    inst, tmp = short_run["instance"], short_run["tmp"]
    md = inst.get_latest_materialization_event(dg.AssetKey("price_warmup")).asset_materialization.metadata
    assert md["sessions"].value == 300 and md["last_session"].value < start and md["sessions_written"].value == 300
    con = duckdb.connect(str(tmp / "warehouse" / "qtos.duckdb"), read_only=True)
    first = con.execute("select min(session)::varchar from features_daily").fetchone()[0]
    on_start = con.execute("select count(*) from features_daily where session = ? and rsi_14 is not null and "
                           "macd is not null and beta_60 is not null", [start]).fetchone()[0]
    con.close()
    assert first == md["first_session"].value and on_start == 4  # defined on data.start for every symbol
    wh = DuckDBWarehouse(root=str(tmp / "warehouse"))
    assert str(wh.read_table("research/training_set")["session"].min())[:10] >= start
    window = inst.get_latest_materialization_event(
        dg.AssetKey(["backtest_report", "sma_cross"])).asset_materialization.metadata["window"].value
    assert window.split("..")[0] == start


def test_labels_are_forward_returns_known_h_sessions_later(short_run):
    con = duckdb.connect(str(short_run["tmp"] / "warehouse" / "qtos.duckdb"), read_only=True)
    l = con.execute("select l.*, p.adj_close from labels l join stg_prices p using (symbol, session) "
                    "where symbol = 'IBM' order by session").df()
    con.close()
    px = l["adj_close"].to_numpy()
    np.testing.assert_allclose(l["fwd_return"].to_numpy()[:-5], px[5:] / px[:-5] - 1, atol=1e-12)
    assert l["fwd_return"].iloc[-5:].isna().all()
    assert (l["label_session"].iloc[:-5].to_numpy() == l["session"].iloc[5:].to_numpy()).all()
    expected = np.where(l["fwd_return"] > 0.01, 2, np.where(l["fwd_return"] < -0.01, 0, 1))[:-5]
    assert (l["label_class"].iloc[:-5].to_numpy() == expected).all()


def test_news_and_filings_sit_in_the_partition_of_the_session_they_are_usable_for(short_run):
    from qt_resources.calendar import session_closes_utc

    root = short_run["tmp"] / "warehouse"
    keys = short_run["keys"]
    closes = session_closes_utc(keys[0], keys[-1])
    news = pd.concat([pd.read_parquet(f) for f in sorted((root / "news").glob("session=*/data.parquet"))])
    filings = pd.concat([pd.read_parquet(f) for f in sorted((root / "insider_filings").glob("session=*/data.parquet"))])
    assert len(news) > 0 and len(filings) > 0
    for frame, ts in ((news, "published_at"), (filings, "accepted_at")):
        t = pd.to_datetime(frame[ts], utc=True)
        close = frame["session"].map(closes)
        prev_close = frame["session"].map(lambda s: closes.iloc[keys.index(s) - 1] if keys.index(s) else pd.NaT)
        assert (t <= close).all(), ts  # known by the session's close ...
        assert ((t > prev_close) | prev_close.isna()).all(), ts  # ... and not usable one session earlier
    assert not news.duplicated(["symbol", "provider_id"]).any()
    sent = pd.concat([pd.read_parquet(f) for f in sorted((root / "news_sentiment").glob("session=*/data.parquet"))])
    per_day = news.groupby(["symbol", "session"]).size()
    got = sent.set_index(["symbol", "session"])["news_count"]
    assert (got.reindex(per_day.index) == per_day).all()
    assert got.sum() == len(news)


def test_news_reingestion_is_idempotent(short_run):
    defs, inst, keys = short_run["defs"], short_run["instance"], short_run["keys"]
    root = short_run["tmp"] / "warehouse" / "news"
    before = sum(len(pd.read_parquet(f)) for f in root.glob("session=*/data.parquet"))
    res = defs.resolve_job_def(FULL_GRAPH).execute_in_process(
        instance=inst, asset_selection=[dg.AssetKey("news")],
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]})
    assert res.success
    assert sum(len(pd.read_parquet(f)) for f in root.glob("session=*/data.parquet")) == before


def test_label_variants_open_entry_and_vol_scaled(short_run):
    con = duckdb.connect(str(short_run["tmp"] / "warehouse" / "qtos.duckdb"), read_only=True)
    l = con.execute("select l.*, p.adj_open, p.adj_close from labels l join stg_prices p using (symbol, session) "
                    "where symbol = 'MSFT' order by session").df()
    con.close()
    h, o, c = 5, l["adj_open"].to_numpy(), l["adj_close"].to_numpy()
    np.testing.assert_allclose(l["fwd_return_oo"].to_numpy()[:-(h + 1)], o[h + 1:] / o[1:-h] - 1, atol=1e-12)
    assert l["fwd_return_oo"].iloc[-(h + 1):].isna().all()
    assert (l["label_session_oo"].iloc[:-(h + 1)].to_numpy() == l["session"].iloc[h + 1:].to_numpy()).all()
    sigma = pd.Series(c).pct_change().rolling(20).std().to_numpy()
    np.testing.assert_allclose(l["sigma_20d"].to_numpy(), sigma, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(l["vol_threshold"].to_numpy(), 1.0 * sigma * np.sqrt(h), atol=1e-12, equal_nan=True)


def test_configured_label_variant_feeds_the_purge_columns(short_run, tmp_path):
    """label.price=open / label.kind=vol_scaled_class must reach label_session / label_class, which the purge uses."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from qt_assets.features.assets import DBT_DIR, dbt_env

    wh = short_run["tmp"] / "warehouse"
    db = tmp_path / "copy.duckdb"
    shutil.copy(wh / "qtos.duckdb", db)
    dbt = str(Path(sys.executable).parent / "dbt")
    vars_ = {"label_horizon": 5, "label_up": 0.01, "label_down": -0.01, "label_price": "open",
             "label_kind": "vol_scaled_class", "label_vol_k": 0.5}
    with dbt_env(wh):
        env = {**os.environ, "QTOS_DUCKDB_PATH": str(db)}
        r = subprocess.run([dbt, "run", "--select", "labels", "--vars", json.dumps(vars_), "--project-dir", str(DBT_DIR),
                            "--profiles-dir", str(DBT_DIR), "--target-path", str(tmp_path / "target")],
                           env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:]
    con = duckdb.connect(str(db), read_only=True)
    l = con.execute("select * from labels where fwd_return is not null and vol_threshold is not null").df()
    con.close()
    assert (l["label_session"] == l["label_session_oo"]).all() and (l["fwd_return"] == l["fwd_return_oo"]).all()
    expected = np.where(l["fwd_return"] > l["vol_threshold"], 2, np.where(l["fwd_return"] < -l["vol_threshold"], 0, 1))
    assert (l["label_class"].to_numpy() == expected).all()
    assert set(expected) == {0, 1, 2}


def test_dbt_asset_is_incremental_and_full_refresh_is_run_config(short_run):
    """Re-materialising features without new data leaves stored rows alone; ``full_refresh`` rebuilds them."""
    defs, inst, run_keys = short_run["defs"], short_run["instance"], short_run["keys"]
    db = short_run["tmp"] / "warehouse" / "qtos.duckdb"
    job = defs.resolve_job_def(FULL_GRAPH)
    tags = {"dagster/asset_partition_range_start": run_keys[0], "dagster/asset_partition_range_end": run_keys[-1]}

    def plant_and_run(full_refresh: bool) -> float:
        con = duckdb.connect(str(db))
        con.execute("update features_daily set ret_5d = -777 where session = ?", [run_keys[50]])
        con.close()
        res = job.execute_in_process(
            instance=inst, tags=tags, asset_selection=[dg.AssetKey("features_daily")],
            run_config={"ops": {"dbt_features": {"config": {"full_refresh": full_refresh}}}})
        assert res.success
        con = duckdb.connect(str(db), read_only=True)
        try:
            return con.execute("select min(ret_5d) from features_daily where session = ?", [run_keys[50]]).fetchone()[0]
        finally:
            con.close()

    assert plant_and_run(False) == -777  # nothing changed: no row recomputed
    assert plant_and_run(True) > -1  # rebuilt from the bars


def test_partition_events_carry_only_small_per_partition_metadata(short_run):
    """A step over N sessions writes N materialisation events: each holds scalars only (a few hundred bytes of
    metadata beyond Dagster's envelope), the run's tables and JSON are in one observation of its last session."""
    from dagster_shared.serdes import serialize_value

    from qt_assets.partition_events import is_small

    inst, keys = short_run["instance"], short_run["keys"]
    graph = short_run["defs"].resolve_asset_graph()
    partitioned = [k for k in graph.get_all_asset_keys() if graph.get(k).partitions_def is not None
                   and graph.get(k).partitions_def.get_partition_keys() == keys]
    assert {"prices", "benchmark", "news", "insider_flow", "market_regime"} <= {k.to_user_string() for k in partitioned}
    runs: dict[str, bool] = {}

    def ranged(run_id: str) -> bool:  # other tests also re-run single sessions, whose one event keeps everything
        if run_id not in runs:
            runs[run_id] = "dagster/asset_partition_range_start" in inst.get_run_by_id(run_id).tags
        return runs[run_id]

    for key in partitioned:
        recs = [r for r in inst.fetch_materializations(key, limit=50).records if ranged(r.run_id)][:5]
        assert recs, key
        for r in recs:
            md = r.asset_materialization.metadata
            assert all(is_small(v) for v in md.values()), (key, [k for k, v in md.items() if not is_small(v)])
            assert len(serialize_value(md)) < 3000, key
    summary = run_summary(inst, "prices")
    assert "per_symbol" in summary and summary["run_partitions"].value == len(keys)


def test_demo_splits_each_stage_into_compute_and_event_bookkeeping(short_run, capsys):
    from qt_jobs.demo import print_steps, step_times

    inst, keys = short_run["instance"], short_run["keys"]
    rows = {step: (status, dur, book, n) for step, status, dur, book, n in step_times(inst, short_run["result"].run_id)}
    status, dur, book, n = rows["prices"]
    assert status == "SUCCESS" and n == len(keys) and book is not None and 0 <= book <= dur
    assert rows["trained_model"][2] is None and rows["trained_model"][3] == 0  # unpartitioned: nothing to split
    print_steps(inst, short_run["result"].run_id)
    out = capsys.readouterr().out
    assert "bookkeeping" in out and "prices" in out and "ms/ev" in out
