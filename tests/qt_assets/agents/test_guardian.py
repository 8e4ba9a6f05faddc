"""The guardian, allocation and discipline (qt_assets/agents/guardian.py): one test per rule, each of which fails when the
rule is removed, plus the book's parity with the paper broker and its persistence."""

import math

import numpy as np
import pytest

from qt_assets.agents.guardian import Book, Guardian, Trade, allocation, discipline, kelly_ceiling
from qt_resources.config import AgentSection, AllocationSection, RiskLimits
from qt_resources.costs import CostModel

OFF = dict(max_daily_loss_pct=None, max_drawdown_pct=None, max_consecutive_losses=None, atr_stop_mult=None,
           target_vol=None, kelly_fraction=None)
SESSIONS = [f"2021-01-{d:02d}" for d in range(4, 32)]


def guardian(symbols="AB", risk=None, alloc=None, costs=CostModel(), band=0.0, allow=None, cash=100_000.0):
    agent = AgentSection(name="a", kind="rule", rule="sma_cross", rebalance_band=band,
                         **({"allow_regimes": allow} if allow else {}))
    return Guardian(agent, RiskLimits(**{**OFF, **(risk or {})}), alloc or AllocationSection(discipline_min_trades=200),
                    costs, list(symbols), Book.new(cash))


def flat(px: dict) -> dict:
    return {s: (p, p, p, p) for s, p in px.items()}


def step(g, i, px, intents, regime="risk_on", atr=None, vol=None, bars=None):
    rows, fills = g.step(SESSIONS[i], bars or flat(px), atr or {}, vol or {}, (regime, 1.0), intents)
    return {r["symbol"]: r for r in rows}, fills


def test_max_position_pct_clips_and_records():
    g = guardian(risk={"max_position_pct": 0.25})
    r, _ = step(g, 0, {"A": 100, "B": 50}, {"A": 0.6, "B": 0.1})
    assert r["A"]["target_weight"] == pytest.approx(0.25) and r["A"]["rules"] == "max_position_pct"
    assert r["B"]["target_weight"] == pytest.approx(0.1) and r["B"]["rules"] == ""
    assert r["A"]["order_qty"] == 250 and r["B"]["order_qty"] == 200  # floor(w x 100k / close)


def test_max_gross_exposure_scales_down():
    g = guardian("ABC", risk={"max_position_pct": 0.5, "max_gross_exposure": 0.9})
    r, _ = step(g, 0, {"A": 10, "B": 10, "C": 10}, {"A": 0.4, "B": 0.4, "C": 0.4})
    assert [r[s]["target_weight"] for s in "ABC"] == pytest.approx([0.3, 0.3, 0.3])
    assert all("max_gross_exposure" in r[s]["rules"] for s in "ABC")


def test_max_open_positions_keeps_held_ones_first():
    g = guardian("ABC", risk={"max_position_pct": 0.3, "max_open_positions": 2})
    step(g, 0, {"A": 10, "B": 10, "C": 10}, {"A": 0.1, "B": 0.0, "C": 0.0})
    r, _ = step(g, 1, {"A": 10, "B": 10, "C": 10}, {"A": 0.1, "B": 0.2, "C": 0.3})
    assert r["A"]["current_weight"] > 0
    assert r["A"]["target_weight"] == pytest.approx(0.1)  # held: kept although it is the smallest
    assert r["C"]["target_weight"] == pytest.approx(0.3)
    assert r["B"]["target_weight"] == 0 and r["B"]["rules"] == "max_open_positions"


