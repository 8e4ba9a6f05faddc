-- Forward-return labels. The configured variant (vars label_price, label_kind) fills the columns research
-- uses: fwd_return, label_class and label_session (the session at whose close the label is known; training
-- drops rows whose label_session is after its cut-off: purge). Every return variant is kept beside it.
--   close: adj_close_{t+h} / adj_close_t - 1                      known at t+h
--   open:  adj_open_{t+1+h} / adj_open_{t+1} - 1 (next-open entry) known at t+1+h
--   fixed thresholds: up if r > label_up, down if r < label_down, else flat
--   vol-scaled: up if r > k * sigma_t * sqrt(h), down if r < -k * sigma_t * sqrt(h); sigma_t = sample std of
--   the 20 daily returns up to t (past data only), k = label_vol_k
--   triple barrier (Lopez de Prado): entry E = adj_close_t (close) or adj_open_{t+1} (open); barriers
--   E * (1 +- w), w = vol_threshold = k * sigma_t * sqrt(h). The path after the entry is the adjusted
--   high/low of bars t+1..t+h (open: bar t+1 from its open on, bars ..t+h, then the exit open of t+1+h as a
--   one-price bar). The first bar whose high >= upper is up (2), whose low <= lower is down (0); a bar that
--   touches both is up only if it opened at/above the upper barrier, else down (the stop is assumed first).
--   Neither -> flat (1) at the vertical barrier (close of t+h / open of t+1+h). fwd_return = the exit:
--   the barrier price, or the bar's open when it gapped through the barrier; when flat, fwd_return_cc /
--   fwd_return_oo. barrier_session = the exit's session (label_session when flat). label_session stays
--   t+h / t+1+h, the latest the label can be known, so the purge does not depend on the path.
-- The last sessions of each symbol have no label yet (NULL); neither have vol-scaled / triple-barrier rows
-- without sigma_20d (nor triple-barrier rows whose sigma_20d is 0).

