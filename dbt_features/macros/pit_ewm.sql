{#
  Exact, recursion-free exponential smoothing for features_daily (point-in-time: every window ends at the
  current row). The smoother with weight w (alpha = 1 - w), seeded at row s with the simple mean of the n
  inputs x_{s-n+1..s}:

      E_s = mean(x_{s-n+1..s}),   E_t = w * E_{t-1} + (1 - w) * x_t   (t > s)

  has the closed form  E_t = (1 - w) * sum_{k <= t} w^(t-k) * x'_k  with
      x'_k = x_k * w^(k-s) / (n (1 - w))   for s-n+1 <= k <= s   (folds the SMA seed into the sum),
      x'_k = x_k                            for k > s,   and 0 before s-n+1.
  (Check: at t = s the sum is mean(x_{s-n+1..s}); for t > s it satisfies the recursion.)

  The weighted sum is evaluated with block-local exponents so nothing overflows however long the history:
  rows are cut into blocks of B = 1000 rows (local offset o = (rn - 1) mod B) and z_k = x'_k * w^(-o_k).
  For row t,   sum_{k in t's block and the previous one, k <= t} w^(t-k) x'_k = w^(o_t) * (w^B * T_t + P_t)
  with P_t = sum of z over t's block up to t and T_t = sum of z over the previous block (both plain
  window sums with row-dependent ROWS frames, ending at or before the current row). Older terms carry a
  weight <= w^(B+1) (< 1e-32 for every w used here, far below double precision) and are dropped, so the
  result equals the recursion to machine precision.
  Usage: ewm_z (stage without windows, needs rn), ewm_sums (window stage), ewm_value (after it).
#}
{% macro ewm_block() %}1000{% endmacro %}

{% macro ewm_z(name, x, w, s, n) -%}
    (case when rn > {{ s }} then {{ x }}
          when rn > {{ s }} - {{ n }} then ({{ x }}) * pow({{ w }}, rn - {{ s }}) / ({{ n }} * (1 - {{ w }}))
          else 0 end) * pow({{ w }}, -((rn - 1) % {{ ewm_block() }}))      as {{ name }}_z
{%- endmacro %}

{% macro ewm_sums(name) -%}
    sum({{ name }}_z) over (partition by symbol order by session
        rows between ((rn - 1) % {{ ewm_block() }}) preceding and current row)             as {{ name }}_p,
    sum({{ name }}_z) over (partition by symbol order by session
        rows between ((rn - 1) % {{ ewm_block() }} + {{ ewm_block() }}) preceding
                 and ((rn - 1) % {{ ewm_block() }} + 1) preceding)                        as {{ name }}_t
{%- endmacro %}

{#
  Cheaper split of ewm_sums for a smoother whose value is first needed after a later window stage: the
  earlier stage computes only P (ewm_partial), the later one reads T, the sum of z over the previous block,
  off that block's last row (ewm_prev_block, a lag with a row-dependent offset over the same order): its P
  sums exactly the rows of ewm_sums' T frame, so the value is the same, bit for bit. Rows before the first
  one present (incremental runs) are clipped in both the same way. One cheap lag instead of a second
  variable-frame window sum per smoother.
#}
{% macro ewm_partial(name) -%}
    sum({{ name }}_z) over (partition by symbol order by session
        rows between ((rn - 1) % {{ ewm_block() }}) preceding and current row)             as {{ name }}_p
{%- endmacro %}

{% macro ewm_prev_block(name) -%}
    lag({{ name }}_p, ((rn - 1) % {{ ewm_block() }}) + 1) over (partition by symbol order by session) as {{ name }}_t
{%- endmacro %}

{# NULL before the seed row s #}
{% macro ewm_value(name, w, s) -%}
    case when rn >= {{ s }} then
        (1 - {{ w }}) * pow({{ w }}, (rn - 1) % {{ ewm_block() }})
            * (pow({{ w }}, {{ ewm_block() }}) * coalesce({{ name }}_t, 0) + {{ name }}_p)
    end
{%- endmacro %}
