"""Execution: ``orders/<agent>`` turns an agent's guarded targets into broker orders, session by session.

For each session D of the run, in order: (0) splits and cash dividends with ex-date D are applied to the paper
positions (read off the raw and adjusted closes: qt_resources/corporate_actions.py); (1) orders still open from
earlier sessions fill at D's open;
(2) target weights of D x equity at D's close -> whole-share target quantities; target - position ->
order intents; (3) the intents are placed once (deterministic client order ids; a session already
placed returns its existing orders), to fill at the next session's open.
"""


import dagster as dg
import pandas as pd

from qt_assets.partition_events import partitioned_result
from qt_resources.broker import Broker, order_intents
from qt_resources.config import AgentSection, ProjectConfig
from qt_resources.warehouse import Warehouse

BROKER_POOL = "broker"


def session_actions(warehouse: Warehouse, keys: list[str]) -> list:
    """The splits and cash dividends with an ex-date in ``keys``, from the stored raw and adjusted closes (and the
    session before the first key's)."""
    from qt_resources.corporate_actions import corporate_actions

    px = warehouse.query(
        "select symbol, strftime(session, '%Y-%m-%d') as session, close, adj_close from stg_prices "
        "where session >= coalesce((select max(session) from stg_prices where session < cast(? as date)), "
        "cast(? as date)) and session <= cast(? as date)", [keys[0], keys[0], keys[-1]])
    return [a for a in corporate_actions(px) if a.ex_date >= keys[0]]


def build_execution_assets(cfg: ProjectConfig, partitions: dg.PartitionsDefinition) -> list:
    return [_orders_asset(cfg, a, partitions) for a in cfg.agents]


class OrdersRunConfig(dg.Config):
    """Run config of an orders asset. ``live_ack``: the live acknowledgement for this run (the agent's name), the
    same as the run tag ``qtos/live_ack``, for routes that set no tags (``dagster asset materialize
    --config-json '{"ops": {"orders__<agent>": {"config": {"live_ack": "<agent>"}}}}'``)."""

    live_ack: str | None = None


