-- The configured benchmark's daily return per session from the `benchmark` asset. Incremental by file, as
-- stg_prices (benchmark_daily chains the level over this small table on each run).
{{ config(materialized='incremental', incremental_strategy='append', on_schema_change='append_new_columns',
          pre_hook="{{ drop_staged_files('benchmark') }}",
          post_hook="{{ record_state(log_top()) }}") }}
{{ staged_source('warehouse', 'benchmark', [['session', 'date'], ['benchmark', 'varchar'], ['ret_1d', 'double']]) }}
