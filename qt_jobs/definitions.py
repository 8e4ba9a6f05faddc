"""The one ``Definitions`` entry point (named by workspace.yaml and pyproject's [tool.dagster])."""

from __future__ import annotations

import os

import dagster as dg
from dagster_dbt import get_asset_key_for_model

import qt_jobs  # noqa: F401  (offline-quiet environment defaults)
from qt_assets.agents.assets import build_agent_assets
from qt_assets.alt_data.assets import build_alt_data_assets
from qt_assets.backtests.assets import build_backtest_assets
from qt_assets.execution.assets import build_execution_assets
from qt_assets.features.assets import available_features, build_feature_assets, dbt_project, dbt_resource
from qt_assets.market_data.assets import build_market_data_assets, sessions_partitions
from qt_assets.research.assets import build_research_assets
from qt_assets.backtests.walk_forward import build_walk_forward_assets
from qt_jobs.jobs import REFRESH_DECISIONS, RETRAIN, build_jobs, config_tags
from qt_resources.alpaca_broker import AlpacaBroker
from qt_resources.broker import Broker, PaperBroker
from qt_resources.config import ConfigError, ProjectConfig, load_config
from qt_resources.filings import BundledFilingsProvider, EdgarFilingsProvider, FilingsProvider
from qt_resources.llm import LLM, NoLLM, OpenAICompatibleLLM
from qt_resources.news import LexiconScorer, LLMSentimentScorer, SentimentScorer, make_news_provider
from qt_resources.prices import make_price_provider
from qt_resources.registry import MlflowRegistry
from qt_resources.warehouse import DuckDBWarehouse
from qt_jobs.schedules import build_schedules
from qt_sensors import build_sensors


def make_llm(cfg: ProjectConfig) -> LLM:
    if cfg.llm.kind == "openai":
        return OpenAICompatibleLLM(base_url=cfg.llm.base_url, api_key=dg.EnvVar("OPENAI_API_KEY"), model=cfg.llm.model,
                                   temperature=cfg.llm.temperature, timeout_s=cfg.llm.timeout_s)
    return NoLLM()


def make_scorer(cfg: ProjectConfig) -> SentimentScorer:
    return LLMSentimentScorer(llm=make_llm(cfg)) if cfg.news.scorer == "llm" else LexiconScorer()


def make_filings_provider(kind: str, seed: int = 7) -> FilingsProvider:
    if kind == "synthetic":
        from qt_resources.filings import SyntheticFilingsProvider

        return SyntheticFilingsProvider(seed=seed)
    if kind == "edgar":
        return EdgarFilingsProvider(user_agent=dg.EnvVar("SEC_EDGAR_USER_AGENT"))
    return BundledFilingsProvider()


def _env_or_none(name: str):
    return dg.EnvVar(name) if os.environ.get(name) else None


def make_broker(cfg: ProjectConfig) -> Broker:
    audit = str(cfg.warehouse_dir / "audit.jsonl")
    if cfg.broker.kind == "alpaca":
        a = cfg.broker.alpaca
        return AlpacaBroker(db_path=str(cfg.warehouse_dir / "alpaca_broker.sqlite"), audit_path=audit,
                            initial_cash=cfg.broker.initial_cash, api_key=dg.EnvVar("ALPACA_API_KEY"),
                            secret_key=dg.EnvVar("ALPACA_SECRET_KEY"), url_override=a.paper_url,
                            # the live keys only when set (an unset EnvVar fails the resource): live refuses without
                            live_api_key=_env_or_none("ALPACA_LIVE_API_KEY"),
                            live_secret_key=_env_or_none("ALPACA_LIVE_SECRET_KEY"),
                            live_url_override=a.live_url, time_in_force=a.time_in_force,
                            price_collar_pct=cfg.broker.pretrade.price_collar_pct, timeout_seconds=a.timeout_seconds,
                            max_attempts=a.max_attempts, backoff_seconds=a.backoff_seconds,
                            enforce_market_hours=a.enforce_market_hours)
    c = cfg.backtest.costs
    return PaperBroker(db_path=str(cfg.warehouse_dir / "paper_broker.sqlite"), initial_cash=cfg.broker.initial_cash,
                       commission_bps=c.commission_bps, slippage_bps=c.slippage_bps, min_commission=c.min_commission,
                       spread_bps=c.spread_bps, price_collar_pct=cfg.broker.pretrade.price_collar_pct,
                       audit_path=audit)


def build_definitions(cfg: ProjectConfig) -> dg.Definitions:
    partitions = sessions_partitions(cfg)
    project = dbt_project(cfg.warehouse_dir)
    dbt_defs = build_feature_assets(cfg, project)
    features_key = get_asset_key_for_model(dbt_defs, "features_daily")
    labels_key = get_asset_key_for_model(dbt_defs, "labels")
    assets = [
        *build_market_data_assets(cfg, partitions),
        *build_alt_data_assets(cfg, partitions),
        *dbt_defs,
        *build_research_assets(cfg, features_key, labels_key),
        *build_backtest_assets(cfg, features_key),
        *build_walk_forward_assets(cfg, features_key, labels_key),
        *build_agent_assets(cfg, partitions, features_key, get_asset_key_for_model(dbt_defs, "stg_prices"),
                            get_asset_key_for_model(dbt_defs, "benchmark_daily")),
        *build_execution_assets(cfg, partitions),
    ]
    resources = {
        "price_provider": make_price_provider(cfg.data.provider,
                                              str(cfg.path(cfg.data.csv_path)) if cfg.data.csv_path else None,
                                              seed=cfg.data.seed),
        **({"news_provider": make_news_provider(cfg.news.provider, seed=cfg.data.seed)}
           if cfg.news.provider != "none" else {}),
        "sentiment_scorer": make_scorer(cfg),
        "llm": make_llm(cfg),
        **({"filings_provider": make_filings_provider(cfg.filings.provider, seed=cfg.data.seed)}
           if cfg.filings.provider != "none" else {}),
        "warehouse": DuckDBWarehouse(root=str(cfg.warehouse_dir), run_tags=config_tags(cfg)),
        "dbt": dbt_resource(project),
        "model_registry": MlflowRegistry(store_dir=str(cfg.mlflow_dir), experiment=cfg.project.name,
                                         tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or None),
        "broker": make_broker(cfg),
    }
    return dg.Definitions(assets=assets, jobs=build_jobs(cfg, partitions), schedules=build_schedules(partitions),
                          sensors=build_sensors(cfg, partitions, retrain_job=RETRAIN, decisions_job=REFRESH_DECISIONS), resources=resources)


def load_definitions(config_path: str | None = None) -> dg.Definitions:
    return build_definitions(load_config(config_path, known_features=available_features()))


try:
    defs = load_definitions()
except ConfigError as exc:  # the problem list is the message; none of our frames would help (Dagster's are hidden)
    raise exc.with_traceback(None) from None
