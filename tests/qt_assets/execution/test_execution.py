"""orders/<agent> with the Alpaca broker (real alpaca-py, our server): live routing only through every gate,
reconciliation first, market hours; the asset is materialised by Dagster."""

import dagster as dg
import duckdb
import pandas as pd
import pytest

from qt_assets.execution.assets import build_execution_assets
from qt_resources.broker import order_intents
from qt_jobs.definitions import make_broker
from qt_resources.config import parse_config
from qt_resources.gates import LIVE_ACK_TAG, LIVE_ENV
from qt_resources.warehouse import DuckDBWarehouse
from tests.alpaca_trading_server import AlpacaTradingServer
from tests.conftest import repo_config
from tests.qt_resources.test_alpaca_broker import current_session

S = current_session()


def setup(tmp_path, paper_url, live_url, mode="paper", live_ack=None, session=S):
    raw = repo_config()
    raw["agents"] = [{"name": "alpha", "kind": "rule", "rule": "sma_cross", "mode": mode, "live_ack": live_ack}]
    raw["broker"] = {"kind": "alpaca", "alpaca": {"paper_url": paper_url, "live_url": live_url,
                                                  "timeout_seconds": 2, "backoff_seconds": 0.05}}
    cfg = parse_config(raw, "test", base_dir=tmp_path)
    wh = DuckDBWarehouse(root=str(cfg.warehouse_dir))
    wh.write_partitions("guarded_targets/alpha", pd.DataFrame(
        {"session": [session] * 2, "symbol": ["AAPL", "IBM"], "target_weight": [0.1, 0.05]}), [session])
    wh.write_partitions("prices", pd.DataFrame(
        {"session": [session] * 2, "symbol": ["AAPL", "IBM"], "open": [99.0, 49.0], "high": [101.0, 51.0],
         "low": [98.0, 48.0], "close": [100.0, 50.0], "volume": [1e6, 1e6]}), [session])
    cfg.warehouse_dir.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(wh.duckdb_path)) as con:
        con.execute("create table stg_prices as select * from (values ('AAPL', date '2012-01-03', 90.0)) "
                    "t(symbol, session, close)")
    return cfg, wh


def materialise(cfg, wh, session=S, tags=None):
    [asset] = build_execution_assets(cfg, dg.StaticPartitionsDefinition([session]))
    res = dg.materialize([asset], partition_key=session, tags=tags or {},
                         resources={"warehouse": wh, "broker": make_broker(cfg)})
    assert res.success
    return res.get_asset_materialization_events()[0].materialization.metadata


@pytest.fixture
def servers(monkeypatch):
    monkeypatch.setenv("ALPACA_API_KEY", "test-key")
    monkeypatch.setenv("ALPACA_SECRET_KEY", "test-secret")
    monkeypatch.setenv("ALPACA_LIVE_API_KEY", "live-key")
    monkeypatch.setenv("ALPACA_LIVE_SECRET_KEY", "live-secret")
    monkeypatch.delenv(LIVE_ENV, raising=False)
    with AlpacaTradingServer() as paper, AlpacaTradingServer(key="live-key", secret="live-secret") as live:
        yield paper, live


def test_without_every_gate_orders_go_to_alpaca_paper_with_a_warning(servers, tmp_path, monkeypatch):
    paper, live = servers
    monkeypatch.setenv(LIVE_ENV, "1")
    cfg, wh = setup(tmp_path, paper.url, live.url, mode="live")  # no acknowledgement
    md = materialise(cfg, wh)
    assert md["trading_mode"].value == "paper" and "acknowledgement" in md["warnings"].value
    assert paper.count("POST", "/v2/orders") == 2 and live.count("POST", "/v2/orders") == 0
    assert sorted(paper.orders_by_coid()) == [f"qtos-alpha-{S.replace('-', '')}-{s}-buy" for s in ("AAPL", "IBM")]
    assert md["reconciliation"].value["orders_adopted"] == []
    assert md["broker_account"].value["status"] == "ACTIVE"
    assert paper.order(f"qtos-alpha-{S.replace('-', '')}-AAPL-buy")["qty"] == "100"  # 0.1 x 100,000 / 100


@pytest.mark.parametrize("via", ["config", "run tag"])
def test_all_three_gates_route_to_the_live_endpoint(servers, tmp_path, monkeypatch, via):
    paper, live = servers
    monkeypatch.setenv(LIVE_ENV, "1")
    cfg, wh = setup(tmp_path, paper.url, live.url, mode="live", live_ack="alpha" if via == "config" else None)
    md = materialise(cfg, wh, tags={LIVE_ACK_TAG: "alpha"} if via == "run tag" else None)
    assert md["trading_mode"].value == "live" and md["live_gates"].value == "pass"
    assert live.count("POST", "/v2/orders") == 2 and paper.count("POST", "/v2/orders") == 0
    assert (cfg.warehouse_dir / "alpaca_broker.live.sqlite").exists()
    md = materialise(cfg, wh, tags={LIVE_ACK_TAG: "alpha"} if via == "run tag" else None)  # re-run: nothing new
    assert live.count("POST", "/v2/orders") == 2 and md["orders_already_placed"].value == 2


def test_a_backfill_of_history_sends_nothing_to_alpaca(servers, tmp_path):
    paper, _ = servers
    cfg, wh = setup(tmp_path, paper.url, None, session="2012-01-04")
    md = materialise(cfg, wh, session="2012-01-04")
    assert paper.count("POST", "/v2/orders") == 0
    assert "market hours" in md["latest_session_orders"].value and "rejected" in md["latest_session_orders"].value


def test_order_intents_round_down_to_whole_shares_and_skip_small_orders():
    closes = {"A": 30.0, "B": 10.0, "C": 50.0, "D": 7.0}
    got = {i.symbol: (i.side, i.qty) for i in order_intents(
        {"A": 0.1, "B": 0.0505, "C": 0.0}, {"B": 500.0, "C": 3.0, "D": 4.0}, closes, 100_000.0)}
    # A: floor(10,000 / 30) = 333; B: 505 - 500 = 5; C: exit 3; D: no decision -> closed
    assert got == {"A": ("buy", 333.0), "B": ("buy", 5.0), "C": ("sell", 3.0), "D": ("sell", 4.0)}
    assert order_intents({"A": 0.1}, {"A": 333.0}, closes, 100_000.0) == []  # a kept weight is no order
    assert order_intents({"B": 0.05004}, {"B": 500.0}, closes, 100_000.0) == []  # under one share
    small = {i.symbol for i in order_intents({"A": 0.1, "B": 0.0505, "C": 0.0}, {"B": 500.0, "C": 3.0},
                                             closes, 100_000.0, min_value=100.0)}
    assert small == {"A", "C"}  # B's $50 order is skipped; C's $150 exit always goes
    assert {i.symbol for i in order_intents({"C": 0.0}, {"C": 1.0}, closes, 1e5, min_value=1e6)} == {"C"}
