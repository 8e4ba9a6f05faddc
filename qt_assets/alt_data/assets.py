"""Alternative data: company news with sentiment, and SEC Form 4 insider filings with derived flow features.

Every item is stored in the partition of the session it becomes usable for (``available_session``: the
first session whose close is at or after its publication / acceptance time), so a decision at session D
can only ever see items of partitions <= D.
"""

import dagster as dg
import pandas as pd

from qt_assets.partition_events import partitioned_result
from qt_resources.config import ProjectConfig
from qt_resources.filings import FilingsProvider, insider_flow
from qt_resources.news import NEWS_COLUMNS, NewsProvider, SentimentScorer, aggregate_sentiment, dedupe_news
from qt_resources.warehouse import Warehouse

SENTIMENT_WINDOW = 5  # sessions in sentiment_mean_5d
FLOW_LOOKBACK_DAYS = 200  # filings read before the range (90-day windows + late filers)


def _fetch_window(all_sessions: list[str], keys: list[str]) -> tuple[str, str]:
    """Publication dates that can land in ``keys``: from the previous session's date (items after its
    close belong to keys[0]) to the last key."""
    i = all_sessions.index(keys[0])
    start = all_sessions[i - 1] if i > 0 else (pd.Timestamp(keys[0]) - pd.Timedelta(days=7)).strftime("%Y-%m-%d")
    return start, keys[-1]


def _store_by_usable_session(warehouse: Warehouse, table: str, frame: pd.DataFrame, keys: list[str],
                             merge) -> tuple[pd.DataFrame, int]:
    """Keep the rows usable for one of ``keys`` and replace those partitions with them, merged with what is
    stored there (``merge(fetched, stored)``): a re-fetch that lacks stored items (an API that silently returns
    less) never deletes them. Returns (the rows written, how many stored rows the fetch lacked)."""
    frame = frame[frame["available_session"].isin(set(keys))]
    stored = warehouse.read_partitions(table, keys, missing_ok=True)
    kept = 0
    if len(stored):
        merged = merge(frame, stored.drop(columns=["session"], errors="ignore")[list(frame.columns)])
        kept, frame = len(merged) - len(frame), merged  # ``frame`` is already one row per item
    frame = frame.assign(session=frame["available_session"])
    warehouse.write_partitions(table, frame, keys)
    return frame, kept


def _merge_news(fetched: pd.DataFrame, stored: pd.DataFrame) -> pd.DataFrame:
    """One item per (symbol, provider id) and URL, as ``dedupe_news`` keeps it (fetched and stored alike)."""
    return dedupe_news(pd.concat([fetched, stored], ignore_index=True))


def _merge_filings(fetched: pd.DataFrame, stored: pd.DataFrame) -> pd.DataFrame:
    """Per accession (one Form 4 filing): the fetched rows when the fetch has it (a corrected parse replaces the
    old one), else the stored rows."""
    missing = stored[~stored["accession"].isin(set(fetched["accession"]))]
    return pd.concat([fetched, missing], ignore_index=True)


