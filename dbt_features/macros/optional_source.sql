{#
  A warehouse table that may not have been materialised yet (alternative data: news sentiment, insider
  flow). Selects `columns` from the dbt source when at least one of its Parquet partitions exists, else a
  typed empty relation, so the feature models still build (the joined features are then NULL, never 0).
  The source() call is made in both cases so dbt (and Dagster) keep the lineage edge.
  columns: list of [name, duckdb_type].
#}
{% macro optional_source(source_name, table_name, columns) -%}
    {%- set rel = source(source_name, table_name) -%}
    {%- set found = 1 -%}
    {%- if execute -%}
        {%- set pattern = env_var('QTOS_WAREHOUSE_DIR', '../warehouse') ~ '/' ~ table_name ~ '/*/data.parquet' -%}
        {%- set found = run_query("select count(*) from glob('" ~ pattern ~ "')").columns[0].values()[0] -%}
    {%- endif -%}
    {%- if found > 0 %}
    select {% for c in columns %}cast({{ c[0] }} as {{ c[1] }}) as {{ c[0] }}{{ ", " if not loop.last }}{% endfor %}
    from {{ rel }}
    {%- else %}
    -- {{ table_name }}: no partitions materialised yet
    select {% for c in columns %}cast(null as {{ c[1] }}) as {{ c[0] }}{{ ", " if not loop.last }}{% endfor %}
    where false
    {%- endif %}
{%- endmacro %}
