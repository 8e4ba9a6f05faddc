-- Benchmark level chained from daily returns (first session = 100); point-in-time: level_t uses returns <= t.
-- A small table rebuilt on each run (one row per session); its post-hook records the file-log batch it reflects.
{{ config(post_hook="{{ record_state(log_top()) }}") }}
-- depends_on: {{ ref('warehouse_files') }}
select
    cast(session as date)                                                     as session,
    benchmark,
    ret_1d,
    100.0 * exp(sum(ln(1 + coalesce(ret_1d, 0))) over (order by session
        rows between unbounded preceding and current row))                    as level
from {{ source('warehouse', 'benchmark') }}
