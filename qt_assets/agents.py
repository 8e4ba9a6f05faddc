"""Agents: one ``decisions/<agent>`` asset per agent in the config, partitioned by session.

A model agent loads ``models:/<model>@champion`` from MLflow, scores the session's features
(``features_daily``, the same dbt table research uses) and turns scores into target weights with
:func:`target_weights`, the same function the backtest uses.
"""


import dagster as dg
import pandas as pd

from qt_resources.config import AgentSection, ProjectConfig, RiskLimits, SelectionSection
from qt_resources.registry import MlflowRegistry
from qt_resources.warehouse import Warehouse

DECISION_COLUMNS = ["agent", "session", "symbol", "score", "rank", "target_weight", "reason", "model_version"]


def target_weights(scores: pd.DataFrame, selection: SelectionSection, risk: RiskLimits) -> pd.DataFrame:
    """Per session: rank symbols by score; the top_k with score > min_score get equal weights capped by
    max_position_pct, scaled so that gross exposure <= max_gross_exposure; everyone else 0.

    ``scores`` has columns session, symbol, score. Returns it with rank, target_weight and reason."""
    out = scores.copy()
    out["rank"] = out.groupby("session")["score"].rank(ascending=False, method="first").astype(int)
    n = out.groupby("session")["symbol"].transform("count")
    chosen = (out["rank"] <= selection.top_k) & (out["score"] > selection.min_score)
    k = chosen.groupby(out["session"]).transform("sum")
    w = (1.0 / k.where(k > 0, 1)).clip(upper=risk.max_position_pct)
    gross = (w * chosen).groupby(out["session"]).transform("sum")
    scale = (risk.max_gross_exposure / gross.where(gross > 0, 1)).clip(upper=1.0)
    out["target_weight"] = (w * scale).where(chosen, 0.0)
    reasons = []
    for r, c, nn, tw in zip(out.itertuples(index=False), chosen, n, out["target_weight"]):
        head = f"rank {r.rank}/{nn}, score {r.score:+.4f}"
        if c:
            reasons.append(f"{head} > min_score {selection.min_score:+.2f} and in top_k={selection.top_k} "
                           f"-> weight {tw:.4f} (max_position_pct {risk.max_position_pct}, "
                           f"max_gross_exposure {risk.max_gross_exposure})")
        elif r.rank > selection.top_k:
            reasons.append(f"{head}: outside top_k={selection.top_k} -> 0")
        else:
            reasons.append(f"{head} <= min_score {selection.min_score:+.2f} -> 0")
    out["reason"] = reasons
    return out


def model_decisions(feats: pd.DataFrame, model, version, agent: AgentSection, risk: RiskLimits) -> pd.DataFrame:
    """Decisions for the sessions in ``feats`` from one registered model version. Sessions before the
    version's out-of-sample start are in-sample for it: the agent holds (weight 0) and says so."""
    from qt_assets.training import predict

    features = version.tags["features"].split(",")
    oos_start = version.tags["oos_start"]
    _, s = predict(model, feats[features])
    d = target_weights(feats[["session", "symbol"]].assign(score=s), agent.selection, risk)
    in_sample = d["session"] < oos_start
    d.loc[in_sample, "target_weight"] = 0.0
    d.loc[in_sample, "reason"] = (f"hold: session is in-sample for model v{version.version} "
                                  f"(out-of-sample from {oos_start})")
    return d.assign(agent=agent.name, model_version=str(version.version))[DECISION_COLUMNS]


def no_champion_reason(registry: MlflowRegistry, name: str) -> str:
    chal = registry.alias_version(name, "challenger")
    if chal is None:
        return "nothing trained yet"
    return (f"challenger v{chal.version} {chal.tags.get('promotion_decision', 'not yet decided')}: "
            f"{chal.tags.get('promotion_reason', 'materialise model_promotion')}")


def build_agent_assets(cfg: ProjectConfig, partitions: dg.PartitionsDefinition, features_key: dg.AssetKey) -> list:
    assets = []
    for agent in cfg.agents:
        assets.append(_model_agent(cfg, agent, partitions, features_key))
    return assets


def _model_agent(cfg: ProjectConfig, agent: AgentSection, partitions, features_key) -> dg.AssetsDefinition:
    risk = cfg.risk_for(agent)

    @dg.asset(
        key=["decisions", agent.name],
        group_name="agents",
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[features_key, dg.AssetKey("model_promotion")],
        kinds={"parquet"},
        description=(f"Target weights of agent '{agent.name}' ({agent.kind}: models:/{agent.model}@champion, "
                     f"top_k={agent.selection.top_k}) per session, with a reason per symbol."),
    )
    def decisions(context: dg.AssetExecutionContext, warehouse: Warehouse, model_registry: MlflowRegistry):
        keys = sorted(context.partition_keys)
        try:
            model, version = model_registry.load_model(agent.model, "champion")
        except LookupError as e:  # no model passed the promotion gates: no exposure, and say why
            why = no_champion_reason(model_registry, agent.model)
            context.log.warning(f"{agent.name}: {e}; {why}")
            d = pd.DataFrame({"session": keys}).merge(pd.DataFrame({"symbol": cfg.universe.symbols}), how="cross")
            d = d.assign(agent=agent.name, score=float("nan"), rank=0, target_weight=0.0,
                         reason=f"hold: no champion model ({why})", model_version="none")[DECISION_COLUMNS]
            warehouse.write_partitions(f"decisions/{agent.name}", d, keys)
            return dg.MaterializeResult(metadata={"agent": agent.name, "model_version": "none",
                                                  "warning": f"no champion for {agent.model}: {why}",
                                                  "sessions": len(keys), "rows": len(d)})
        feats = warehouse.query(
            "select * replace (strftime(session, '%Y-%m-%d') as session) from features_daily "
            "where session between cast(? as date) and cast(? as date) order by session, symbol",
            [keys[0], keys[-1]])
        feats = feats[feats["session"].isin(set(keys))]
        d = model_decisions(feats, model, version, agent, risk) if len(feats) else pd.DataFrame(columns=DECISION_COLUMNS)
        warehouse.write_partitions(f"decisions/{agent.name}", d, keys)
        last = d[d["session"] == d["session"].max()] if len(d) else d
        return dg.MaterializeResult(metadata={
            "agent": agent.name, "kind": agent.kind,
            "model_uri": f"models:/{agent.model}@champion",
            "model_version": str(version.version),
            "sessions": len(keys), "rows": len(d),
            "sessions_with_positions": int(d.loc[d["target_weight"] > 0, "session"].nunique()) if len(d) else 0,
            "latest_session": last["session"].iloc[0] if len(last) else "none",
            "latest_decisions": dg.MetadataValue.md(
                last[["symbol", "score", "target_weight", "reason"]].to_markdown(index=False) if len(last) else "none"),
            "config_fingerprint": cfg.fingerprint(),
        })

    return decisions