def test_daily_loss_limit_blocks_growth_but_not_exits():
    g = guardian(risk={"max_position_pct": 1.0, "max_daily_loss_pct": 0.03})
    step(g, 0, {"A": 100, "B": 100}, {"A": 0.5, "B": 0.0})
    step(g, 1, {"A": 100, "B": 100}, {"A": 0.5, "B": 0.0})  # filled: 500 A
    r, _ = step(g, 2, {"A": 80, "B": 100}, {"A": 0.9, "B": 0.3})  # A -20% -> equity -10%
    assert r["A"]["session_pnl"] == pytest.approx(-0.10)
    assert r["A"]["target_weight"] == pytest.approx(r["A"]["current_weight"]) and "daily_loss_limit" in r["A"]["rules"]
    assert r["B"]["target_weight"] == 0 and "daily_loss_limit" in r["B"]["rules"]
    g2 = guardian(risk={"max_position_pct": 1.0, "max_daily_loss_pct": 0.03})
    for i, p in enumerate([100, 100]):
        step(g2, i, {"A": p, "B": 100}, {"A": 0.5, "B": 0.0})
    r, _ = step(g2, 2, {"A": 80, "B": 100}, {"A": 0.0, "B": 0.0})
    assert r["A"]["target_weight"] == 0 and r["A"]["order_side"] == "sell"  # reducing is always allowed


def test_drawdown_kill_switch_flattens_latches_and_resets():
    g = guardian(risk={"max_position_pct": 1.0, "max_drawdown_pct": 0.2})
    step(g, 0, {"A": 100, "B": 100}, {"A": 1.0})
    step(g, 1, {"A": 100, "B": 100}, {"A": 1.0})
    r, _ = step(g, 2, {"A": 75, "B": 100}, {"A": 1.0, "B": 0.5})  # -25% drawdown
    assert r["A"]["risk_mode"] == "halted" and r["A"]["target_weight"] == 0 and r["A"]["rules"] == "kill_switch"
    assert r["B"]["target_weight"] == 0 and r["A"]["order_side"] == "sell"
    step(g, 3, {"A": 75, "B": 100}, {"A": 1.0})
    r, _ = step(g, 4, {"A": 120, "B": 100}, {"A": 1.0})  # recovered prices: still halted (latched)
    assert g.book.halted and r["A"]["target_weight"] == 0
    rows, _ = g.step(SESSIONS[5], flat({"A": 120, "B": 100}), {}, {}, ("risk_on", 1.0), {"A": 0.5},
                     reset_kill_switch=True)
    assert not g.book.halted and rows[0]["target_weight"] == pytest.approx(0.5)


def test_band_kept_position_over_a_cap_is_trimmed_when_the_gross_is_scaled():
    g = guardian("ABCD", risk={"max_position_pct": 0.25, "max_gross_exposure": 1.0}, band=0.02)
    step(g, 0, {"A": 100, "B": 100, "C": 100, "D": 100}, {"A": 0.25, "D": 0.25})
    step(g, 1, {"A": 100, "B": 100, "C": 100, "D": 100}, {"A": 0.25, "D": 0.25})
    r, _ = step(g, 2, {"A": 110, "B": 100, "C": 100, "D": 108}, {s: 0.25 for s in "ABCD"})  # gross 1.021 > 1 + band
    assert r["A"]["current_weight"] > 0.25 and r["D"]["current_weight"] > 0.25
    assert all(r[s]["target_weight"] <= 0.25 + 1e-12 for s in "ABCD")
    assert sum(r[s]["target_weight"] for s in "ABCD") <= 1.0 + 1e-12 and "max_gross_exposure" in r["A"]["rules"]


def _round_trip(g, i, entry, exit_, sym="A"):
    """Buy at ``entry`` (decided i, filled i+1), sell (decided i+1, filled i+2 at ``exit_``)."""
    step(g, i, {sym: entry, "B": 10}, {sym: 0.5})
    step(g, i + 1, {sym: entry, "B": 10}, {sym: 0.0})
    return step(g, i + 2, {sym: exit_, "B": 10}, {sym: 0.0})


def test_cooldown_after_consecutive_losses():
    g = guardian(risk={"max_position_pct": 1.0, "max_consecutive_losses": 2, "cooldown_sessions": 3})
    _round_trip(g, 0, 100, 95)
    assert g.book.consecutive_losses == 1 and g.book.cooldown_left == 0
    _round_trip(g, 3, 100, 95)  # second loss, exit filled at session 5 -> cooldown starts
    assert g.book.cooldown_left == 3
    blocked = [step(g, i, {"A": 100, "B": 10}, {"A": 0.5})[0]["A"] for i in (6, 7)]
    assert all(r["target_weight"] == 0 and r["rules"] == "cooldown" for r in blocked)
    r, _ = step(g, 8, {"A": 100, "B": 10}, {"A": 0.5})
    assert r["A"]["target_weight"] == pytest.approx(0.5) and r["A"]["rules"] == ""


