"""Market data: daily prices partitioned by XNYS session, written one Parquet file per session."""


import dagster as dg
import pandas as pd

from qt_assets.market_data.price_quality import CHECKS, MAX_LISTED, Validation, validate_prices
from qt_assets.partition_events import partitioned_result
from qt_resources.calendar import sessions
from qt_resources.config import ProjectConfig
from qt_resources.prices import PriceProvider, session_dates
from qt_resources.warehouse import Warehouse


def check_specs(asset_key: str = "prices") -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(name, asset=asset_key, blocking=blocking, description=desc)
            for name, blocking, desc in CHECKS]


def check_results(v: Validation) -> list[dg.AssetCheckResult]:
    """One result per price check: failing rows (at most MAX_LISTED named) as metadata."""
    out = []
    for name, blocking, rows in v.outcomes():
        out.append(dg.AssetCheckResult(
            check_name=name, passed=not rows,
            severity=dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN,
            metadata={"failing_rows": len(rows),
                      "rows": dg.MetadataValue.md("\n".join(f"- {r}" for r in rows[:MAX_LISTED])
                                                  + (f"\n- ... {len(rows) - MAX_LISTED} more" if len(rows) > MAX_LISTED else "")
                                                  if rows else "none")}))
    return out


def sessions_partitions(cfg: ProjectConfig) -> dg.StaticPartitionsDefinition:
    """XNYS sessions in data.start..data.end; the partition key of every session-partitioned asset."""
    return dg.StaticPartitionsDefinition(sessions(cfg.data.start, cfg.data.end, cfg.project.calendar))


def warmup_sessions(cfg: ProjectConfig) -> list[str]:
    """The ``data.warmup_sessions`` sessions before data.start (default: what the configured features need,
    qt_assets/features/warmup.py)."""
    from datetime import timedelta

    from qt_assets.features.warmup import needed

    n = cfg.data.warmup_sessions if cfg.data.warmup_sessions is not None else needed(list(cfg.features.set))
    if n == 0:
        return []
    first = cfg.data.start - timedelta(days=int(n * 1.5) + 30)
    return [s for s in sessions(first, cfg.data.start, cfg.project.calendar) if s < cfg.data.start.isoformat()][-n:]


