"""Kill switch and live gates (qt_resources/gates.py), the frozen book, and the kill-switch sensor."""

import json

import dagster as dg
import pytest

from qt_assets.agents.guardian import Book, Guardian
from qt_resources.broker import OrderIntent, PaperBroker
from qt_resources.config import AgentSection, AllocationSection, RiskLimits, parse_config
from qt_resources.costs import CostModel
from qt_resources.gates import LIVE_ACK_TAG, LIVE_ENV, kill_switch, live_gate, set_kill_switch
from tests.conftest import repo_config


def agent(**kw):
    return AgentSection(name="alpha", kind="rule", rule="sma_cross", **kw)


def test_live_needs_all_three_gates_and_each_blocks_alone():
    env_on = {LIVE_ENV: "1"}
    assert live_gate(agent(mode="live", live_ack="alpha"), env=env_on) == (True, [])
    assert live_gate(agent(mode="live"), {LIVE_ACK_TAG: "alpha"}, env=env_on) == (True, [])  # ack as a run tag
    cases = [(agent(mode="live", live_ack="alpha"), {}, {LIVE_ENV: "0"}, "environment QTOS_LIVE_TRADING=1"),
             (agent(mode="paper", live_ack="alpha"), {}, env_on, "mode: live"),
             (agent(mode="live", live_ack="beta"), {}, env_on, "acknowledgement"),
             (agent(mode="live"), {LIVE_ACK_TAG: "alph"}, env_on, "acknowledgement")]
    for a, tags, env, what in cases:
        live, missing = live_gate(a, tags, env=env)
        assert not live and len(missing) == 1 and what in missing[0], (a, missing)
    assert live_gate(agent(), env={})[1] == ["environment QTOS_LIVE_TRADING=1", "agents[alpha].mode: live",
                                             "acknowledgement live_ack (or run tag qtos/live_ack) = 'alpha'"]


def _cfg(tmp_path):
    return parse_config(repo_config(), "test", base_dir=tmp_path)


def test_kill_switch_file(tmp_path):
    cfg = _cfg(tmp_path)
    assert kill_switch(cfg) is None
    set_kill_switch(cfg, "manual stop")
    assert "manual stop" in kill_switch(cfg) and str(tmp_path / "KILL_SWITCH") in kill_switch(cfg)
    (tmp_path / "KILL_SWITCH").unlink()
    assert kill_switch(cfg) is None


def test_the_kill_switch_freezes_the_book_like_the_broker(tmp_path):
    """Kill switch on mid-run: the book cancels its open orders and places none, as orders/<agent> does at the
    broker (cancel_open, a session with no orders); both stay equal."""
    from qt_resources.broker import order_intents

    costs = CostModel(5, 2, 1.0)
    g = Guardian(agent(rebalance_band=0.0), RiskLimits(max_position_pct=0.5, atr_stop_mult=None, target_vol=None,
                                                       kelly_fraction=None, max_drawdown_pct=None),
                 AllocationSection(), costs, ["A", "B"], Book.new(100_000))
    br = PaperBroker(db_path=str(tmp_path / "b.sqlite"), commission_bps=5, slippage_bps=2, min_commission=1.0)
    br.open_account("alpha")
    px = {"A": 10.0, "B": 20.0}
    for i, s in enumerate(["2021-01-04", "2021-01-05", "2021-01-06", "2021-01-07", "2021-01-08"]):
        frozen = "kill switch test" if i in (2, 3) else None
        g.freeze = frozen
        px = {k: v * (1.01 if i % 2 else 0.99) for k, v in px.items()}
        bars = {k: (v, v, v, v) for k, v in px.items()}
        rows, fills = g.step(s, bars, {}, {}, ("risk_on", 1.0), {"A": 0.1 * (i + 1), "B": 0.5 - 0.1 * i})
        if frozen:
            canceled = br.cancel_open("alpha", frozen)
            if i == 2:
                assert canceled and [f["status"] for f in fills] == ["canceled"] * len(canceled)
            assert all(r["order_qty"] == 0 and r["rules"] == "kill_switch_file" for r in rows)
            br.place_session_orders("alpha", s, [])
        else:
            br.fill_pending("alpha", s, {k: b[0] for k, b in bars.items()})
            pos = br.positions("alpha")
            eq = br.cash("alpha") + sum(q * px[k] for k, q in pos.items())
            br.place_session_orders("alpha", s, order_intents({r["symbol"]: r["target_weight"] for r in rows}, pos,
                                                              px, eq))
        assert br.cash("alpha") == pytest.approx(g.book.cash, rel=1e-12) and br.positions("alpha") == g.book.qty
    assert br.orders("alpha")["status"].eq("canceled").any() and g.book.pending  # trading resumed after it


