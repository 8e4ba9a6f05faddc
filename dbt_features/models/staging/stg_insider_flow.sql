-- Insider (SEC Form 4) open-market flow per (symbol, session) from the `insider_flow` asset. A row for
-- session D counts only filings accepted before D's close, with 4/A amendments applied as of D.
{{ optional_source('warehouse', 'insider_flow', [
    ['symbol', 'varchar'], ['session', 'date'], ['net_buy_value_30d', 'double'], ['net_buy_value_90d', 'double'],
    ['buy_count_30d', 'bigint'], ['buy_count_90d', 'bigint'], ['sell_count_30d', 'bigint'],
    ['sell_count_90d', 'bigint'], ['distinct_buyers_90d', 'bigint'], ['officer_buy_value_90d', 'double'],
    ['director_buy_value_90d', 'double']]) }}
