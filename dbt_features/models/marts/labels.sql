-- Forward-return labels. The configured variant (vars label_price, label_kind) fills the columns research
-- uses: fwd_return, label_class and label_session (the session at whose close the label is known; training
-- drops rows whose label_session is after its cut-off: purge). Every variant is kept beside it.
--   close: adj_close_{t+h} / adj_close_t - 1                      known at t+h
--   open:  adj_open_{t+1+h} / adj_open_{t+1} - 1 (next-open entry) known at t+1+h
--   fixed thresholds: up if r > label_up, down if r < label_down, else flat
--   vol-scaled: up if r > k * sigma_t * sqrt(h), down if r < -k * sigma_t * sqrt(h); sigma_t = sample std of
--   the 20 daily returns up to t (past data only), k = label_vol_k
-- The last sessions of each symbol have no label yet (NULL).

{% set h = var('label_horizon') | int %}
{% set k = var('label_vol_k') %}

with px as (
    select
        symbol, session, adj_open, adj_close,
        adj_close / lag(adj_close) over w - 1 as ret_1d
    from {{ ref('stg_prices') }}
    window w as (partition by symbol order by session)
),

fwd as (
    select
        symbol,
        session,
        lead(adj_close, {{ h }}) over w / adj_close - 1                        as fwd_return_cc,
        lead(session, {{ h }}) over w                                           as label_session_cc,
        lead(adj_open, {{ h + 1 }}) over w / lead(adj_open, 1) over w - 1      as fwd_return_oo,
        lead(session, {{ h + 1 }}) over w                                       as label_session_oo,
        case when count(ret_1d) over (partition by symbol order by session rows between 19 preceding and current row) = 20
             then stddev_samp(ret_1d) over (partition by symbol order by session rows between 19 preceding and current row)
        end                                                                     as sigma_20d
    from px
    window w as (partition by symbol order by session)
),

chosen as (
    select
        *,
        {% if var('label_price') == 'open' %} fwd_return_oo {% else %} fwd_return_cc {% endif %}       as fwd_return,
        {% if var('label_price') == 'open' %} label_session_oo {% else %} label_session_cc {% endif %} as label_session,
        {{ k }} * sigma_20d * sqrt({{ h }})                                                           as vol_threshold
    from fwd
)

select
    symbol,
    session,
    {{ h }} as horizon,
    label_session,
    fwd_return,
    {% if var('label_kind') == 'vol_scaled_class' %}
    case when fwd_return is null or vol_threshold is null then null
         when fwd_return >  vol_threshold then 2
         when fwd_return < -vol_threshold then 0
         else 1 end                                                    as label_class,
    {% else %}
    case when fwd_return is null then null
         when fwd_return > {{ var('label_up') }}   then 2
         when fwd_return < {{ var('label_down') }} then 0
         else 1 end                                                    as label_class,
    {% endif %}
    fwd_return_cc, label_session_cc, fwd_return_oo, label_session_oo, sigma_20d, vol_threshold
from chosen