def test_sensor_sets_the_kill_switch_when_an_agent_is_halted(tmp_path):
    from qt_sensors.execution import build_execution_sensors

    raw = repo_config()
    cfg = parse_config(raw, "test", base_dir=tmp_path)
    sensor = build_execution_sensors(cfg)[0]
    inst = dg.DagsterInstance.ephemeral()

    def tick(cursor=None):
        return sensor.evaluate_tick(dg.build_sensor_context(instance=inst, cursor=cursor))

    inst.report_runless_asset_event(dg.AssetMaterialization(asset_key=dg.AssetKey(["guarded_targets", "trend"]),
                                                            metadata={"halted": False, "drawdown": 0.05}))
    first = tick()
    assert not first.run_requests and kill_switch(cfg) is None
    inst.report_runless_asset_event(dg.AssetMaterialization(asset_key=dg.AssetKey(["guarded_targets", "trend"]),
                                                            metadata={"halted": True, "drawdown": 0.26}))
    second = tick(first.cursor)
    assert "agent trend halted by its drawdown limit (drawdown 0.26)" in kill_switch(cfg)
    assert json.loads(second.cursor) == ["trend"] and not second.run_requests
    (tmp_path / "KILL_SWITCH").unlink()  # a person resumes trading; the same halt is not reported again
    assert "no agent newly halted" in tick(second.cursor).skip_message and kill_switch(cfg) is None


def test_pretrade_checks_each_rule_and_sells_come_first():
    from qt_resources.config import PretradeSection
    from qt_resources.gates import pretrade

    closes = {"A": 100.0, "B": 50.0, "C": 10.0}
    intents = [OrderIntent("A", "buy", 60, ""), OrderIntent("B", "buy", 100, ""), OrderIntent("C", "sell", 30, "")]
    ok, bad = pretrade(intents, {"B": 50.0, "C": 30.0}, closes, PretradeSection())
    assert [i.symbol for i in ok] == ["A", "B", "C"] and bad == []
    ok, bad = pretrade(intents, {"B": 50.0, "C": 30.0}, closes, PretradeSection(max_order_notional=5_500))
    assert [i.symbol for i in ok] == ["B", "C"] and bad[0][0].symbol == "A" and "6,000.00 > 5,500.00" in bad[0][1]
    ok, bad = pretrade(intents, {"B": 50.0, "C": 30.0}, closes, PretradeSection(max_symbol_notional=7_000))
    assert [i.symbol for i in ok] == ["A", "C"] and "position 7,500.00 > 7,000.00" in bad[0][1]  # B: 150 x 50
    ok, bad = pretrade(intents, {"B": 50.0, "C": 30.0}, closes, PretradeSection(max_orders_per_session=1))
    assert [i.symbol for i in ok] == ["C"] and [b[0].symbol for b in bad] == ["A", "B"]  # the sell goes first


def test_rejected_intents_are_recorded_and_the_book_matches_the_broker(tmp_path):
    from qt_resources.broker import order_intents
    from qt_resources.audit import AuditLog
    from qt_resources.config import PretradeSection
    from qt_resources.gates import pretrade

    rules = PretradeSection(max_order_notional=20_000, max_orders_per_session=2)
    g = Guardian(agent(rebalance_band=0.0), RiskLimits(max_position_pct=0.6, atr_stop_mult=None, target_vol=None,
                                                       kelly_fraction=None, max_drawdown_pct=None),
                 AllocationSection(), CostModel(5, 2, 1.0), ["A", "B", "C"], Book.new(100_000))
    g.pretrade = rules
    br = PaperBroker(db_path=str(tmp_path / "b.sqlite"), audit_path=str(tmp_path / "audit.jsonl"), commission_bps=5,
                     slippage_bps=2, min_commission=1.0)
    br.open_account("alpha")
    px = {"A": 10.0, "B": 20.0, "C": 40.0}
    n_rejected = 0
    for i, s in enumerate(["2021-01-04", "2021-01-05", "2021-01-06", "2021-01-07"]):
        px = {k: v * (1.02 if i % 2 else 0.98) for k, v in px.items()}
        bars = {k: (v, v, v, v) for k, v in px.items()}
        rows, _ = g.step(s, bars, {}, {}, ("risk_on", 1.0), {"A": 0.3, "B": 0.15 * (i % 3), "C": 0.5 - 0.1 * i})
        br.fill_pending("alpha", s, {k: b[0] for k, b in bars.items()})
        pos = br.positions("alpha")
        eq = br.cash("alpha") + sum(q * px[k] for k, q in pos.items())
        ok, bad = pretrade(order_intents({r["symbol"]: r["target_weight"] for r in rows}, pos, px, eq), pos, px, rules)
        n_rejected += len(bad)
        assert sorted(b[0].symbol for b in bad) == sorted(r["symbol"] for r in rows if "pretrade" in r["rules"])
        br.place_session_orders("alpha", s, ok, bad)
        assert br.cash("alpha") == pytest.approx(g.book.cash, rel=1e-12) and br.positions("alpha") == g.book.qty
    assert n_rejected >= 2
    orders = br.orders("alpha")
    assert (orders["status"] == "rejected").sum() == n_rejected
    assert orders.loc[orders["status"] == "rejected", "reason"].str.contains("pre-trade: max_").all()
    kinds = [r["data"].get("status") for r in AuditLog(tmp_path / "audit.jsonl").records() if r["kind"] == "transition"]
    assert kinds.count("rejected") == n_rejected


