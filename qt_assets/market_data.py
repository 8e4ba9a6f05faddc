"""Market data: daily prices partitioned by XNYS session, written one Parquet file per session."""


import dagster as dg
import pandas as pd

from qt_resources.calendar import sessions
from qt_resources.config import ProjectConfig
from qt_resources.prices import PriceProvider
from qt_resources.warehouse import Warehouse


def sessions_partitions(cfg: ProjectConfig) -> dg.StaticPartitionsDefinition:
    """XNYS sessions in data.start..data.end; the partition key of every session-partitioned asset."""
    return dg.StaticPartitionsDefinition(sessions(cfg.data.start, cfg.data.end, cfg.project.calendar))


def build_market_data_assets(cfg: ProjectConfig, partitions: dg.PartitionsDefinition) -> list:
    symbols = list(cfg.universe.symbols)

    @dg.asset(
        name="prices",
        group_name="market_data",
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"parquet"},
        description=(
            "Daily OHLCV (unadjusted) plus adjusted close for the configured universe, one Parquet file per "
            "XNYS session under warehouse/prices/. A run over a partition range fetches the range in one call."
        ),
    )
    def prices(context: dg.AssetExecutionContext, price_provider: PriceProvider, warehouse: Warehouse):
        keys = sorted(context.partition_keys)
        df = price_provider.fetch(symbols, keys[0], keys[-1])
        expected = set(keys)
        off_calendar = df[~df["session"].isin(expected)]
        df = df[df["session"].isin(expected)].reset_index(drop=True)
        warehouse.write_partitions("prices", df, keys)
        per_symbol = df.groupby("symbol")["session"].agg(["count", "min", "max"])
        absent = {s: len(keys) - int(per_symbol["count"].get(s, 0)) for s in symbols}
        context.log.info(f"prices: {len(df)} rows for {len(keys)} sessions {keys[0]}..{keys[-1]} from {price_provider.name}")
        return dg.MaterializeResult(metadata={
            "provider": price_provider.name,
            "sessions": len(keys),
            "first_session": keys[0],
            "last_session": keys[-1],
            "rows": len(df),
            "rows_off_calendar_dropped": len(off_calendar),
            "symbol_sessions_absent": dg.MetadataValue.json(absent),
            "per_symbol": dg.MetadataValue.md(per_symbol.to_markdown() if len(per_symbol) else "no rows"),
            "config_fingerprint": cfg.fingerprint(),
            "resolved_config": dg.MetadataValue.json(cfg.resolved()),
        })

    return [prices]


def read_bars(warehouse: Warehouse, sessions_: list[str]) -> pd.DataFrame:
    return warehouse.read_partitions("prices", sessions_)
