"""Point-in-time daily features per (symbol, session): every value uses bars <= session only.

A dbt Python model (dbt-duckdb runs it in dbt's process on the warehouse connection). DuckDB joins the inputs
(adjusted bars from stg_prices, the benchmark return, the alternative data) and sorts them by (symbol, session);
the arithmetic of every price/volume feature is one compiled pass per symbol (``qt_assets/features/kernels.py``,
symbols in parallel); the two cross-sectional ranks are per-session percent ranks. Column semantics are
documented in schema.yml, which also holds this model's config (a Python model reads dbt vars through it) and
its data tests. Why Python and not SQL: at 500 symbols x 20 years the SQL window plan it replaced took 14.2-14.4 s
for this model and this one 8.0-8.1 s, of which ~3 s is DuckDB writing the 1.3 GB table (BENCHMARKS.md, "Features +
labels at scale").

Incremental (default): a run recomputes only from the first session a warehouse file logged since its last build
touches (new, changed or removed partitions of prices, benchmark, news_sentiment, insider_flow: the warehouse_files
model), over a per-symbol slice of `lookback` bars before it, and replaces every session from it on (rows whose bar
is gone leave; so does a session left without bars, by the post-hook in schema.yml). A change of the feature code
version (every model, macro and the kernels) recomputes everything. The slice covers every window (<= 200 bars) and
lets the exponential smoothers forget their start ((25/27)^600 < 1e-19), so an incremental run equals a full
refresh to machine precision (tested). Corrections to old bars, late alternative data and code changes therefore
recompute exactly what they affect. Full refresh: `dbt build --full-refresh` (the Dagster asset's `full_refresh`
run config).
"""

from datetime import date

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from qt_assets.features import kernels


def inputs_sql(prices: str = "p", extra: str = "", since: bool = False) -> str:
    """The joined inputs, one row per bar of `prices` (stg_prices or a slice of it). ``p``, ``b``, ``n``, ``f``
    are the model's refs (DuckDB reads the Python variables of those names); since: read the other inputs from
    session $lo on only (the Parquet scans skip the rest)."""
    cond = " where session >= $lo" if since else ""
    return f"""
select
    p.symbol, p.session,
    p.adj_open as o, p.adj_high as h, p.adj_low as l, p.adj_close as px,
    p.close as raw_close, cast(p.volume as double) as volume,
    b.ret_1d as bench_ret,
    n.news_count, n.sentiment_mean, n.positive_share, n.negative_share, n.sentiment_mean_5d,
    f.net_buy_value_30d, f.net_buy_value_90d, f.buy_count_90d, f.sell_count_90d, f.distinct_buyers_90d,
    hash($code_version, p.symbol, p.session, p.adj_open, p.adj_high, p.adj_low, p.adj_close, p.close, p.volume,
         b.ret_1d, n.news_count, n.sentiment_mean, n.positive_share, n.negative_share, n.sentiment_mean_5d,
         f.net_buy_value_30d, f.net_buy_value_90d, f.buy_count_90d, f.sell_count_90d,
         f.distinct_buyers_90d) as input_hash{extra}
from {prices} p
left join (select * from b{cond}) b on b.session = p.session
left join (select * from n{cond}) n on n.symbol = p.symbol and n.session = p.session
left join (select * from f{cond}) f on f.symbol = p.symbol and f.session = p.session
"""


# alternative-data columns passed through unchanged (no shift: the asset tables are point-in-time per session)
PASS_THROUGH = (("news_count_1d", "news_count"), ("news_sentiment_1d", "sentiment_mean"),
                ("news_sentiment_5d", "sentiment_mean_5d"), ("news_pos_share_1d", "positive_share"),
                ("news_neg_share_1d", "negative_share"))
COUNTS = (("insider_buys_90d", "buy_count_90d"), ("insider_sells_90d", "sell_count_90d"),
          ("insider_buyers_90d", "distinct_buyers_90d"))
RANKS = (("rank_ret_20d", "ret_20d"), ("rank_vol_20d", "vol_20d"))


SOURCES = ("prices", "benchmark", "news_sentiment", "insider_flow")  # the warehouse tables behind the inputs
EVERYTHING = date(1, 1, 1)


def first_changed(session, log, schema: str, model: str, code_version: str):
    """The first session to recompute (None: nothing changed; EVERYTHING: no state recorded, another code version,
    or a logged change that does not say what it touches): the earliest session touched by a file logged after the
    batch this model recorded. The same as macros/changes.sql first_changed_session, which the post-hook uses."""
    state = session.sql(f"select inputs_batch, code_version from {schema}.qtos_model_state where model = $m",
                        params={"m": model}).fetchall()
    if not state or state[0][1] != code_version:
        return EVERYTHING
    unknown, d = session.sql(f"""select bool_or(affects_from is null), min(affects_from) from log where batch > $b
                                 and source in ({", ".join(f"'{s}'" for s in SOURCES)})""",
                             params={"b": state[0][0]}).fetchall()[0]
    return EVERYTHING if unknown else d


