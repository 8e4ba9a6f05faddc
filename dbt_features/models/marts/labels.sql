-- Forward-return labels. A label for session D uses the close of D + horizon sessions, so it is only
-- known at label_session (= D + horizon); training must drop rows whose label_session is after its
-- cut-off (purge). The last `horizon` sessions of each symbol have no label yet (NULL).

{% set h = var('label_horizon') | int %}

with fwd as (
    select
        symbol,
        session,
        lead(adj_close, {{ h }}) over (partition by symbol order by session) / adj_close - 1 as fwd_return,
        lead(session, {{ h }})   over (partition by symbol order by session)                as label_session
    from {{ ref('stg_prices') }}
)

select
    symbol,
    session,
    {{ h }}       as horizon,
    label_session,
    fwd_return,
    case
        when fwd_return is null then null
        when fwd_return > {{ var('label_up') }}   then 2
        when fwd_return < {{ var('label_down') }} then 0
        else 1
    end           as label_class
from fwd