def build_alt_data_assets(cfg: ProjectConfig, partitions: dg.PartitionsDefinition) -> list:
    symbols = list(cfg.universe.symbols)
    all_sessions = partitions.get_partition_keys()
    common = dict(group_name="alt_data", partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run(),
                  kinds={"parquet"})

    @dg.asset(description="Company news per symbol, deduplicated by provider id and normalised URL, stored in the "
                          "partition of the session it is usable for (published before that session's close).",
              **common)
    def news(context: dg.AssetExecutionContext, news_provider: NewsProvider, warehouse: Warehouse):
        keys = sorted(context.partition_keys)
        raw = news_provider.fetch(symbols, *_fetch_window(all_sessions, keys))
        unique = dedupe_news(raw)
        items, kept = _store_by_usable_session(warehouse, "news", unique, keys, _merge_news)
        if kept:
            context.log.warning(f"news: the fetch lacked {kept} stored items; they are kept")
        return partitioned_result(context, {
            "provider": type(news_provider).__name__, "items": len(items), "fetched": len(raw),
            "duplicates_dropped": len(raw) - len(unique), "stored_items_kept": kept,
            "per_symbol": dg.MetadataValue.json(items["symbol"].value_counts().to_dict())})

    @dg.asset(deps=[news], description=(
        "Per (symbol, session): news_count, mean sentiment, positive/negative share of the items usable for that "
        f"session, and an item-weighted {SENTIMENT_WINDOW}-session mean; scored by the configured scorer "
        "(Loughran-McDonald lexicon by default, or an LLM with the lexicon as fallback)."), **common)
    def news_sentiment(context: dg.AssetExecutionContext, sentiment_scorer: SentimentScorer, warehouse: Warehouse):
        keys = sorted(context.partition_keys)
        i = all_sessions.index(keys[0])
        before = all_sessions[max(0, i - SENTIMENT_WINDOW + 1):i]
        items = warehouse.read_partitions("news", keys)
        if items.empty:  # sessions without news still get their (zero-count) rows
            items = pd.DataFrame(columns=[*NEWS_COLUMNS, "session"])
        scored = sentiment_scorer.score(items)
        warehouse.write_partitions("news_scored", scored, keys)
        history = pd.concat([warehouse.read_partitions("news_scored", before, missing_ok=True), scored], ignore_index=True)
        agg = aggregate_sentiment(history, keys, symbols)
        warehouse.write_partitions("news_sentiment", agg, keys)
        errors = int(scored["error"].notna().sum())
        return partitioned_result(context, {
            "scorer": type(sentiment_scorer).__name__, "items_scored": len(scored), "scoring_errors": errors,
            "symbol_sessions_with_news": int((agg["news_count"] > 0).sum())})

    @dg.asset(description="SEC Form 4 transactions (one row per transaction, amendments kept as filed), stored in "
                          "the partition of the session their filing's acceptance time makes them usable for.",
              **common)
    def insider_filings(context: dg.AssetExecutionContext, filings_provider: FilingsProvider, warehouse: Warehouse):
        keys = sorted(context.partition_keys)
        tx, kept = _store_by_usable_session(warehouse, "insider_filings",
                                            filings_provider.fetch(symbols, *_fetch_window(all_sessions, keys)), keys,
                                            _merge_filings)
        if kept:
            context.log.warning(f"insider_filings: the fetch lacked {kept} stored transactions; they are kept")
        return partitioned_result(context, {
            "provider": filings_provider.name, "transactions": len(tx), "stored_transactions_kept": kept,
            "filings": int(tx["accession"].nunique()) if len(tx) else 0,
            "codes": dg.MetadataValue.json(tx["transaction_code"].value_counts().to_dict() if len(tx) else {})})

    @dg.asset(name="insider_flow", deps=[insider_filings], description=(
        "Per (symbol, session): open-market insider buying/selling over 30/90 calendar days (net value, counts, "
        "distinct buyers, officer/director split), counting a filing only from its acceptance time and applying "
        "4/A amendments as of each session."), **common)
    def insider_flow_features(context: dg.AssetExecutionContext, warehouse: Warehouse):
        keys = sorted(context.partition_keys)
        lo = (pd.Timestamp(keys[0]) - pd.Timedelta(days=FLOW_LOOKBACK_DAYS)).strftime("%Y-%m-%d")
        span = [s for s in all_sessions if lo <= s <= keys[-1]]
        tx = warehouse.read_partitions("insider_filings", span, missing_ok=True)
        flow = insider_flow(tx, keys, symbols)
        warehouse.write_partitions("insider_flow", flow, keys)
        return partitioned_result(context, {
            "transactions_considered": len(tx),
            "symbol_sessions_with_flow": int((flow["buy_count_90d"] + flow["sell_count_90d"] > 0).sum())})

    # provider 'none': the stage is left out (features and agent context that need it are refused by the config)
    return ([news, news_sentiment] if cfg.news.provider != "none" else []) + \
        ([insider_filings, insider_flow_features] if cfg.filings.provider != "none" else [])
