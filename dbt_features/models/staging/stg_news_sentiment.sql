-- News sentiment per (symbol, session) from the `news_sentiment` asset. A row for session D aggregates the
-- items usable at D's close (published before it), so joining on session is point-in-time by construction.
{{ optional_source('warehouse', 'news_sentiment', [
    ['symbol', 'varchar'], ['session', 'date'], ['news_count', 'bigint'], ['sentiment_mean', 'double'],
    ['positive_share', 'double'], ['negative_share', 'double'], ['sentiment_mean_5d', 'double']]) }}
