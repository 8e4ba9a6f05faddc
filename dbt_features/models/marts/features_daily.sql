-- Point-in-time daily features per (symbol, session): every value uses bars <= session only
-- (windows end at CURRENT ROW; no LEAD / FOLLOWING anywhere). Prices are split/dividend adjusted.
-- A feature is NULL until its warm-up window is full. Window functions only (no correlated subqueries),
-- grouped into few window stages over the same (symbol, session) order so the plan sorts rarely.
-- Column semantics are documented in schema.yml; exponential smoothers (EMA, Wilder) use the exact
-- closed form of macros/pit_ewm.sql.

{% set w12 = '(11.0 / 13.0)' %}   {# EMA(12): alpha = 2/13 #}
{% set w26 = '(25.0 / 27.0)' %}   {# EMA(26): alpha = 2/27 #}
{% set w9  = '(8.0 / 10.0)' %}    {# EMA(9):  alpha = 2/10 #}
{% set w14 = '(13.0 / 14.0)' %}   {# Wilder(14): alpha = 1/14 #}

with px as (
    select
        p.symbol, p.session,
        p.adj_open as o, p.adj_high as h, p.adj_low as l, p.adj_close as px,
        p.close as raw_close, cast(p.volume as double) as volume,
        b.ret_1d as bench_ret
    from {{ ref('stg_prices') }} p
    left join {{ ref('benchmark_daily') }} b on b.session = p.session
),

-- window stage 1: bar index and lagged closes
lags as (
    select
        *,
        row_number() over w                                                       as rn,
        lag(px, 1)  over w                                                        as px_1,
        lag(px, 5)  over w                                                        as px_5,
        lag(px, 10) over w                                                        as px_10,
        lag(px, 20) over w                                                        as px_20,
        lag(px, 60) over w                                                        as px_60
    from px
    window w as (partition by symbol order by session)
),

-- bar-level inputs (no windows)
bar as (
    select
        *,
        px / px_1 - 1                                                             as ret_1d,
        greatest(px - px_1, 0)                                                    as gain,
        greatest(px_1 - px, 0)                                                    as loss,
        greatest(h - l, abs(h - px_1), abs(l - px_1))                             as tr,
        pow(ln(h / l), 2)                                                         as hl2,
        0.5 * pow(ln(h / l), 2) - (2 * ln(2) - 1) * pow(ln(px / o), 2)            as gk_term,
        coalesce(sign(px - px_1), 0) * volume                                     as obv_step,
        raw_close * volume                                                        as dollar_vol
    from lags
),

bar_z as (
    select
        *,
        {{ ewm_z('e12', 'px', w12, 12, 12) }},
        {{ ewm_z('e26', 'px', w26, 26, 26) }},
        {{ ewm_z('atr', 'tr', w14, 15, 14) }},
        {{ ewm_z('gain', 'gain', w14, 15, 14) }},
        {{ ewm_z('loss', 'loss', w14, 15, 14) }}
    from bar
),

-- window stage 2: every rolling aggregate (one sort)
win as (
    select
        *,
        avg(px) over (w rows between 4 preceding and current row)                   as sma_5,
        avg(px) over (w rows between 19 preceding and current row)                  as sma_20,
        avg(px) over (w rows between 49 preceding and current row)                  as sma_50,
        avg(px) over (w rows between 59 preceding and current row)                  as sma_60,
        avg(px) over (w rows between 199 preceding and current row)                 as sma_200,
        stddev_pop(px) over (w rows between 19 preceding and current row)           as sdp_20,
        stddev_samp(ret_1d) over (w rows between 19 preceding and current row)      as sd_20,
        stddev_samp(ret_1d) over (w rows between 59 preceding and current row)      as sd_60,
        avg(hl2) over (w rows between 19 preceding and current row)                 as hl2_20,
        avg(gk_term) over (w rows between 19 preceding and current row)             as gk_20,
        max(h) over (w rows between 13 preceding and current row)                   as hh_14,
        min(l) over (w rows between 13 preceding and current row)                   as ll_14,
        max(px) over (w rows between 19 preceding and current row)                  as max_20,
        min(px) over (w rows between 19 preceding and current row)                  as min_20,
        max(px) over (w rows between 59 preceding and current row)                  as max_60,
        min(px) over (w rows between 59 preceding and current row)                  as min_60,
        quantile_cont(px, 0.8) over (w rows between 19 preceding and current row)   as q80_20,
        quantile_cont(px, 0.2) over (w rows between 19 preceding and current row)   as q20_20,
        sum(obv_step) over (w rows between unbounded preceding and current row)     as obv,
        sum(volume) over (w rows between 19 preceding and current row)              as vol_sum_20,
        avg(volume) over (w rows between 19 preceding and current row)              as vol_avg_20,
        stddev_samp(volume) over (w rows between 19 preceding and current row)      as vol_sd_20,
        avg(dollar_vol) over (w rows between 19 preceding and current row)          as dvol_20,
        regr_slope(ret_1d, bench_ret) over (w rows between 59 preceding and current row) as beta_60_raw,
        corr(ret_1d, bench_ret) over (w rows between 59 preceding and current row)  as corr_60_raw,
        count(ret_1d + bench_ret) over (w rows between 59 preceding and current row) as pairs_60,
        {{ ewm_sums('e12') }},
        {{ ewm_sums('e26') }},
        {{ ewm_sums('atr') }},
        {{ ewm_sums('gain') }},
        {{ ewm_sums('loss') }}
    from bar_z
    window w as (partition by symbol order by session)
),

-- smoothed values (no windows). Wilder RSI(14): seed = mean gain/loss of the first 14 changes
-- (rows 2..15), then A_t = (13 * A_{t-1} + x_t) / 14 (closed form of macros/pit_ewm.sql).
smooth as (
    select
        *,
        {{ ewm_value('e12', w12, 12) }}                                             as ema_12,
        {{ ewm_value('e26', w26, 26) }}                                             as ema_26,
        {{ ewm_value('atr', w14, 15) }}                                             as atr_14,
        {{ ewm_value('gain', w14, 15) }}                                            as avg_gain,
        {{ ewm_value('loss', w14, 15) }}                                            as avg_loss,
        -- clamped to [0, 100]: adj_high/adj_low are rescaled from raw OHLC, so a close at the high/low can
        -- sit 1e-14 outside them in floating point
        least(100.0, greatest(0.0, 100.0 * (px - ll_14) / nullif(hh_14 - ll_14, 0))) as stoch_k_raw
    from win
),

-- MACD(12, 26, 9): line = EMA12 - EMA26 (from row 26); signal = EMA9 of the line seeded with the
-- mean of its first 9 values (rows 26..34), so the signal starts at row 34.
macd_z as (
    select
        *,
        case when rn >= 26 then ema_12 - ema_26 end                                 as macd_raw,
        {{ ewm_z('sig', 'ema_12 - ema_26', w9, 34, 9) }}
    from smooth
),

-- window stage 3: windows over stage-2 results
win3 as (
    select
        *,
        avg(stoch_k_raw) over (w rows between 2 preceding and current row)          as stoch_d_raw,
        lag(obv, 20) over w                                                         as obv_20,
        {{ ewm_sums('sig') }}
    from macd_z
    window w as (partition by symbol order by session)
),

out as (
    select
        symbol,
        session,
        case when rn >= 2  then ret_1d end                              as ret_1d,
        case when rn >= 6  then px / px_5 - 1 end                       as ret_5d,
        case when rn >= 11 then px / px_10 - 1 end                      as ret_10d,
        case when rn >= 21 then px / px_20 - 1 end                      as ret_20d,
        case when rn >= 61 then px / px_60 - 1 end                      as ret_60d,
        case when rn >= 2  then ln(px / px_1) end                       as logret_1d,
        case when rn >= 6  then ln(px / px_5) end                       as logret_5d,
        case when rn >= 11 then ln(px / px_10) end                      as logret_10d,
        case when rn >= 21 then ln(px / px_20) end                      as logret_20d,
        case when rn >= 61 then ln(px / px_60) end                      as logret_60d,
        case when rn >= 21 then sd_20 * sqrt(252.0) end                 as vol_20d,
        case when rn >= 61 then sd_60 * sqrt(252.0) end                 as vol_60d,
        case when rn >= 20 then sqrt(252.0 * hl2_20 / (4.0 * ln(2))) end as parkinson_vol_20d,
        case when rn >= 20 then sqrt(252.0 * greatest(gk_20, 0)) end   as gk_vol_20d,
        case when rn >= 20  then sma_5 / sma_20 end                     as sma_ratio_5_20,
        case when rn >= 50  then sma_20 / sma_50 end                    as sma_ratio_20_50,
        case when rn >= 200 then sma_50 / sma_200 end                   as sma_ratio_50_200,
        case when rn >= 5   then px / sma_5 end                         as close_sma_5,
        case when rn >= 20  then px / sma_20 end                        as close_sma_20,
        case when rn >= 60  then px / sma_60 end                        as close_sma_60,
        case when rn >= 200 then px / sma_200 end                       as close_sma_200,
        case when rn >= 12  then px / ema_12 end                        as close_ema_12,
        case when rn >= 26  then px / ema_26 end                        as close_ema_26,
        case when rn >= 15 then
            case when avg_loss = 0 then 100.0 else 100.0 - 100.0 / (1.0 + avg_gain / avg_loss) end
        end                                                              as rsi_14,
        case when rn >= 26 then macd_raw / px end                       as macd,
        case when rn >= 34 then {{ ewm_value('sig', w9, 34) }} / px end as macd_signal,
        case when rn >= 34 then (macd_raw - {{ ewm_value('sig', w9, 34) }}) / px end as macd_hist,
        case when rn >= 20 then (px - (sma_20 - 2 * sdp_20)) / nullif(4 * sdp_20, 0) end as bb_pctb_20,
        case when rn >= 20 then 4 * sdp_20 / sma_20 end                 as bb_width_20,
        case when rn >= 15 then atr_14 end                              as atr_14,
        case when rn >= 15 then atr_14 / px end                         as atr_pct_14,
        case when rn >= 14 then stoch_k_raw end                         as stoch_k_14,
        case when rn >= 16 then stoch_d_raw end                         as stoch_d_3,
        obv                                                             as obv,
        case when rn >= 21 then (obv - obv_20) / nullif(vol_sum_20, 0) end as obv_chg_20,
        case when rn >= 20 then (volume - vol_avg_20) / nullif(vol_sd_20, 0) end as volume_z_20,
        case when rn >= 20 then dvol_20 end                             as dollar_volume_20,
        (px - o) / o                                                    as kmid,
        (h - l) / o                                                     as klen,
        (h - greatest(o, px)) / o                                       as kup,
        (least(o, px) - l) / o                                          as klow,
        (2 * px - h - l) / o                                            as ksft,
        case when rn >= 20 then px / max_20 end                         as close_to_max_20,
        case when rn >= 20 then px / min_20 end                         as close_to_min_20,
        case when rn >= 60 then px / max_60 end                         as close_to_max_60,
        case when rn >= 60 then px / min_60 end                         as close_to_min_60,
        case when rn >= 20 then (px - min_20) / nullif(max_20 - min_20, 0) end as range_pos_20,
        case when rn >= 20 then q80_20 / px end                         as qtlu_20,
        case when rn >= 20 then q20_20 / px end                         as qtld_20,
        case when rn >= 61 and pairs_60 = 60 then beta_60_raw end       as beta_60,
        case when rn >= 61 and pairs_60 = 60 then corr_60_raw end       as corr_60
    from win3
)

select
    *,
    -- Cross-sectional percent rank per session among symbols with a non-NULL input: (rank - 1) / (n - 1).
    case when ret_20d is not null then
        percent_rank() over (partition by session, ret_20d is null order by ret_20d) end as rank_ret_20d,
    case when vol_20d is not null then
        percent_rank() over (partition by session, vol_20d is null order by vol_20d) end as rank_vol_20d
from out