{% set h = var('label_horizon') | int %}
{% set k = var('label_vol_k') %}
{% set open_entry = var('label_price') == 'open' %}
{% set triple_barrier = var('label_kind') == 'triple_barrier' %}
{# bars on a triple-barrier path: t+1..t+h, plus the exit open of t+1+h for next-open entry #}
{% set n_bars = h + 1 if open_entry else h %}

{#
  Incremental (default), as features_daily: a run recomputes only the labels that read a new, changed or removed
  bar. The first such session d is the earliest session touched by a price file logged since this model's last
  build (macros/changes.sql: first_changed_session); a changed label config or label code (the state's code
  version) recomputes everything. A label reads its own bar, the 20 returns up to it (sigma_20d) and at most h + 1
  bars after it: the pre-hook deletes the rows from d on (so rows whose bar is gone leave), and per symbol the rows
  from h + 1 bars before its first bar at/after d (or its last h + 1 bars, when it has none) are recomputed from a
  slice that starts 21 bars earlier and replace the stored ones. Equal to a full refresh (tested).
#}
{{ config(
    materialized='incremental',
    incremental_strategy='delete+insert',
    unique_key=['symbol', 'session'],
    on_schema_change='append_new_columns',
    pre_hook=["{% set d = first_changed_session(['prices'], label_code_version()) %}{% if d is not none %}delete from {{ this }} where session >= '{{ d }}'{% endif %}"],
    post_hook=["{{ record_state(inputs_top(['stg_prices']), label_code_version()) }}"]
) }}
-- depends_on: {{ ref('warehouse_files') }}
{% set d = first_changed_session(['prices'], label_code_version()) %}
{% set label_code = label_code_version() %}
{% set reach = h + 1 %}

with bars as (
    select symbol, session, adj_open, adj_high, adj_low, adj_close from {{ ref('stg_prices') }}
),

{% if is_incremental() %}
{% set back = reach + 21 %}
-- per symbol, the bars from `back` bars before its first bar at/after d on: looked for among the last 2 x back
-- sessions before d first, and over the whole history for a symbol with gaps that has fewer there
counts as (
    select symbol, count(*) filter (where session < '{{ d }}') as n_before
    from bars where {{ 'true' if d is not none else 'false' }} group by symbol
),

lo as (
    select coalesce(min(session), date '{{ d or "0001-01-01" }}') as s from (
        select distinct session from bars where session < '{{ d or "0001-01-01" }}'
        order by session desc limit {{ 2 * back }})
),

short as (
    select c.symbol from counts c
    left join (select symbol, count(*) as k from bars
               where session >= (select s from lo) and session < '{{ d or "0001-01-01" }}' group by symbol) r
        using (symbol)
    where coalesce(r.k, 0) < least(c.n_before, {{ back }})
),

-- bar numbers within the pool (only their order matters)
numbered as (
    select symbol, session, row_number() over (partition by symbol order by session) as rn
    from bars
    where symbol in (select symbol from counts)
      and (session >= (select s from lo) or symbol in (select symbol from short))
),

-- per symbol: the bar number of its first bar at/after d (one past its last bar when it has none)
firsts as (
    select symbol, coalesce(min(rn) filter (where session >= '{{ d }}'), max(rn) + 1) as rn_d
    from numbered group by symbol
),

scope as (
    select n.symbol, n.session, n.rn >= f.rn_d - {{ reach }} as out
    from numbered n join firsts f using (symbol)
    where n.rn >= f.rn_d - {{ back }}
),
{% endif %}

px as (
    select
        b.symbol, b.session, b.adj_open, b.adj_high, b.adj_low, b.adj_close,
        hash('{{ label_code }}', b.symbol, b.session, b.adj_open, b.adj_high, b.adj_low, b.adj_close) as input_hash,
        {% if is_incremental() %} s.out, {% endif %}
        b.adj_close / lag(b.adj_close) over w - 1 as ret_1d
    from bars b
    {% if is_incremental() %} join scope s on s.symbol = b.symbol and s.session = b.session {% endif %}
    window w as (partition by b.symbol order by b.session)
),

fwd as (
    select
        symbol,
        session,
        input_hash,
        {% if is_incremental() %} out, {% endif %}
        lead(adj_close, {{ h }}) over w / adj_close - 1                        as fwd_return_cc,
        lead(session, {{ h }}) over w                                           as label_session_cc,
        lead(adj_open, {{ h + 1 }}) over w / lead(adj_open, 1) over w - 1      as fwd_return_oo,
        lead(session, {{ h + 1 }}) over w                                       as label_session_oo,
        {% if triple_barrier %}
        adj_open,
        {% if open_entry %} lead(adj_open, 1) over w {% else %} adj_close {% endif %} as entry,
        {% for j in range(1, n_bars + 1) %}
        {% if open_entry and j == n_bars %}
        lead(adj_open, {{ j }}) over w as hi_{{ j }}, lead(adj_open, {{ j }}) over w as lo_{{ j }},
        {% else %}
        lead(adj_high, {{ j }}) over w as hi_{{ j }}, lead(adj_low, {{ j }}) over w as lo_{{ j }},
        {% endif %}
        {% endfor %}
        {% endif %}
        case when count(ret_1d) over (partition by symbol order by session rows between 19 preceding and current row) = 20
             then stddev_samp(ret_1d) over (partition by symbol order by session rows between 19 preceding and current row)
        end                                                                     as sigma_20d
    from px
    window w as (partition by symbol order by session)
),

chosen as (
    select
        *,
        {% if open_entry %} fwd_return_oo {% else %} fwd_return_cc {% endif %}       as fwd_return_v,
        {% if open_entry %} label_session_oo {% else %} label_session_cc {% endif %} as label_session,
        {{ k }} * sigma_20d * sqrt({{ h }})                                          as vol_threshold
    from fwd
){% if triple_barrier %},

barriers as (
    select
        symbol, session, input_hash, {% if is_incremental() %} out, {% endif %}
        adj_open, label_session, fwd_return_v, fwd_return_cc, label_session_cc,
        fwd_return_oo, label_session_oo, sigma_20d, vol_threshold, entry,
        coalesce(fwd_return_v is not null and vol_threshold > 0, false) as scanned,
        entry * (1 + vol_threshold)                    as upper,
        entry * (1 - vol_threshold)                    as lower,
        -- 1-based index on the path of the first bar touching each barrier (NULL: never)
        case {%- for j in range(1, n_bars + 1) %}
             when hi_{{ j }} >= entry * (1 + vol_threshold) then {{ j }}
        {%- endfor %}
        end as i_up,
        case {%- for j in range(1, n_bars + 1) %}
             when lo_{{ j }} <= entry * (1 - vol_threshold) then {{ j }}
        {%- endfor %}
        end as i_dn
    from chosen
),

touched as (
    select
        *,
        -- the first touching bar's open and session (path index j = the bar j rows after session)
        lead(adj_open, least(i_up, i_dn)) over w  as hit_open,
        lead(session, least(i_up, i_dn)) over w   as hit_session
    from barriers
    window w as (partition by symbol order by session)
),

chosen_tb as (
    select
        *,
        case when not scanned then null
             when i_up is null and i_dn is null then 1
             when i_dn is null or i_up < i_dn then 2
             when i_up is null or i_dn < i_up then 0
             when hit_open >= upper then 2          -- same bar: it opened through the upper barrier
             else 0 end                              -- same bar, order unknown: stop first
                                                    as side
    from touched
)
{% endif %}

select
    symbol,
    session,
    {{ h }} as horizon,
    label_session,
    {% if triple_barrier %}
    case side when 2 then greatest(hit_open, upper) / entry - 1
              when 0 then least(hit_open, lower) / entry - 1
              when 1 then fwd_return_v end                            as fwd_return,
    side                                                              as label_class,
    case side when 1 then label_session when 0 then hit_session
              when 2 then hit_session end                             as barrier_session,
    {% elif var('label_kind') == 'vol_scaled_class' %}
    fwd_return_v as fwd_return,
    case when fwd_return_v is null or vol_threshold is null then null
         when fwd_return_v >  vol_threshold then 2
         when fwd_return_v < -vol_threshold then 0
         else 1 end                                                    as label_class,
    cast(null as date)                                                 as barrier_session,
    {% else %}
    fwd_return_v as fwd_return,
    case when fwd_return_v is null then null
         when fwd_return_v > {{ var('label_up') }}   then 2
         when fwd_return_v < {{ var('label_down') }} then 0
         else 1 end                                                    as label_class,
    cast(null as date)                                                 as barrier_session,
    {% endif %}
    fwd_return_cc, label_session_cc, fwd_return_oo, label_session_oo, sigma_20d, vol_threshold,
    input_hash
from {% if triple_barrier %} chosen_tb {% else %} chosen {% endif %}
{% if is_incremental() %}where out{% endif %}
