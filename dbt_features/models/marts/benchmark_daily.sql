-- Benchmark level chained from daily returns (first session = 100); point-in-time: level_t uses returns <= t.
-- A view over stg_benchmark (one row per session; the running sum over ~5,000 rows costs readers nothing).
{{ config(materialized='view') }}
select
    session,
    benchmark,
    ret_1d,
    100.0 * exp(sum(ln(1 + coalesce(ret_1d, 0))) over (order by session
        rows between unbounded preceding and current row))                    as level
from {{ ref('stg_benchmark') }}