def test_atr_stop_exits_and_late_exit_is_a_violation():
    g = guardian(risk={"max_position_pct": 1.0, "atr_stop_mult": 2.0})
    step(g, 0, {"A": 100, "B": 10}, {"A": 0.5}, atr={"A": 3.0})
    step(g, 1, {"A": 100, "B": 10}, {"A": 0.5}, atr={"A": 3.0})
    t = g.book.open["A"]
    assert t.stop == pytest.approx(94.0) and t.r == pytest.approx(6.0)  # fill 100 - 2 x ATR 3
    r, _ = step(g, 2, {"A": 95, "B": 10}, {"A": 0.5})
    assert r["A"]["rules"] == "" and r["A"]["stop"] == pytest.approx(94.0)
    r, _ = step(g, 3, {"A": 93, "B": 10}, {"A": 0.5})
    assert r["A"]["target_weight"] == 0 and r["A"]["rules"] == "atr_stop" and r["A"]["order_side"] == "sell"
    step(g, 4, {"A": 92, "B": 10}, {"A": 0.0})
    tr = g.closed[-1]  # out at the first open after the breach: on plan, even though it filled below the stop
    assert tr.exit_reason == "stop" and tr.exit_price == 92 and tr.violations == []
    # the same breach, but the exit order expires (no price for A next session): the exit comes late
    g = guardian(risk={"max_position_pct": 1.0, "atr_stop_mult": 2.0})
    step(g, 0, {"A": 100, "B": 10}, {"A": 0.5}, atr={"A": 3.0})
    step(g, 1, {"A": 100, "B": 10}, {"A": 0.5}, atr={"A": 3.0})
    step(g, 2, {"A": 93, "B": 10}, {"A": 0.5})
    _, fills = step(g, 3, {"B": 10}, {"A": 0.5}, bars={"B": (10, 10, 10, 10)})
    assert [f["status"] for f in fills] == ["expired"] and g.book.qty["A"] == 500
    r, _ = step(g, 4, {"A": 95, "B": 10}, {"A": 0.5})  # close back above the stop: the exit is still due
    assert r["A"]["rules"] == "atr_stop" and r["A"]["order_side"] == "sell"
    step(g, 5, {"A": 95, "B": 10}, {"A": 0.5})
    assert g.closed[-1].exit_reason == "stop" and "late_exit" in g.closed[-1].violations


def test_vol_target_caps_the_weight():
    g = guardian(risk={"max_position_pct": 1.0, "target_vol": 0.3})
    r, _ = step(g, 0, {"A": 100, "B": 10}, {"A": 0.5, "B": 0.5}, vol={"A": 2.0, "B": 0.2})
    assert r["A"]["target_weight"] == pytest.approx(0.15) and r["A"]["rules"] == "vol_target"
    assert r["B"]["target_weight"] == pytest.approx(0.5) and r["B"]["rules"] == ""


def _trades(rets):
    return [Trade("A", "2020-01-01", 1.0, 0, None, None, 0.1, "risk_on", 0.0, ret=r, pnl=r, exit_session="x")
            for r in rets]


def test_kelly_ceiling_from_the_agents_own_trades():
    risk = RiskLimits(kelly_fraction=0.5, kelly_min_trades=10, kelly_floor=0.02)
    # p = 0.6, average win 0.02, average loss 0.01 -> b = 2, f* = 0.6 - 0.4 / 2 = 0.4 -> half Kelly 0.2
    trades = _trades([0.02] * 6 + [-0.01] * 4)
    cap, why = kelly_ceiling(trades, risk)
    assert cap == pytest.approx(0.2) and "f*=0.400" in why
    assert kelly_ceiling(trades[:9], risk)[0] is None  # too few trades: no ceiling yet
    assert kelly_ceiling(_trades([-0.01] * 10), risk)[0] == pytest.approx(0.02)  # no edge: probe size
    g = guardian(risk={"max_position_pct": 1.0, "kelly_fraction": 0.5, "kelly_min_trades": 10})
    g.book.trades = trades
    r, _ = step(g, 0, {"A": 100, "B": 10}, {"A": 0.5})
    assert r["A"]["target_weight"] == pytest.approx(0.2) and r["A"]["rules"] == "kelly_ceiling"


