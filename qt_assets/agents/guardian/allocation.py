"""Allocation: the position-size multiplier = regime x drawdown x discipline (step 3 of the guardian), and the
Kelly ceiling the guardian's ``kelly_ceiling`` rule applies."""

from __future__ import annotations

import math

from qt_assets.agents.guardian.book import EPS, Trade
from qt_resources.config import AllocationSection, RiskLimits


def kelly_ceiling(trades: list[Trade], risk: RiskLimits) -> tuple[float | None, str]:
    """(ceiling, explanation) from the last ``kelly_window`` closed trades; None before kelly_min_trades."""
    if risk.kelly_fraction is None:
        return None, "off"
    rets = [t.ret for t in trades if t.ret is not None][-risk.kelly_window:]
    if len(rets) < risk.kelly_min_trades:
        return None, f"{len(rets)}/{risk.kelly_min_trades} trades"
    wins, losses = [r for r in rets if r > 0], [-r for r in rets if r <= 0]
    p = len(wins) / len(rets)
    if not losses:
        f = 1.0
    elif not wins:
        f = -math.inf
    else:
        b = (sum(wins) / len(wins)) / max(sum(losses) / len(losses), EPS)
        f = p - (1 - p) / b
    cap = min(1.0, max(risk.kelly_floor, risk.kelly_fraction * f))
    return cap, f"f*={f:.3f} over {len(rets)} trades (p={p:.2f}) -> {risk.kelly_fraction:g}xf* = {cap:.4f}"


def discipline(trades: list[Trade], alloc: AllocationSection) -> tuple[float | None, int, int]:
    """(score, violations, trades) over the last ``discipline_window`` trades; score None without trades."""
    recent = trades[-alloc.discipline_window:]
    if not recent:
        return None, 0, 0
    v = sum(len(t.violations) for t in recent)
    return max(0.0, 1.0 - v / len(recent)), v, len(recent)


def allocation(label: str, drawdown: float, trades: list[Trade], alloc: AllocationSection,
               risk: RiskLimits) -> tuple[float, str, str]:
    """(multiplier, risk_mode, reason codes)."""
    m_reg = alloc.regime_multiplier.get(label, 1.0)
    codes = [f"REGIME_{label.upper()}x{m_reg:g}"]
    m_dd = 1.0
    if risk.max_drawdown_pct is not None and drawdown > alloc.drawdown_start:
        span = max(risk.max_drawdown_pct - alloc.drawdown_start, EPS)
        m_dd = 1.0 - (1.0 - alloc.drawdown_floor) * min(1.0, (drawdown - alloc.drawdown_start) / span)
        codes.append(f"DRAWDOWN_{drawdown:.1%}x{m_dd:.3f}")
    score, v, n = discipline(trades, alloc)
    m_disc = 1.0
    if n < alloc.discipline_min_trades:
        codes.append(f"DISCIPLINE_UNRATED_{n}/{alloc.discipline_min_trades}")
    elif score < alloc.discipline_threshold:
        m_disc = max(alloc.discipline_floor, score)
        codes.append(f"DISCIPLINE_{score:.2f}x{m_disc:.3f}")
    else:
        codes.append(f"DISCIPLINE_OK_{score:.2f}")
    m = m_reg * m_dd * m_disc
    mode = "normal" if m >= 0.999 else "reduced" if m >= 0.6 else "defensive"
    return m, mode, ";".join(codes)
