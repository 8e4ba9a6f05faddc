-- Insider (SEC Form 4) open-market flow per (symbol, session) from the `insider_flow` asset. A row for
-- session D counts only filings accepted before D's close, with 4/A amendments applied as of D.
-- Incremental by file, as stg_prices; empty until the asset is materialised.
{{ config(materialized='incremental', incremental_strategy='append', on_schema_change='append_new_columns',
          pre_hook="{{ drop_staged_files('insider_flow') }}",
          post_hook="{{ record_state(log_top()) }}") }}
{{ staged_source('warehouse', 'insider_flow', [
    ['symbol', 'varchar'], ['session', 'date'], ['net_buy_value_30d', 'double'], ['net_buy_value_90d', 'double'],
    ['buy_count_30d', 'bigint'], ['buy_count_90d', 'bigint'], ['sell_count_30d', 'bigint'],
    ['sell_count_90d', 'bigint'], ['distinct_buyers_90d', 'bigint'], ['officer_buy_value_90d', 'double'],
    ['director_buy_value_90d', 'double']]) }}