def slice_inputs(session, p, b, n, f, this, d, lookback: int, code_version: str):
    """Inputs of the symbols with bars at or after d, from `lookback` bars before their first such bar, sorted;
    with each symbol's first bar number in the slice (rn0) and the OBV stored for that bar (obv0). The slice of
    bars is cut first, then joined with the other inputs from its first session on."""
    bars = session.sql(f"""
        -- the last `lookback` bars before d, looked for among the last 2 x lookback sessions first ...
        with lo as (select min(session) as s from (select distinct session from p where session < $d
                                                   order by session desc limit 2 * $lb)),
        counts as (select symbol, count(*) filter (where session < $d) as n_before, max(session) >= $d as live
                   from p group by symbol),
        recent as (select symbol, max(session, $lb) as top from p
                   where session < $d and session >= (select s from lo) group by symbol),
        -- ... and over the whole history for a symbol with gaps that has fewer there
        short as (select c.symbol from counts c left join recent r using (symbol)
                  where c.live and coalesce(len(r.top), 0) < least(c.n_before, $lb)),
        older as (select symbol, max(session, $lb) as top from p
                  where session < $d and symbol in (select symbol from short) group by symbol),
        cut as (
            select c.symbol, c.n_before, list_min(coalesce(o.top, r.top)) as first_session,
                   coalesce(len(coalesce(o.top, r.top)), 0) as n_kept
            from counts c left join recent r using (symbol) left join older o using (symbol)
            where c.live
        ),
        cut0 as (
            select c.*, coalesce(t.obv, 0.0) as obv0 from cut c
            left join {this} t on t.symbol = c.symbol and t.session = c.first_session and c.n_before > c.n_kept
        )
        select p.*, c.n_before - c.n_kept + 1 as rn0, c.obv0
        from p join cut0 c using (symbol)
        where p.session >= coalesce(c.first_session, $d)
          and p.session >= (select coalesce(min(first_session), $d) from cut)
    """, params={"d": d, "lb": lookback}).to_arrow_table()
    if bars.num_rows == 0:
        return None
    lo = pc.min(bars.column("session")).as_py()
    return session.sql(inputs_sql("bars", ", p.rn0, p.obv0", since=True) + " order by p.symbol, p.session",
                       params={"code_version": code_version, "lo": lo}).to_arrow_table()


def features(inp: pa.Table, rn0=None, obv0=None) -> pa.Table:
    """features_daily's columns for input rows sorted by (symbol, session)."""
    sym = inp.column("symbol").combine_chunks()
    ends = pc.run_end_encode(sym).run_ends.to_numpy() if len(sym) else np.zeros(0, np.int64)
    starts = np.concatenate([[0], ends]).astype(np.int64)
    firsts = starts[:-1]
    rn0 = np.ones(len(firsts), np.int64) if rn0 is None else rn0[firsts]
    obv0 = np.zeros(len(firsts)) if obv0 is None else obv0[firsts]
    inputs = {k: inp.column(k).to_numpy() for k in kernels.INPUTS}
    out = kernels.compute(starts, rn0, obv0, **inputs)
    del inputs
    k = {c: i for i, c in enumerate(kernels.KERNEL_COLUMNS)}
    day = inp.column("session").cast(pa.int32()).to_numpy()
    order = kernels.day_order(day)
    ranks = np.vstack([kernels.percent_rank(order, day, out[k[src]]) for _, src in RANKS])
    arrs = dict(zip(kernels.KERNEL_COLUMNS, kernels.to_arrow(out)))  # NaN -> NULL, values not copied
    arrs.update(zip([c for c, _ in RANKS], kernels.to_arrow(ranks)))

    cols = [("symbol", inp.column("symbol")), ("session", inp.column("session"))]
    cols += [(c, arrs[c]) for c in kernels.PRICE_FEATURES]
    cols += [(c, inp.column(src)) for c, src in PASS_THROUGH]
    cols += [(c, arrs[c]) for c in kernels.SCALED_ALT]
    cols += [(c, inp.column(src)) for c, src in COUNTS]
    cols += [(c, arrs[c]) for c, _ in RANKS]
    cols.append(("input_hash", inp.column("input_hash")))
    return pa.Table.from_arrays([v for _, v in cols], names=[c for c, _ in cols])


def model(dbt, session):
    dbt.config(materialized="incremental", incremental_strategy="delete+insert", unique_key="session",
               on_schema_change="fail")
    lookback = int(dbt.config.get("features_lookback"))
    code_version = str(dbt.config.get("features_code_version"))
    p, b = dbt.ref("stg_prices"), dbt.ref("benchmark_daily")
    n, f = dbt.ref("stg_news_sentiment"), dbt.ref("stg_insider_flow")
    try:
        log = dbt.ref("warehouse_files")
    except duckdb.CatalogException:  # no file log in this warehouse yet (see macros/changes.sql): everything
        log = None
    d = (first_changed(session, log, dbt.this.schema, dbt.this.identifier, code_version) if log is not None
         else EVERYTHING) if dbt.is_incremental else None
    if not dbt.is_incremental or d == EVERYTHING:
        src = session.sql(inputs_sql(), params={"code_version": code_version})
        return features(session.sql("select * from src order by symbol, session").to_arrow_table())
    this = str(dbt.this)
    inp = slice_inputs(session, p, b, n, f, this, d, lookback, code_version) if d is not None else None
    if inp is None or inp.num_rows == 0:
        return features(session.sql(inputs_sql() + " limit 0", params={"code_version": code_version}).to_arrow_table())
    out = features(inp, inp.column("rn0").to_numpy(), inp.column("obv0").to_numpy())
    return out.filter(pc.greater_equal(out.column("session"), pa.scalar(d, out.column("session").type)))
