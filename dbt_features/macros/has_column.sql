{#
  Whether the model's stored relation has `column` (false at parse time and on a first build). The incremental
  models use it to treat a table stored by an older version without input_hash as entirely changed (every
  session is recomputed and the column is added: on_schema_change='append_new_columns'), so an upgrade needs no
  full refresh.
#}
{% macro has_column(column) -%}
    {%- if execute and is_incremental() -%}
        {{- return(column in (adapter.get_columns_in_relation(this) | map(attribute='name') | list)) -}}
    {%- endif -%}
    {{- return(false) -}}
{%- endmacro %}