def test_price_collar_cancels_a_fill_far_from_the_sizing_price_in_the_book_and_at_the_broker(tmp_path):
    from qt_resources.broker import order_intents
    from qt_resources.config import PretradeSection

    rules = PretradeSection(price_collar_pct=0.05)
    g = Guardian(agent(rebalance_band=0.0), RiskLimits(max_position_pct=0.5, atr_stop_mult=None, target_vol=None,
                                                       kelly_fraction=None, max_drawdown_pct=None),
                 AllocationSection(), CostModel(5, 2, 1.0), ["A", "B"], Book.new(100_000))
    g.pretrade = rules
    br = PaperBroker(db_path=str(tmp_path / "b.sqlite"), commission_bps=5, slippage_bps=2, min_commission=1.0,
                     price_collar_pct=0.05)
    br.open_account("alpha")
    days = ["2021-01-04", "2021-01-05", "2021-01-06"]
    path = [{"A": (10, 10), "B": (20, 20)}, {"A": (11, 11), "B": (20.5, 20.5)}, {"A": (11, 11), "B": (20.5, 20.5)}]
    for s, bars_px in zip(days, path):  # A opens 10 % above the close it was sized on; B within 2.5 %
        bars = {k: (o, max(o, c), min(o, c), c) for k, (o, c) in bars_px.items()}
        rows, fills = g.step(s, bars, {}, {}, ("risk_on", 1.0), {"A": 0.3, "B": 0.3})
        br.fill_pending("alpha", s, {k: b[0] for k, b in bars.items()})
        pos = br.positions("alpha")
        eq = br.cash("alpha") + sum(q * bars[k][3] for k, q in pos.items())
        br.place_session_orders("alpha", s, order_intents({r["symbol"]: r["target_weight"] for r in rows}, pos,
                                                          {k: b[3] for k, b in bars.items()}, eq))
        assert br.cash("alpha") == pytest.approx(g.book.cash, rel=1e-12) and br.positions("alpha") == g.book.qty
        if s == days[1]:
            assert {f["symbol"]: f["status"] for f in fills} == {"A": "canceled", "B": "filled"}
    o = br.orders("alpha")
    first = o[o["session"] == days[0]].set_index("symbol")
    assert first.loc["A", "status"] == "canceled" and "price collar" in first.loc["A", "reason"]
    assert first.loc["A", "ref_price"] == 10 and first.loc["B", "status"] == "filled"
    assert "A" in g.book.qty  # re-sized on the new close the next session, it filled within the collar


def test_a_broker_database_from_before_the_collar_is_migrated(tmp_path):
    import sqlite3

    from qt_resources.broker import _SCHEMA

    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.executescript(_SCHEMA.replace(", ref_price real);", ");"))
    con.close()
    assert "ref_price" not in {r[1] for r in sqlite3.connect(db).execute("pragma table_info(orders)")}
    br = PaperBroker(db_path=str(db))
    br.open_account("alpha")
    br.place_session_orders("alpha", "2021-01-04", [OrderIntent("A", "buy", 1, "x", ref_price=10.0)])
    assert br.orders("alpha")["ref_price"].tolist() == [10.0]


def test_the_kill_switch_file_can_be_placed_by_the_environment(tmp_path, monkeypatch):
    from qt_resources.config import KILL_SWITCH_ENV

    cfg = _cfg(tmp_path)
    shared = tmp_path / "shared" / "KILL_SWITCH"
    monkeypatch.setenv(KILL_SWITCH_ENV, str(shared))
    assert cfg.kill_switch_path == shared and kill_switch(cfg) is None
    set_kill_switch(cfg, "from the drawdown sensor")
    assert shared.exists() and not (tmp_path / "KILL_SWITCH").exists() and "drawdown" in kill_switch(cfg)
