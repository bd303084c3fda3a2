{#
  The governed zone's tables, as something a model can select from.

  `source('governed', ...)` is always called, so dbt (and Dagster, through the manifest) knows the
  lineage. Where the governed zone is a database (dbt-postgres in prod: the marts are built in the
  governed PostgreSQL database) the source relation is used as it is. With dbt-duckdb the governed
  zone is a lake of Delta tables that fedlake writes, one commit per write: `delta_scan` (DuckDB's
  delta extension, loaded from its wheel) reads the committed version only, never the files of a
  write in progress or of a replaced version awaiting vacuum. A folder without a Delta log (a lake
  fedlake did not write) is read as plain Parquet.
#}
{% macro governed_table(table_name) %}
  {%- set relation = source('governed', table_name) -%}
  {%- if not execute -%}
    {{ return(relation) }}
  {%- endif -%}
  {{ return(adapter.dispatch('governed_table')(table_name, relation)) }}
{% endmacro %}


{% macro default__governed_table(table_name, relation) %}
  {{ return(relation) }}
{% endmacro %}


{% macro duckdb__governed_table(table_name, relation) %}
  {{ return(governed_lake_scan(table_name)) }}
{% endmacro %}


{% macro governed_zone_path() %}
  {%- set zone = var('governed_zone', none) -%}
  {%- if not zone -%}
    {%- set zone = (var('fedlake_home', none) or env_var('FEDLAKE_HOME')) ~ '/governed/zone' -%}
  {%- endif -%}
  {{ return(zone.rstrip('/')) }}
{% endmacro %}


{% macro governed_lake_scan(table_name) %}
  {%- set folder = governed_zone_path() ~ '/' ~ table_name -%}
  {%- set log = folder ~ '/_delta_log/*.json' -%}
  {%- set is_delta = run_query("SELECT count(*) FROM glob(" ~ dbt.string_literal(log) ~ ")").columns[0].values()[0] > 0 -%}
  {%- if is_delta -%}
    {{ return("delta_scan(" ~ dbt.string_literal(folder) ~ ")") }}
  {%- endif -%}
  {%- set pattern = folder ~ '/*.parquet' -%}
  {%- set files = run_query("SELECT count(*) FROM glob(" ~ dbt.string_literal(pattern) ~ ")").columns[0].values()[0] -%}
  {%- if files == 0 -%}
    {{ exceptions.raise_compiler_error(
        "governed zone: no Parquet files for table '" ~ table_name ~ "' at " ~ pattern
        ~ "; materialize the Dagster asset governed/" ~ table_name ~ " first (governed zone: "
        ~ governed_zone_path() ~ ")") }}
  {%- endif -%}
  {{ return("read_parquet(" ~ dbt.string_literal(pattern) ~ ")") }}
{% endmacro %}
