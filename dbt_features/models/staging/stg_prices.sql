-- Typed daily bars with the split/dividend adjustment factor and adjusted OHLC. Incremental by file: a run
-- reads only the partitions logged as new or changed since its last build (warehouse_files) and drops the rows
-- of changed or removed ones (macros/changes.sql); a full refresh reads every partition.
{{ config(materialized='incremental', incremental_strategy='append', on_schema_change='append_new_columns',
          pre_hook="{{ drop_staged_files('prices') }}",
          post_hook="{{ record_state(log_top()) }}") }}
with bars as (
    {{ staged_source('warehouse', 'prices', [
        ['symbol', 'varchar'], ['session', 'date'], ['open', 'double'], ['high', 'double'], ['low', 'double'],
        ['close', 'double'], ['volume', 'bigint'], ['adj_close', 'double']]) }}
)
select
    symbol,
    session,
    open, high, low, close, volume,
    adj_close,
    adj_close / close                     as adj_factor,
    open * adj_close / close              as adj_open,
    high * adj_close / close              as adj_high,
    low  * adj_close / close              as adj_low,
    source_file
from bars
where close is not null and close > 0
