"""Execution: ``orders/<agent>`` turns an agent's decisions into broker orders, session by session.

For each session D of the run, in order: (1) orders still open from earlier sessions fill at D's open;
(2) target weights of D x equity at D's close -> whole-share target quantities; target - position ->
order intents; (3) the intents are placed once (deterministic client order ids; a session already
placed returns its existing orders), to fill at the next session's open.
"""


import math

import dagster as dg
import pandas as pd

from qt_resources.broker import Broker, OrderIntent
from qt_resources.config import AgentSection, ProjectConfig
from qt_resources.warehouse import Warehouse


def order_intents(targets: dict[str, float], positions: dict[str, float], closes: dict[str, float],
                  equity: float) -> list[OrderIntent]:
    """Whole-share, long-only intents that move ``positions`` to ``targets`` (weights of equity)."""
    intents = []
    for sym in sorted(set(targets) | set(positions)):
        px = closes.get(sym)
        if px is None or not px > 0:
            continue  # no price to size against this session: leave the position alone
        weight = targets.get(sym, 0.0)
        target_qty = math.floor(max(weight, 0.0) * equity / px)
        held = positions.get(sym, 0.0)
        delta = target_qty - held
        if abs(delta) < 1:
            continue
        side = "buy" if delta > 0 else "sell"
        why = (f"target {weight:.4f} x equity {equity:,.2f} / close {px:.2f} = {target_qty} sh; held {held:g}"
               if sym in targets else f"no decision for {sym}: close position of {held:g}")
        intents.append(OrderIntent(sym, side, float(abs(delta)), why))
    return intents


def build_execution_assets(cfg: ProjectConfig, partitions: dg.PartitionsDefinition) -> list:
    return [_orders_asset(cfg, a, partitions) for a in cfg.agents]


def _orders_asset(cfg: ProjectConfig, agent: AgentSection, partitions) -> dg.AssetsDefinition:
    @dg.asset(
        key=["orders", agent.name],
        group_name="execution",
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[dg.AssetKey(["decisions", agent.name]), dg.AssetKey("prices")],
        kinds={"sqlite"},
        description=(f"Orders of agent '{agent.name}' through the {cfg.broker.kind} broker: decisions of session "
                     "D become orders after D's close that fill at the next session's open. Idempotent per session."),
    )
    def orders(context: dg.AssetExecutionContext, warehouse: Warehouse, broker: Broker):
        keys = sorted(context.partition_keys)
        decisions = warehouse.read_partitions(f"decisions/{agent.name}", keys)
        bars = warehouse.read_partitions("prices", keys)
        broker.open_account(agent.name)
        placed, reused, fills = 0, 0, []
        for s in keys:
            day = bars[bars["session"] == s]
            opens = dict(zip(day["symbol"], day["open"]))
            closes = dict(zip(day["symbol"], day["close"]))
            fills += broker.fill_pending(agent.name, s, opens)
            if broker.session_done(agent.name, s):
                reused += len(broker.orders(agent.name, s))
                continue
            dec = decisions[decisions["session"] == s] if len(decisions) else decisions
            positions = broker.positions(agent.name)
            equity = broker.cash(agent.name) + sum(q * closes.get(sym, 0.0) for sym, q in positions.items())
            intents = order_intents(dict(zip(dec["symbol"], dec["target_weight"])), positions, closes,
                                    equity) if len(dec) else []
            placed += len(broker.place_session_orders(agent.name, s, intents))
        positions = broker.positions(agent.name)
        last = keys[-1]
        last_close = dict(zip(bars.loc[bars["session"] == last, "symbol"], bars.loc[bars["session"] == last, "close"]))
        cash = broker.cash(agent.name)
        equity = cash + sum(q * last_close.get(sym, 0.0) for sym, q in positions.items())
        latest = broker.orders(agent.name, last)
        context.log.info(f"orders/{agent.name}: {placed} placed, {reused} already placed, {len(fills)} fills; "
                         f"equity {equity:,.2f}")
        return dg.MaterializeResult(metadata={
            "broker": cfg.broker.kind,
            "sessions": len(keys),
            "orders_placed": placed,
            "orders_already_placed": reused,
            "fills": len(fills),
            "cash": round(cash, 2),
            "equity_at_last_close": round(equity, 2),
            "positions": dg.MetadataValue.json({k: float(v) for k, v in positions.items()}),
            "latest_session_orders": dg.MetadataValue.md(
                latest[["client_order_id", "symbol", "side", "qty", "status", "reason"]].to_markdown(index=False)
                if len(latest) else f"no orders for {last}"),
            "config_fingerprint": cfg.fingerprint(),
        })

    return orders
