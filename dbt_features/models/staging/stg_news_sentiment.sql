-- News sentiment per (symbol, session) from the `news_sentiment` asset. A row for session D aggregates the
-- items usable at D's close (published before it), so joining on session is point-in-time by construction.
-- Incremental by file, as stg_prices; empty until the asset is materialised.
{{ config(materialized='incremental', incremental_strategy='append', on_schema_change='append_new_columns',
          pre_hook="{{ drop_staged_files('news_sentiment') }}",
          post_hook="{{ record_state(log_top()) }}") }}
{{ staged_source('warehouse', 'news_sentiment', [
    ['symbol', 'varchar'], ['session', 'date'], ['news_count', 'bigint'], ['sentiment_mean', 'double'],
    ['positive_share', 'double'], ['negative_share', 'double'], ['sentiment_mean_5d', 'double']]) }}
