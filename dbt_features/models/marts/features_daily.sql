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

{#
  Incremental (default): a run recomputes only from the first session whose input row is new or changed
  (input_hash covers the bar, the benchmark return, the joined alternative data and the feature code
  version var), over a per-symbol lookback of `features_lookback` bars before it, and replaces those
  sessions (delete+insert). The lookback covers every window (<= 200 bars) and lets the exponential
  smoothers forget their start (slowest weight 25/27: (25/27)^600 < 1e-19), so an incremental run equals a
  full refresh to machine precision (tested). Corrections to old bars, late alternative data and code
  changes therefore recompute exactly what they affect; rows whose bar is gone (a symbol that left the
  universe) are deleted and the sessions they shared are recomputed (cross-sectional ranks).
  Full refresh: `dbt build --full-refresh` (the Dagster asset's `full_refresh` run config).
#}
{{ config(
    materialized='incremental',
    incremental_strategy='delete+insert',
    unique_key=['symbol', 'session'],
    on_schema_change='fail',
    post_hook=["{% if is_incremental() %}delete from {{ this }} t where not exists (select 1 from {{ ref('stg_prices') }} p where p.symbol = t.symbol and p.session = t.session){% endif %}"]
) }}
{% set lookback = var('features_lookback') | int %}
{% set lags = [1, 5, 10, 20, 60] %}   {# lagged closes px_k #}

with src as (
    select
        p.symbol, p.session,
        p.adj_open as o, p.adj_high as h, p.adj_low as l, p.adj_close as px,
        p.close as raw_close, cast(p.volume as double) as volume,
        b.ret_1d as bench_ret,
        n.news_count, n.sentiment_mean, n.positive_share, n.negative_share, n.sentiment_mean_5d,
        f.net_buy_value_30d, f.net_buy_value_90d, f.buy_count_90d, f.sell_count_90d, f.distinct_buyers_90d,
        row_number() over w                                                       as rn,
        {%- if not is_incremental() %}
        -- window stage 1, full build: the lagged closes in the same window as rn (one sort fewer)
        {%- for k in lags %}
        lag(p.adj_close, {{ k }}) over w                                          as px_{{ k }},
        {%- endfor %}
        {%- endif %}
        hash('{{ var("features_code_version") }}', p.symbol, p.session, p.adj_open, p.adj_high, p.adj_low,
             p.adj_close, p.close, p.volume, b.ret_1d, n.news_count, n.sentiment_mean, n.positive_share,
             n.negative_share, n.sentiment_mean_5d, f.net_buy_value_30d, f.net_buy_value_90d,
             f.buy_count_90d, f.sell_count_90d, f.distinct_buyers_90d)               as input_hash
    from {{ ref('stg_prices') }} p
    left join {{ ref('benchmark_daily') }} b on b.session = p.session
    left join {{ ref('stg_news_sentiment') }} n on n.symbol = p.symbol and n.session = p.session
    left join {{ ref('stg_insider_flow') }} f on f.symbol = p.symbol and f.session = p.session
    window w as (partition by p.symbol order by p.session)
),

{% if is_incremental() %}
-- first session with a new, changed or removed input row (NULL: nothing to do, no rows are produced);
-- removed rows (a symbol that left the universe, a deleted bar) are deleted by the post-hook
first_changed as (
    select min(d) as d from (
        select s.session as d
        from src s left join {{ this }} t on t.symbol = s.symbol and t.session = s.session
        where t.input_hash is null or t.input_hash <> s.input_hash
        union all
        select t.session
        from {{ this }} t anti join src s on s.symbol = t.symbol and s.session = t.session
    )
),

changed_from as (
    select symbol, min(rn) - {{ lookback }} as rn_before
    from src where session >= (select d from first_changed) group by symbol
),

-- OBV is a running sum from the symbol's first bar: carry the stored value of the window's first bar
-- (unchanged by construction: it precedes the first change by the lookback)
anchor as (
    select c.symbol, c.rn_before, coalesce(t.obv, 0) as obv0
    from changed_from c
    left join src s on s.symbol = c.symbol and s.rn = greatest(c.rn_before + 1, 1)
    left join {{ this }} t on t.symbol = s.symbol and t.session = s.session
),

-- every bar from `lookback` bars before the symbol's first changed one
px as (
    select s.*, a.obv0
    from src s join anchor a on a.symbol = s.symbol and s.rn > a.rn_before
),

-- window stage 1, incremental: lagged closes within that window (the OBV anchor relies on px_1 being NULL
-- on its first bar)
lags as (
    select
        *{% for k in lags %},
        lag(px, {{ k }}) over w                                                   as px_{{ k }}
        {%- endfor %}
    from px
    window w as (partition by symbol order by session)
),
{% else %}
lags as (select *, 0.0 as obv0 from src),
{% endif %}

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
        quantile_cont(px, [0.2, 0.8]) over (w rows between 19 preceding and current row) as q20_80_20,
        obv0 + sum(obv_step) over (w rows between unbounded preceding and current row) as obv,
        sum(volume) over (w rows between 19 preceding and current row)              as vol_sum_20,
        avg(volume) over (w rows between 19 preceding and current row)              as vol_avg_20,
        stddev_samp(volume) over (w rows between 19 preceding and current row)      as vol_sd_20,
        avg(dollar_vol) over (w rows between 19 preceding and current row)          as dvol_20,
        regr_slope(ret_1d, bench_ret) over (w rows between 59 preceding and current row) as beta_60_raw,
        corr(ret_1d, bench_ret) over (w rows between 59 preceding and current row)  as corr_60_raw,
        count(ret_1d + bench_ret) over (w rows between 59 preceding and current row) as pairs_60,
        {{ ewm_sums('e12') }},
        {{ ewm_sums('e26') }},
        {{ ewm_partial('atr') }},
        {{ ewm_partial('gain') }},
        {{ ewm_partial('loss') }}
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
        {{ ewm_sums('sig') }},
        {{ ewm_prev_block('atr') }},
        {{ ewm_prev_block('gain') }},
        {{ ewm_prev_block('loss') }}
    from macd_z
    window w as (partition by symbol order by session)
),

-- Wilder smoothers (ATR, RSI's average gain / loss), whose previous-block sums stage 3 read off stage 2
smooth3 as (
    select
        *,
        {{ ewm_value('atr', w14, 15) }}                                             as atr_14,
        {{ ewm_value('gain', w14, 15) }}                                            as avg_gain,
        {{ ewm_value('loss', w14, 15) }}                                            as avg_loss
    from win3
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
        case when rn >= 20 then q20_80_20[2] / px end                   as qtlu_20,
        case when rn >= 20 then q20_80_20[1] / px end                   as qtld_20,
        case when rn >= 61 and pairs_60 = 60 then beta_60_raw end       as beta_60,
        case when rn >= 61 and pairs_60 = 60 then corr_60_raw end       as corr_60,
        -- alternative data, already point-in-time per session (NULL where not materialised)
        news_count                                                      as news_count_1d,
        sentiment_mean                                                  as news_sentiment_1d,
        sentiment_mean_5d                                               as news_sentiment_5d,
        positive_share                                                  as news_pos_share_1d,
        negative_share                                                  as news_neg_share_1d,
        case when rn >= 20 then net_buy_value_30d / nullif(dvol_20, 0) end as insider_net_buy_30d_adv,
        case when rn >= 20 then net_buy_value_90d / nullif(dvol_20, 0) end as insider_net_buy_90d_adv,
        buy_count_90d                                                   as insider_buys_90d,
        sell_count_90d                                                  as insider_sells_90d,
        distinct_buyers_90d                                             as insider_buyers_90d,
        input_hash
    from smooth3
),

-- Cross-sectional percent rank per session among symbols with a non-NULL input: (rank - 1) / (n - 1).
-- Computed on a narrow projection and joined back: sorting 4 columns by session instead of ~65 (2 s of 18
-- on 2.5 M rows, BENCHMARKS.md).
ranks as (
    select
        symbol, session,
        case when ret_20d is not null then
            percent_rank() over (partition by session, ret_20d is null order by ret_20d) end as rank_ret_20d,
        case when vol_20d is not null then
            percent_rank() over (partition by session, vol_20d is null order by vol_20d) end as rank_vol_20d
    from out
),

ranked as (
    select o.*, r.rank_ret_20d, r.rank_vol_20d
    from out o join ranks r on r.symbol = o.symbol and r.session = o.session
)

select * exclude (input_hash), input_hash from ranked
{% if is_incremental() %}where session >= (select d from first_changed){% endif %}