def test_allocation_multiplier_regime_drawdown_discipline():
    alloc = AllocationSection(drawdown_start=0.05, drawdown_floor=0.5, discipline_min_trades=4,
                              discipline_threshold=0.8, discipline_floor=0.5)
    risk = RiskLimits(max_drawdown_pct=0.25)
    m, mode, codes = allocation("risk_off", 0.0, [], alloc, risk)
    assert m == pytest.approx(0.4) and mode == "defensive" and codes.startswith("REGIME_RISK_OFFx0.4")
    m, _, codes = allocation("risk_on", 0.15, [], alloc, risk)  # halfway from 5% to 25%: 1 - 0.5 x 0.5
    assert m == pytest.approx(0.75) and "DRAWDOWN_15.0%x0.750" in codes
    bad = _trades([0.01] * 4)
    for t in bad[:2]:
        t.violations = ["oversize"]
    assert discipline(bad, alloc) == (0.5, 2, 4)
    m, mode, codes = allocation("risk_on", 0.0, bad, alloc, risk)
    assert m == pytest.approx(0.5) and mode == "defensive" and "DISCIPLINE_0.50x0.500" in codes
    g = guardian(risk={"max_position_pct": 1.0}, alloc=AllocationSection(discipline_min_trades=200))
    r, _ = step(g, 0, {"A": 100, "B": 10}, {"A": 0.5}, regime="risk_off")
    assert r["A"]["target_weight"] == pytest.approx(0.2) and r["A"]["rules"] == "allocation"
    assert r["A"]["multiplier"] == pytest.approx(0.4) and "REGIME_RISK_OFF" in r["A"]["allocation"]


def test_discipline_violations_on_fills():
    # missing stop: stops configured but no ATR at the decision
    g = guardian(risk={"max_position_pct": 1.0, "atr_stop_mult": 2.0})
    step(g, 0, {"A": 100, "B": 10}, {"A": 0.5})
    step(g, 1, {"A": 100, "B": 10}, {"A": 0.5})
    assert g.book.open["A"].violations == ["missing_stop"]
    # regime mismatch: the agent's plan trades risk_on only
    g = guardian(risk={"max_position_pct": 1.0}, allow=["risk_on"])
    step(g, 0, {"A": 100, "B": 10}, {"A": 0.5}, regime="neutral")
    step(g, 1, {"A": 100, "B": 10}, {"A": 0.5})
    assert g.book.open["A"].violations == ["regime_mismatch"]
    # oversize: B (held) gaps down at the open, so A's planned 25% is a larger share of the equity at the fill
    g = guardian(risk={"max_position_pct": 1.0})
    step(g, 0, {"A": 100, "B": 100}, {"B": 0.7})
    step(g, 1, {"A": 100, "B": 100}, {"A": 0.25, "B": 0.7})
    step(g, 2, {"A": 100, "B": 50}, {"A": 0.25, "B": 0.7}, bars={"A": (100, 100, 100, 100), "B": (50, 50, 50, 50)})
    assert "oversize" in g.book.open["A"].violations and "oversize" not in g.book.open["B"].violations
    # early exit: a signal exit with a gain of 0.2 R
    g = guardian(risk={"max_position_pct": 1.0, "atr_stop_mult": 1.0})
    step(g, 0, {"A": 100, "B": 10}, {"A": 0.5}, atr={"A": 5.0})
    step(g, 1, {"A": 100, "B": 10}, {"A": 0.0})
    step(g, 2, {"A": 101, "B": 10}, {"A": 0.0})
    assert g.closed[-1].violations == ["early_exit"] and g.closed[-1].exit_reason == "signal"


