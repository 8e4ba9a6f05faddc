-- Point-in-time daily features per (symbol, session): every value uses bars <= session only
-- (windows end at CURRENT ROW; no LEAD anywhere). Prices are split/dividend adjusted.
-- A feature is NULL until its warm-up window is full.

with base as (
    select
        symbol, session, adj_close as px,
        row_number() over (partition by symbol order by session)            as rn,
        adj_close - lag(adj_close) over (partition by symbol order by session) as chg
    from {{ ref('stg_prices') }}
),

rets as (
    select
        *,
        px / lag(px, 1)  over (partition by symbol order by session) - 1 as ret_1d,
        px / lag(px, 5)  over (partition by symbol order by session) - 1 as ret_5d,
        px / lag(px, 20) over (partition by symbol order by session) - 1 as ret_20d,
        avg(px) over (partition by symbol order by session rows between 4 preceding and current row)  as sma_5,
        avg(px) over (partition by symbol order by session rows between 19 preceding and current row) as sma_20,
        avg(px) over (partition by symbol order by session rows between 49 preceding and current row) as sma_50,
        greatest(chg, 0)  as gain,
        greatest(-chg, 0) as loss
    from base
),

-- Wilder RSI(14): seed = simple mean of the first 14 changes (rows 2..15), then
-- A_t = (13 * A_{t-1} + x_t) / 14. Closed form with b = 13/14, n = rn - 15:
-- A_t = b^n * (A_15 + (1/14) * sum_{k=1..n} b^-k * x_{15+k}); exact, no recursion.
wilder as (
    select
        *,
        avg(gain) over (partition by symbol order by session rows between 13 preceding and current row) as gain_sma14,
        avg(loss) over (partition by symbol order by session rows between 13 preceding and current row) as loss_sma14,
        sum(case when rn > 15 then gain * pow(13.0 / 14.0, -(rn - 15)) else 0 end)
            over (partition by symbol order by session rows between unbounded preceding and current row) as gain_s,
        sum(case when rn > 15 then loss * pow(13.0 / 14.0, -(rn - 15)) else 0 end)
            over (partition by symbol order by session rows between unbounded preceding and current row) as loss_s,
        stddev_samp(ret_1d) over (partition by symbol order by session rows between 19 preceding and current row) as sd_20
    from rets
),

smoothed as (
    select
        *,
        pow(13.0 / 14.0, rn - 15) * (max(case when rn = 15 then gain_sma14 end) over (partition by symbol) + gain_s / 14.0) as avg_gain,
        pow(13.0 / 14.0, rn - 15) * (max(case when rn = 15 then loss_sma14 end) over (partition by symbol) + loss_s / 14.0) as avg_loss
    from wilder
)

select
    symbol,
    session,
    case when rn >= 2  then ret_1d end                         as ret_1d,
    case when rn >= 6  then ret_5d end                         as ret_5d,
    case when rn >= 21 then ret_20d end                        as ret_20d,
    case when rn >= 20 then sma_5 / sma_20 end                 as sma_ratio_5_20,
    case when rn >= 50 then sma_20 / sma_50 end                as sma_ratio_20_50,
    case when rn >= 15 then
        case when avg_loss = 0 then 100.0 else 100.0 - 100.0 / (1.0 + avg_gain / avg_loss) end
    end                                                         as rsi_14,
    case when rn >= 21 then sd_20 * sqrt(252.0) end            as vol_20d
from smoothed
