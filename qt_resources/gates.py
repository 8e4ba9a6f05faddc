"""Safety gates in front of the broker: the kill switch and the live-trading gates.

- **Kill switch**: while the file ``broker.kill_switch_file`` (default ``KILL_SWITCH`` beside the config) exists,
  no agent places orders: the guardian freezes every book (targets = current positions, no orders) and
  ``orders/<agent>`` cancels the agent's open orders and places none. Its text is the reason. Set it by hand
  (``echo "reason" > KILL_SWITCH``) or by the ``kill_switch_on_drawdown`` sensor; remove the file to resume.
- **Pre-trade checks** (``broker.pretrade``): :func:`pretrade` splits a session's order intents into accepted and
  rejected (with the reason), for the orders asset and the agent's book alike.
- **Market hours** (real brokers): the orders decided on session D's close may go out only between D's close
  and the close of the next XNYS session (they are day orders for that session's open): :func:`market_window`.
  A backfill of old sessions against a real broker therefore sends nothing; its intents are recorded as rejected.
- **Live gates**: an agent trades live only when all three hold: ``QTOS_LIVE_TRADING=1`` in the environment, the
  agent's ``mode: live``, and an acknowledgement equal to the agent's name (``live_ack`` in its config or the run
  tag ``qtos/live_ack``). Anything missing means paper, with a warning that names what is missing.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from qt_resources.config import AgentSection, PretradeSection, ProjectConfig

LIVE_ENV = "QTOS_LIVE_TRADING"
LIVE_ACK_TAG = "qtos/live_ack"


def kill_switch(cfg: ProjectConfig) -> str | None:
    """The reason the kill switch is on, or None when it is off."""
    p = cfg.kill_switch_path
    if not p.exists():
        return None
    text = p.read_text(errors="replace").strip()
    return f"kill switch {p}: {text or 'file present'}"


def set_kill_switch(cfg: ProjectConfig, reason: str) -> Path:
    p = cfg.kill_switch_path
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} {reason}\n")
    return p


def live_gate(agent: AgentSection, run_tags: dict | None = None, env=None) -> tuple[bool, list[str]]:
    """(live, missing): live only when every gate holds; ``missing`` names each gate that does not."""
    env = os.environ if env is None else env
    ack = agent.live_ack or (run_tags or {}).get(LIVE_ACK_TAG)
    missing = []
    if env.get(LIVE_ENV) != "1":
        missing.append(f"environment {LIVE_ENV}=1")
    if agent.mode != "live":
        missing.append(f"agents[{agent.name}].mode: live")
    if ack != agent.name:
        missing.append(f"acknowledgement live_ack (or run tag {LIVE_ACK_TAG}) = {agent.name!r}")
    return not missing, missing


def pretrade(intents: list, positions: dict[str, float], closes: dict[str, float],
             rules: PretradeSection) -> tuple[list, list[tuple[object, str]]]:
    """(accepted, [(intent, reason)]): sells before buys (a reduction is never crowded out by new risk), each
    intent checked against ``max_order_notional``, ``max_symbol_notional`` (buys) and the session's order count."""
    accepted, rejected = [], []
    for it in sorted(intents, key=lambda i: (i.side != "sell", i.symbol)):
        px = closes.get(it.symbol, 0.0)
        notional = it.qty * px
        after = (positions.get(it.symbol, 0.0) + it.qty) * px
        if rules.max_order_notional is not None and notional > rules.max_order_notional:
            rejected.append((it, f"max_order_notional: {notional:,.2f} > {rules.max_order_notional:,.2f}"))
        elif (it.side == "buy" and rules.max_symbol_notional is not None and after > rules.max_symbol_notional):
            rejected.append((it, f"max_symbol_notional: position {after:,.2f} > {rules.max_symbol_notional:,.2f}"))
        elif rules.max_orders_per_session is not None and len(accepted) >= rules.max_orders_per_session:
            rejected.append((it, f"max_orders_per_session: {rules.max_orders_per_session} already accepted"))
        else:
            accepted.append(it)
    return sorted(accepted, key=lambda i: i.symbol), rejected


def market_window(session: str, now: datetime | None = None, calendar: str = "XNYS") -> str | None:
    """None when orders decided on ``session``'s close may be sent at ``now`` (after that close, before the close
    of the next session of the calendar); otherwise the reason they may not."""
    import pandas as pd

    from qt_resources.calendar import session_closes_utc

    def utc(ts) -> pd.Timestamp:
        ts = pd.Timestamp(ts)
        return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")

    now = utc(now or datetime.now(timezone.utc))
    d = pd.Timestamp(session)
    closes = session_closes_utc(d, d + pd.Timedelta(days=10), calendar)
    if session not in closes.index:
        return f"market hours: {session} is not an {calendar} session"
    nxt = closes.index[closes.index.get_loc(session) + 1]
    close, nxt_close = utc(closes[session]), utc(closes[nxt])
    if now < close:
        return f"market hours: session {session} has not closed yet (closes {close.isoformat()}; now {now.isoformat()})"
    if now >= nxt_close:
        return (f"market hours: orders decided on {session} were for the {calendar} session {nxt}, which closed "
                f"{nxt_close.isoformat()}; now {now.isoformat()} (stale: not sent)")
    return None