def test_holds_keep_positions_and_the_band_absorbs_small_retargets():
    g = guardian(risk={"max_position_pct": 1.0}, band=0.05)
    step(g, 0, {"A": 100, "B": 10}, {"A": 0.5})
    r, _ = step(g, 1, {"A": 100, "B": 10}, {"A": math.nan})
    assert r["A"]["order_qty"] == 0  # the order of session 0 just filled; hold = keep
    r, _ = step(g, 2, {"A": 104, "B": 10}, {"A": 0.5})
    assert r["A"]["order_qty"] == 0 and r["A"]["target_weight"] == pytest.approx(r["A"]["current_weight"])
    r, _ = step(g, 3, {"A": 104, "B": 10}, {"A": 0.3})
    assert r["A"]["order_side"] == "sell"


def test_book_matches_the_paper_broker(tmp_path):
    """The guardian's book fills exactly as the paper broker does when the broker executes the guarded targets."""
    from qt_resources.broker import order_intents
    from qt_resources.broker import PaperBroker

    costs = CostModel(commission_bps=5, slippage_bps=2, min_commission=1.0, spread_bps=4)
    g = guardian("ABC", risk={"max_position_pct": 0.5, "atr_stop_mult": 2.0, "target_vol": 0.4}, costs=costs)
    broker = PaperBroker(db_path=str(tmp_path / "b.sqlite"), commission_bps=5, slippage_bps=2, min_commission=1.0,
                         spread_bps=4)
    broker.open_account("a")
    rng = np.random.default_rng(3)
    px = {"A": 50.0, "B": 120.0, "C": 20.0}
    mark = {}
    for i in range(len(SESSIONS) - 1):
        bars = {}
        for s in px:
            o = px[s] * math.exp(rng.normal(0, 0.01))
            px[s] = o * math.exp(rng.normal(0, 0.02))
            if rng.random() > 0.1:  # a symbol without a bar now and then: orders expire, holdings keep their value
                bars[s] = (o, max(o, px[s]) * 1.01, min(o, px[s]) * 0.99, px[s])
        intents = {s: float(rng.choice([0.0, 0.2, 0.4, math.nan])) for s in px}
        rows, _ = g.step(SESSIONS[i], bars, {s: 1.0 for s in px}, {s: 0.3 for s in px}, ("risk_on", 1.0), intents)
        broker.fill_pending("a", SESSIONS[i], {s: b[0] for s, b in bars.items()})
        closes = {s: b[3] for s, b in bars.items()}
        mark.update(closes)
        pos = broker.positions("a")
        equity = broker.cash("a") + sum(q * mark[s] for s, q in pos.items())
        assert equity == pytest.approx(rows[0]["equity"], rel=1e-12)
        broker.place_session_orders("a", SESSIONS[i], order_intents(
            {r["symbol"]: r["target_weight"] for r in rows}, pos, closes, equity))
        assert broker.cash("a") == pytest.approx(g.book.cash, rel=1e-12)
        assert {s: q for s, q in pos.items() if q} == g.book.qty
    assert len(g.closed) > 3
    assert broker.orders("a")["status"].eq("expired").any()  # the missing bars were exercised


def test_book_state_round_trip_continues_identically():
    def run(split):
        g = guardian("AB", risk={"max_position_pct": 0.6, "atr_stop_mult": 2.0, "max_consecutive_losses": 2},
                     costs=CostModel(5, 2, 1.0))
        rng = np.random.default_rng(11)
        px, out = {"A": 40.0, "B": 60.0}, []
        for i in range(20):
            if i == split:
                g = Guardian(g.agent, g.risk, g.alloc, g.costs, g.symbols, Book.from_json(g.book.to_json()))
            for s in px:
                px[s] *= math.exp(rng.normal(0, 0.03))
            rows, _ = g.step(SESSIONS[i], flat(px), {"A": 1.0, "B": 1.5}, {}, ("neutral", 0.5),
                             {s: float(rng.choice([0.0, 0.5])) for s in px})
            out.append([(r["target_weight"], r["order_qty"], r["stop"], r["equity"]) for r in rows])
        return out, g.book.to_json()

    assert run(None) == run(10)
    with pytest.raises(ValueError, match="not after the book's last session"):
        g = guardian()
        step(g, 1, {"A": 1, "B": 1}, {})
        step(g, 0, {"A": 1, "B": 1}, {})
