{#
  Change tracking for incremental builds. `warehouse_files` logs every partition file that appeared, changed or
  disappeared, with a batch number that only grows. Each incremental model records in `qtos_model_state`
  (created by on-run-start) the batch up to which its table reflects the warehouse, and the code version it was
  built with; its post-hook writes it in the same transaction as the model's rows. A staging model then loads only
  the files logged after its batch; features_daily and labels recompute from the first session those entries
  touch. A model without a state row (first build of this version on an older warehouse) or with another code
  version is recomputed entirely, in place.
#}

{% macro model_state_relation() -%}
    {{- return(adapter.get_relation(database=this.database, schema=this.schema, identifier='qtos_model_state')) -}}
{%- endmacro %}

{# The batch and code version `model` last recorded (none: no state row, or no state table yet). #}
{% macro model_state(model) -%}
    {%- set rel = model_state_relation() -%}
    {%- if not execute or rel is none -%}{{ return(none) }}{%- endif -%}
    {%- set rows = run_query("select inputs_batch, code_version from " ~ rel ~ " where model = '" ~ model ~ "'").rows -%}
    {{- return(rows[0] if rows | length > 0 else none) -}}
{%- endmacro %}

{# Post-hook: this model reflects the warehouse up to `batch_sql` (a scalar query), built with `code_version`. #}
{% macro record_state(batch_sql, code_version='') -%}
    insert or replace into {{ this.schema }}.qtos_model_state
    values ('{{ this.identifier }}', coalesce(({{ batch_sql }}), 0), '{{ code_version }}', current_timestamp)
{%- endmacro %}

{# The file log's relation (none before warehouse_files is first built). #}
{% macro file_log() -%}
    {{- return(adapter.get_relation(database=this.database, schema=this.schema, identifier='warehouse_files')) -}}
{%- endmacro %}

{# The newest batch of the file log (a staging model has loaded everything logged up to it); 0 without a log. #}
{% macro log_top() -%}
    {%- set log = file_log() -%}
    {%- if log is none -%}select 0{%- else -%}select max(batch) from {{ log }}{%- endif -%}
{%- endmacro %}

{# The batch every one of `models` reflects (a consumer reflects no more than its inputs do). #}
{% macro inputs_top(models) -%}
    select min(inputs_batch) from {{ this.schema }}.qtos_model_state
    where model in ({% for m in models %}'{{ m }}'{{ ", " if not loop.last }}{% endfor %})
{%- endmacro %}

{#
  A staging model's files: {'load': files to (re)read, 'drop': files whose stored rows go (changed or removed),
  'all': whether the whole table is rebuilt}. Paths are under the warehouse root, as logged.
#}
{% macro staging_files(source_name) -%}
    {%- if not execute -%}{{ return({'load': [], 'drop': [], 'all': true}) }}{%- endif -%}
    {%- set log = file_log() -%}
    {%- if log is none -%}
        {#- no log yet (warehouse_files not built in this warehouse): every file, as a full build; the log's first
            batch will then list every file again, so the next run reloads them all once -#}
        {%- set root = env_var('QTOS_WAREHOUSE_DIR', '../warehouse') -%}
        {%- set q = "select file from glob('" ~ root ~ "/" ~ source_name ~ "/*/data.parquet') order by file" -%}
        {%- set load = [] -%}
        {%- for r in run_query(q).rows -%}{%- do load.append(r[0][(root | length) + 1:]) -%}{%- endfor -%}
        {{- return({'load': load, 'drop': [], 'all': true}) -}}
    {%- endif -%}
    {%- set state = model_state(this.identifier) if is_incremental() else none -%}
    {%- set since = state[0] if state is not none else none -%}
    {%- set q -%}
        select file, removed from (
            select file, removed, batch from {{ log }} where source = '{{ source_name }}'
            qualify row_number() over (partition by file order by batch desc) = 1)
        where {% if since is none %}not removed{% else %}batch > {{ since }}{% endif %}
        order by file
    {%- endset -%}
    {%- set load, drop = [], [] -%}
    {%- for r in run_query(q).rows -%}
        {%- do drop.append(r[0]) -%}
        {%- if not r[1] -%}{%- do load.append(r[0]) -%}{%- endif -%}
    {%- endfor -%}
    {{- return({'load': load, 'drop': drop, 'all': since is none}) -}}
{%- endmacro %}

{# Pre-hook of a staging model: the stored rows of the files it reloads or that are gone. #}
{% macro drop_staged_files(source_name) -%}
    {%- if is_incremental() -%}
        {%- set files = staging_files(source_name) -%}
        {%- if files['all'] -%}
            delete from {{ this }}
        {%- elif files['drop'] | length > 0 -%}
            delete from {{ this }} where source_file in ({% for f in files['drop'] %}'{{ f }}'{{ ", " if not loop.last }}{% endfor %})
        {%- endif -%}
    {%- endif -%}
{%- endmacro %}

{#
  A staging model's rows: `columns` ([name, duckdb_type]) of the files it (re)loads, with their path
  (source_file); a typed empty relation when there are none (an alternative-data asset not materialised yet: the
  joined features are then NULL, never 0). The source() call keeps the lineage edge for dbt and Dagster.
#}
{% macro staged_source(source_name, table_name, columns) -%}
    {%- set files = staging_files(table_name) -%}
    {%- set root = env_var('QTOS_WAREHOUSE_DIR', '../warehouse') -%}
    -- {{ table_name }} partitions read from {{ source(source_name, table_name) }}, as logged in {{ ref('warehouse_files') }}
    {%- if files['load'] | length > 0 %}
    select {% for c in columns %}cast({{ c[0] }} as {{ c[1] }}) as {{ c[0] }}, {% endfor %}
           substr(filename, {{ (root ~ '/') | length + 1 }}) as source_file
    from read_parquet([{% for f in files['load'] %}'{{ root }}/{{ f }}'{{ ", " if not loop.last }}{% endfor %}],
                      filename = true, union_by_name = true, hive_partitioning = false)
    {%- else %}
    select {% for c in columns %}cast(null as {{ c[1] }}) as {{ c[0] }}, {% endfor %}cast(null as varchar) as source_file
    where false
    {%- endif %}
{%- endmacro %}

{#
  The first session an incremental consumer recomputes from: the earliest session touched by a file logged after
  the batch it recorded, among `sources` (none: nothing changed; 0001-01-01: everything, when it has no state,
  another code version, there is no file log, or a logged change does not say what it touches). features_daily.py computes the same in Python (first_changed).
#}
{% macro first_changed_session(sources, code_version) -%}
    {%- if not execute or not is_incremental() -%}{{ return(none) }}{%- endif -%}
    {%- set state = model_state(this.identifier) -%}
    {%- set log = file_log() -%}
    {%- if state is none or state[1] != code_version or log is none -%}{{ return('0001-01-01') }}{%- endif -%}
    {%- set q -%}
        select case when bool_or(affects_from is null) then date '0001-01-01' else min(affects_from) end
        from {{ log }} where batch > {{ state[0] }} and source in ({% for s in sources %}'{{ s }}'{{ ", " if not loop.last }}{% endfor %})
    {%- endset -%}
    {%- set d = run_query(q).columns[0].values()[0] -%}
    {{- return(none if d is none else d | string) -}}
{%- endmacro %}

{# labels' code version: the feature library's code version and every label var (a change recomputes all labels). #}
{% macro label_code_version() -%}
    {{- return(var("features_code_version") ~ '|' ~ var('label_horizon') ~ '|' ~ var("label_up") ~ '|'
               ~ var("label_down") ~ '|' ~ var("label_price") ~ '|' ~ var("label_kind") ~ '|' ~ var('label_vol_k')) -}}
{%- endmacro %}
