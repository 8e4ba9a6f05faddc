"""The guardian's rules, in the order they apply (step 4 of the guardian): a rule that changes a target is recorded
on the row (``rules``, ``detail``).

Per symbol, :data:`SYMBOL_RULES`: each reads the session's :class:`Context`, the symbol and its target so far and
returns (new target, why, final), or None where it does not apply; a final rule ends the symbol's guarding (the
kill switch, a stop). Then over the whole book: :func:`max_open_positions`, and unless the kill-switch file
freezes the book, :func:`keep_within_band` and :func:`max_gross_exposure`. A new rule is a function here and an
entry in :data:`SYMBOL_RULES` at its place in the order, with its test in tests/qt_assets/agents/test_guardian.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from qt_assets.agents.guardian.book import EPS, Book
from qt_resources.config import RiskLimits


@dataclass
class Context:
    """What the rules read about one session of one agent's book."""
    book: Book
    risk: RiskLimits
    cur: dict[str, float]    # current weights
    bars: dict[str, tuple]   # symbol -> (open, high, low, close) of the session
    vol: dict[str, float]    # annualised 20-day volatility
    kelly: float | None      # the Kelly ceiling (None before enough trades)
    kelly_why: str
    m: float                 # the allocation multiplier
    codes: str               # its reason codes
    day: float               # the session's P&L, a fraction of equity


Outcome = tuple[float, str, bool] | None


def kill_switch(c: Context, s: str, tgt: float, hold: bool) -> Outcome:
    """Drawdown >= max_drawdown_pct: every target 0, latched until reset."""
    return (0.0, c.book.halted_reason, True) if c.book.halted else None


def atr_stop(c: Context, s: str, tgt: float, hold: bool) -> Outcome:
    """Close <= the trade's stop: exit, and the exit stays due until it fills."""
    t = c.book.open.get(s)
    px = c.bars[s][3] if s in c.bars else None
    if not (t is not None and t.stop is not None and (t.breached is not None or (px is not None and px <= t.stop))):
        return None
    if t.breached is None:
        t.breached = c.book.sessions_seen
    return 0.0, (f"close {px:.4f} <= stop {t.stop:.4f}" if px is not None and px <= t.stop
                 else f"stop {t.stop:.4f} hit earlier, exit still due"), True


def vol_target(c: Context, s: str, tgt: float, hold: bool) -> Outcome:
    """w <= target_vol / vol_20d."""
    v, target = c.vol.get(s), c.risk.target_vol
    if not (target is not None and v is not None and v > 0):
        return None
    return min(tgt, target / v), f"{target:g} / vol_20d {v:.4f}", False


def kelly_ceiling(c: Context, s: str, tgt: float, hold: bool) -> Outcome:
    """w <= the Kelly ceiling of the recent trades (allocation.kelly_ceiling)."""
    return None if c.kelly is None else (min(tgt, c.kelly), c.kelly_why, False)


def allocation(c: Context, s: str, tgt: float, hold: bool) -> Outcome:
    """x the allocation multiplier (intents only, not holds)."""
    return None if hold else (tgt * c.m, c.codes, False)


def max_position_pct(c: Context, s: str, tgt: float, hold: bool) -> Outcome:
    cap = c.risk.max_position_pct
    return min(tgt, cap), f"{cap:g}", False


def daily_loss_limit(c: Context, s: str, tgt: float, hold: bool) -> Outcome:
    """A session loss beyond the limit: no target above the current weight."""
    limit = c.risk.max_daily_loss_pct
    if not (limit is not None and c.day <= -limit and tgt > c.cur[s]):
        return None
    return c.cur[s], f"session P&L {c.day:.2%} <= -{limit:.2%}", False


def cooldown(c: Context, s: str, tgt: float, hold: bool) -> Outcome:
    """After max_consecutive_losses losing trades: no new entries for cooldown_sessions."""
    b = c.book
    if not (b.cooldown_left > 0 and c.cur[s] <= EPS and tgt > 0):
        return None
    return 0.0, f"{b.cooldown_left} sessions left after {c.risk.max_consecutive_losses} consecutive losses", False


SYMBOL_RULES: tuple[tuple[str, Callable[[Context, str, float, bool], Outcome]], ...] = (
    ("kill_switch", kill_switch), ("atr_stop", atr_stop), ("vol_target", vol_target),
    ("kelly_ceiling", kelly_ceiling), ("allocation", allocation), ("max_position_pct", max_position_pct),
    ("daily_loss_limit", daily_loss_limit), ("cooldown", cooldown))


def max_open_positions(c: Context, symbols: list[str], tgt: dict[str, float], clip) -> None:
    """More targets than max_open_positions: the held ones first, then by weight; the rest go to 0."""
    n = c.risk.max_open_positions
    if n is None or c.book.halted:
        return
    ranked = sorted((s for s in symbols if tgt[s] > EPS), key=lambda s: (c.cur[s] <= EPS, -tgt[s], s))
    for s in ranked[n:]:
        clip(s, "max_open_positions", 0.0, f"{n} positions, held ones first")


def keep_within_band(c: Context, symbols: list[str], tgt: dict[str, float], rules: dict[str, list[str]],
                     band: float) -> None:
    """A re-target (or a passive drift over a cap) smaller than the rebalance band keeps the position."""
    for s in symbols:
        cur = c.cur[s]
        if cur > EPS and tgt[s] > EPS and abs(tgt[s] - cur) < band:
            if rules[s] and abs(tgt[s] - cur) > EPS:
                rules[s].append(f"rebalance_band: {tgt[s]:.4f} -> {cur:.4f} (kept: change < {band:g})")
            tgt[s] = cur


def max_gross_exposure(c: Context, symbols: list[str], tgt: dict[str, float], clip, band: float) -> None:
    """Gross above the limit by more than the band: every target scaled down (a position the band kept above a
    cap is trimmed to it here)."""
    risk = c.risk
    gross = sum(tgt.values())
    if gross > risk.max_gross_exposure + band + EPS:
        f = risk.max_gross_exposure / gross
        for s in symbols:
            clip(s, "max_gross_exposure", min(tgt[s] * f, risk.max_position_pct),
                 f"gross {gross:.4f} > {risk.max_gross_exposure:g}")
