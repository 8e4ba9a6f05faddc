-- Typed daily bars with the split/dividend adjustment factor and adjusted OHLC.
{#
  Incremental (default): the sessions whose bars differ from the stored ones (per-session row count and XOR of
  the row hashes; input_hash covers the raw bar and the feature library's code version, so a code change restages
  everything) are replaced whole
  (delete+insert by session): new sessions, corrected bars, bars added to or removed from a session. A session
  that left the warehouse altogether is deleted by the post-hook. Full refresh: `dbt build --full-refresh`.
#}
{{ config(
    materialized='incremental',
    incremental_strategy='delete+insert',
    unique_key=['session'],
    on_schema_change='append_new_columns',
    post_hook=["{% if is_incremental() %}delete from {{ this }} where session not in (select cast(session as date) from {{ source('warehouse', 'prices') }}){% endif %}"]
) }}

with typed as (
    select
        symbol,
        cast(session as date)                 as session,
        open, high, low, close, volume,
        adj_close,
        adj_close / close                     as adj_factor,
        open * adj_close / close              as adj_open,
        high * adj_close / close              as adj_high,
        low  * adj_close / close              as adj_low,
        hash('{{ var("features_code_version") }}', symbol, session, open, high, low, close, volume, adj_close)
                                              as input_hash
    from {{ source('warehouse', 'prices') }}
    where close is not null and close > 0
){% if is_incremental() %},

changed as (
    {% if not has_column('input_hash') %}
    select distinct session from typed  -- stored by a version without input_hash: everything is new
    {% else %}
    select coalesce(s.session, t.session) as session
    from (select session, count(*) as n, bit_xor(input_hash) as x from typed group by session) s
    full join (select session, count(*) as n, bit_xor(input_hash) as x from {{ this }} group by session) t
        on s.session = t.session
    where s.session is null or t.session is null or s.n <> t.n or s.x <> t.x
    {% endif %}
)
{% endif %}

select * from typed
{% if is_incremental() %}where session in (select session from changed){% endif %}
