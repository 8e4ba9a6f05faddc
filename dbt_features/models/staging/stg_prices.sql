-- Typed daily bars with the split/dividend adjustment factor and adjusted OHLC.
select
    symbol,
    cast(session as date)                 as session,
    open, high, low, close, volume,
    adj_close,
    adj_close / close                     as adj_factor,
    open * adj_close / close              as adj_open,
    high * adj_close / close              as adj_high,
    low  * adj_close / close              as adj_low
from {{ source('warehouse', 'prices') }}
where close is not null and close > 0