def build_market_data_assets(cfg: ProjectConfig, partitions: dg.PartitionsDefinition) -> list:
    symbols = list(cfg.universe.symbols)
    all_sessions = partitions.get_partition_keys()
    warm = warmup_sessions(cfg)

    @dg.asset(
        name="price_warmup",
        group_name="market_data",
        backfill_policy=dg.BackfillPolicy.single_run(),
        check_specs=check_specs("price_warmup"),
        kinds={"parquet"},
        description=(
            f"The {len(warm)} sessions of prices and benchmark before data.start "
            f"({warm[0] + '..' + warm[-1] if warm else 'none: data.warmup_sessions is 0'}), stored like the "
            "partitions (warehouse/prices/, warehouse/benchmark/) so that every configured feature has converged "
            "on data.start; the features compute over them, nothing else uses them (labels, training, backtests and "
            "agents start at data.start). Fetches only the sessions not stored yet; the same quality gates as prices."
        ),
    )
    def price_warmup(context: dg.AssetExecutionContext, price_provider: PriceProvider, warehouse: Warehouse):
        stored = set(warehouse.stored_sessions("prices")) & set(warm)
        stored_bench = set(warehouse.stored_sessions("benchmark")) & set(warm)
        missing = [k for k in warm if k not in stored]
        md = {"sessions": len(warm), "first_session": warm[0] if warm else "none",
              "last_session": warm[-1] if warm else "none", "data_start": cfg.data.start.isoformat()}
        if not missing and len(stored_bench) == len(warm):
            context.log.info(f"price_warmup: all {len(warm)} warm-up sessions stored")
            return dg.MaterializeResult(metadata={**md, "sessions_fetched": 0},
                                        check_results=check_results(Validation(pd.DataFrame(), pd.DataFrame(), [], [])))
        v = Validation(pd.DataFrame(), pd.DataFrame(), [], [])
        if missing:
            raw = price_provider.fetch(symbols, missing[0], missing[-1])
            listed_from, listed_until = listings(cfg, price_provider)
            v = validate_prices(raw, missing, symbols, listed_from, listed_until=listed_until,
                                stored=warehouse.read_partitions("prices", missing, missing_ok=True,
                                                                 columns=["symbol", "session"]))
            if v.written_sessions:
                warehouse.write_partitions("prices", v.clean.assign(adj_factor=v.clean["adj_close"] / v.clean["close"]),
                                           v.written_sessions)
            if v.held_sessions:
                context.log.error(f"price_warmup: {len(v.held_sessions)} warm-up sessions not written (quality "
                                  f"gates): {v.held_sessions[:10]}; the features would not converge by data.start")
        bench_keys = [k for k in warm if k not in stored_bench and k in set(warehouse.stored_sessions("prices"))]
        if bench_keys:
            i = warm.index(bench_keys[0])
            rets = benchmark_returns(cfg.universe.benchmark, bench_keys, warm[i - 1] if i > 0 else None, warehouse,
                                     price_provider)
            out = pd.DataFrame({"session": rets.index, "benchmark": cfg.universe.benchmark, "ret_1d": rets.to_numpy()})
            warehouse.write_partitions("benchmark", out[out["session"].isin(set(bench_keys))], bench_keys)
        return dg.MaterializeResult(metadata={
            **md, "sessions_fetched": len(missing), "sessions_written": len(v.written_sessions),
            "sessions_held_back": dg.MetadataValue.json(v.held_sessions[:200]), "rows": len(v.clean),
            "benchmark_sessions_written": len(bench_keys), "provider": price_provider.name},
            check_results=check_results(v))

    @dg.asset(
        name="prices",
        group_name="market_data",
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        check_specs=check_specs("prices"),
        kinds={"parquet"},
        metadata={"resolved_config": dg.MetadataValue.json(cfg.resolved()), "config_fingerprint": cfg.fingerprint()},
        description=(
            "Daily OHLCV (unadjusted), adjusted close and adjustment factor for the configured universe, one "
            "Parquet file per XNYS session under warehouse/prices/. Every row passes the quality gates before "
            "it is stored; a session with any failing row keeps its previous file and its rows go to "
            "warehouse/quarantine/prices/. Structural checks are blocking."
        ),
    )
    def prices(context: dg.AssetExecutionContext, price_provider: PriceProvider, warehouse: Warehouse):
        keys = sorted(context.partition_keys)
        raw = price_provider.fetch(symbols, keys[0], keys[-1])
        listed_from, listed_until = listings(cfg, price_provider)
        v = validate_prices(raw, keys, symbols, listed_from,
                            previous=_previous_session_rows(warehouse, all_sessions, keys[0]),
                            listed_until=listed_until,
                            stored=warehouse.read_partitions("prices", keys, missing_ok=True,
                                                             columns=["symbol", "session"]))
        dropped = v.dropped
        if dropped:
            context.log.warning(f"prices: {len(dropped)} stored rows dropped after their symbol's delisting "
                                f"(universe.listings / the provider) or its removal from universe.symbols: "
                                f"{dropped[:10]}")
        clean = v.clean.assign(adj_factor=v.clean["adj_close"] / v.clean["close"])
        if v.written_sessions:
            warehouse.write_partitions("prices", clean, v.written_sessions)
        quarantine_path = None
        if len(v.quarantine) or v.held_sessions:
            q = v.quarantine.assign(run_id=context.run_id)
            quarantine_path = warehouse.write_table(f"quarantine/prices/run={context.run_id}", q)
            context.log.warning(f"prices: {len(v.quarantine)} rows quarantined, {len(v.held_sessions)} sessions "
                                f"not written: {v.held_sessions[:10]}")
        per_symbol = v.clean.groupby("symbol")["session"].agg(["count", "min", "max"])
        context.log.info(f"prices: {len(v.clean)} rows for {len(v.written_sessions)}/{len(keys)} sessions "
                         f"{keys[0]}..{keys[-1]} from {price_provider.name}")
        return partitioned_result(
            context, {
                "provider": price_provider.name,
                "sessions": len(keys),
                "sessions_written": len(v.written_sessions),
                "sessions_held_back": dg.MetadataValue.json(v.held_sessions[:200]),
                "first_session": keys[0],
                "last_session": keys[-1],
                "rows": len(v.clean),
                "rows_quarantined": len(v.quarantine),
                "rows_dropped_after_delisting": len(dropped),
                "quarantine_file": dg.MetadataValue.path(str(quarantine_path)) if quarantine_path else "none",
                "per_symbol": dg.MetadataValue.md(per_symbol.to_markdown() if len(per_symbol) else "no rows"),
                "config_fingerprint": cfg.fingerprint(),  # the resolved config itself is in the run's tags
            },
            check_results=check_results(v),
        )

    @dg.asset(
        name="benchmark",
        group_name="market_data",
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[prices],
        check_specs=[dg.AssetCheckSpec("benchmark_sessions_complete", asset="benchmark", blocking=True,
                                       description="a benchmark return for every session of the range")],
        kinds={"parquet"},
        description=(
            f"Daily return of the benchmark '{cfg.universe.benchmark}' per session (equal_weight: mean adjusted "
            "return of the universe; sp500: the real S&P 500 index shipped in the arch package, 1999-2018; a "
            "symbol: its adjusted close from the price provider). Levels are chained in dbt (benchmark_daily)."
        ),
    )
    def benchmark(context: dg.AssetExecutionContext, price_provider: PriceProvider, warehouse: Warehouse):
        keys = sorted(context.partition_keys)
        i = all_sessions.index(keys[0])
        prev = all_sessions[i - 1] if i > 0 else (warm[-1] if warm else None)  # data.start: the last warm-up close
        rets = benchmark_returns(cfg.universe.benchmark, keys, prev, warehouse, price_provider)
        # the very first configured session has no previous close without a warm-up: its return is NaN then
        known = set(rets.dropna().index)
        missing = [k for k in keys if k not in known and (k != all_sessions[0] or warm)]
        out = pd.DataFrame({"session": rets.index, "benchmark": cfg.universe.benchmark,
                            "ret_1d": rets.to_numpy()})
        out = out[out["session"].isin(set(keys))]
        if missing:  # the blocking check fails: nothing is written, the stored sessions stay as they are
            context.log.error(f"benchmark: no return for {len(missing)} sessions {missing[:10]}; nothing written")
        else:
            warehouse.write_partitions("benchmark", out, keys)
        return partitioned_result(
            context, {"benchmark": cfg.universe.benchmark, "sessions": len(keys),
                      "cumulative_return": float((1 + out["ret_1d"].fillna(0)).prod() - 1),
                      "sessions_written": 0 if missing else len(keys),
                      "config_fingerprint": cfg.fingerprint()},
            check_results=[dg.AssetCheckResult(
                check_name="benchmark_sessions_complete", passed=not missing,
                metadata={"missing_sessions": dg.MetadataValue.json(missing[:100]), "missing": len(missing)})])

    return [price_warmup, prices, benchmark]