def _orders_asset(cfg: ProjectConfig, agent: AgentSection, partitions) -> dg.AssetsDefinition:
    @dg.asset(
        key=["orders", agent.name],
        group_name="execution",
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=BROKER_POOL,  # production: one order-placing run at a time (deploy/production/dagster.yaml)
        deps=[dg.AssetKey(["guarded_targets", agent.name]), dg.AssetKey("prices")],
        kinds={"sqlite", cfg.broker.kind} if cfg.broker.kind != "paper" else {"sqlite"},
        description=(f"Orders of agent '{agent.name}' through the {cfg.broker.kind} broker: guarded targets of "
                     "session D become orders after D's close that fill at the next session's open. Idempotent per session."),
    )
    def orders(context: dg.AssetExecutionContext, config: OrdersRunConfig, warehouse: Warehouse, broker: Broker):
        keys = sorted(context.partition_keys)
        decisions = warehouse.read_partitions(f"guarded_targets/{agent.name}", keys)
        bars = warehouse.read_partitions("prices", keys)
        from qt_resources.gates import LIVE_ACK_TAG, kill_switch, live_gate, pretrade

        ks = kill_switch(cfg)
        tags = dict(context.run.tags)
        if config.live_ack is not None:
            tags[LIVE_ACK_TAG] = config.live_ack
        live, missing = live_gate(agent, tags)
        notes = []
        if agent.mode == "live" and not live:
            notes.append(f"mode live requested but gates missing ({'; '.join(missing)}): orders go to paper")
        broker = broker.routed(live)
        if live and not broker.is_live:
            notes.append(f"live gates pass, but broker.kind is {cfg.broker.kind!r}: orders go to paper")
        for n in notes:
            context.log.warning(f"orders/{agent.name}: {n}")
        broker.open_account(agent.name)
        placed, reused, fills, canceled, rejected = 0, 0, [], [], []
        if ks:  # first: the kill switch must not depend on the reconciliation succeeding
            canceled = broker.cancel_open(agent.name, ks)
        recon = broker.reconcile(agent.name)  # the broker's truth: unknown outcomes, fills, positions
        if any(recon.values()):
            context.log.warning(f"orders/{agent.name}: reconciliation: {recon}")
        if ks:
            canceled += broker.cancel_open(agent.name, ks)  # anything the reconciliation found open
            context.log.warning(f"orders/{agent.name}: {ks}: {len(canceled)} open orders canceled, none placed")
        # a holding without a bar today is valued at its last close (as the agent's book values it), not at 0
        mark = dict(warehouse.query(
            "select symbol, close from stg_prices where session < cast(? as date) "
            "qualify row_number() over (partition by symbol order by session desc) = 1", [keys[0]]).itertuples(
                index=False)) if keys else {}
        actions = session_actions(warehouse, keys) if keys and broker.simulated else []
        applied = []
        for s in keys:
            day = bars[bars["session"] == s]
            day = day[day["close"].notna() & (day["close"] > 0)]
            opens = dict(zip(day["symbol"], day["open"]))
            closes = dict(zip(day["symbol"], day["close"]))
            mark.update(closes)
            if broker.simulated:  # splits and dividends before the open (a real broker applies its own)
                applied += broker.apply_corporate_actions(agent.name, s, actions)
            if not ks and broker.simulated:  # a real broker's fills were read back by the reconciliation
                fills += broker.fill_pending(agent.name, s, opens)
            if broker.session_done(agent.name, s):
                if not ks and not broker.simulated:  # a re-run after a crash: send what was planned but not sent
                    broker.place_session_orders(agent.name, s, [])
                reused += len(broker.orders(agent.name, s))
                continue
            if ks:  # the session is decided with no orders (the agent's book froze the same way); nothing is sent
                broker.place_session_orders(agent.name, s, [], send=False)
                continue
            dec = decisions[decisions["session"] == s] if len(decisions) else decisions
            positions = broker.positions(agent.name)
            equity = broker.cash(agent.name) + sum(q * mark.get(sym, 0.0) for sym, q in positions.items())
            intents = order_intents(dict(zip(dec["symbol"], dec["target_weight"])), positions, closes,
                                    equity, agent.min_order_value) if len(dec) else []
            intents, refused = pretrade(intents, positions, closes, cfg.broker.pretrade)
            rejected += [(s, it.symbol, it.side, why) for it, why in refused]
            placed += len(broker.place_session_orders(agent.name, s, intents, refused))
        positions = broker.positions(agent.name)
        last = keys[-1]
        cash = broker.cash(agent.name)
        equity = cash + sum(q * mark.get(sym, 0.0) for sym, q in positions.items())
        latest = broker.orders(agent.name, last)
        context.log.info(f"orders/{agent.name}: {placed} placed, {reused} already placed, {len(fills)} fills; "
                         f"equity {equity:,.2f}")
        return partitioned_result(context, {
            "broker": cfg.broker.kind,
            "trading_mode": "live" if broker.is_live else "paper",
            "reconciliation": dg.MetadataValue.json(recon),
            "broker_account": dg.MetadataValue.json(broker.account()),
            "live_gates": "pass" if live else "missing: " + "; ".join(missing),
            "warnings": dg.MetadataValue.md("\n".join(f"- {n}" for n in notes) or "none"),
            "kill_switch": ks or "off",
            "orders_canceled_by_kill_switch": len(canceled),
            "orders_rejected_pretrade": len(rejected),
            "corporate_actions_applied": dg.MetadataValue.md(
                pd.DataFrame(applied)[["ex_date", "symbol", "kind", "ratio", "amount", "qty_before", "qty_after",
                                       "cash_change"]].to_markdown(index=False) if applied else "none"),
            "rejected_pretrade": dg.MetadataValue.md(
                pd.DataFrame(rejected[-20:], columns=["session", "symbol", "side", "reason"]).to_markdown(index=False)
                if rejected else "none"),
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