def benchmark_returns(kind: str, keys: list[str], prev: str | None, warehouse: Warehouse,
                      provider: PriceProvider) -> pd.Series:
    """Close-to-close (adjusted) returns of the benchmark, indexed by session, for ``keys`` (the first one
    uses ``prev``'s close when available, else NaN)."""
    span = ([prev] if prev else []) + keys
    if kind == "equal_weight":
        px = warehouse.read_partitions("prices", span, missing_ok=True)
        has_prev = bool(len(px)) and bool((px["session"] == prev).any())
        if prev and not has_prev:  # the range's first return needs the previous close
            symbols = sorted(set(px["symbol"])) if len(px) else []
            if symbols:
                px = pd.concat([_numeric_closes(provider.fetch(symbols, prev, prev)), px], ignore_index=True)
        wide = px.pivot(index="session", columns="symbol", values="adj_close").reindex(span)
        return wide.pct_change(fill_method=None).mean(axis=1, skipna=True).reindex(keys)
    if kind == "sp500":
        import arch.data.sp500

        d = arch.data.sp500.load()["Adj Close"]
        d.index = d.index.strftime("%Y-%m-%d")
        return d.reindex(span).pct_change(fill_method=None).reindex(keys)
    bars = _numeric_closes(provider.fetch([kind], span[0], span[-1]))
    bars = bars.dropna(subset=["session"]).drop_duplicates("session")  # a bad row counts as a missing return
    return bars.set_index("session")["adj_close"].reindex(span).pct_change(fill_method=None).reindex(keys)


def _numeric_closes(bars: pd.DataFrame) -> pd.DataFrame:
    """A provider's rows (text from a csv provider) with numeric ``adj_close`` and ISO ``session`` (NaN / None
    where a value does not parse: that session then has no return, and the blocking check names it)."""
    day = session_dates(bars["session"])
    return bars.assign(adj_close=pd.to_numeric(bars["adj_close"], errors="coerce"),
                       session=day.dt.strftime("%Y-%m-%d").where(day.notna(), None))


def listings(cfg: ProjectConfig, provider: PriceProvider) -> tuple[dict[str, str], dict[str, str]]:
    """(listed_from, listed_until) per symbol: the provider's, overridden by ``universe.listings``."""
    symbols = list(cfg.universe.symbols)
    listed_from, listed_until = dict(provider.listed_from(symbols)), dict(provider.listed_until(symbols))
    for sym, entry in cfg.universe.listings.items():
        if entry.listed:
            listed_from[sym] = entry.listed.isoformat()
        if entry.delisted:
            listed_until[sym] = entry.delisted.isoformat()
    return listed_from, listed_until


def _previous_session_rows(warehouse: Warehouse, all_sessions: list[str], first: str) -> pd.DataFrame | None:
    """Stored rows of the session before ``first`` (for the first move of the range), if stored."""
    i = all_sessions.index(first)
    prev = warehouse.read_partitions("prices", all_sessions[i - 1:i], missing_ok=True)
    return prev if len(prev) else None
