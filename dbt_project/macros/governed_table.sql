{#
  The governed zone's tables, as something a model can select from.

  `source('governed', ...)` is always called, so dbt (and Dagster, through the manifest) knows the
  lineage. In the prod target the source is the governed PostgreSQL schema attached as
  `governed_pg`, and the source relation is used as it is. In the local target the governed zone is
  a Parquet lake that fedlake writes in versions: each write goes to a new version folder, becomes
  visible when the `_current` pointer names it, and the previous version is then deleted. Globbing
  every version folder would read a write in progress (two folders, rows twice) or a folder being
  deleted, so the pointer is read first, at run time, and only that version's files are scanned,
  exactly as fedlake's own lake connector does. A folder without a pointer (a lake fedlake did not
  write) is read as it is.
#}
{% macro governed_table(table_name) %}
  {%- set relation = source('governed', table_name) -%}
  {%- if not execute or target.name == 'prod' -%}
    {{ return(relation) }}
  {%- endif -%}
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
  {%- set pointer = folder ~ '/_current' -%}
  {%- set has_pointer = run_query("SELECT count(*) FROM glob(" ~ dbt.string_literal(pointer) ~ ")").columns[0].values()[0] > 0 -%}
  {%- if has_pointer -%}
    {%- set version = run_query("SELECT trim(content) FROM read_text(" ~ dbt.string_literal(pointer) ~ ")").columns[0].values()[0] -%}
    {%- if not modules.re.fullmatch('[A-Za-z0-9_.-]+', version or '') -%}
      {{ exceptions.raise_compiler_error("governed zone: " ~ pointer ~ " names no valid version folder (it reads " ~ (version | tojson) ~ ")") }}
    {%- endif -%}
    {%- set pattern = folder ~ '/' ~ version ~ '/**/*.parquet' -%}
  {%- else -%}
    {%- set pattern = folder ~ '/*.parquet' -%}
  {%- endif -%}
  {%- set files = run_query("SELECT count(*) FROM glob(" ~ dbt.string_literal(pattern) ~ ")").columns[0].values()[0] -%}
  {%- if files == 0 -%}
    {{ exceptions.raise_compiler_error(
        "governed zone: no Parquet files for table '" ~ table_name ~ "' at " ~ pattern
        ~ "; materialize the Dagster asset governed/" ~ table_name ~ " first (governed zone: "
        ~ governed_zone_path() ~ ")") }}
  {%- endif -%}
  {{ return("read_parquet(" ~ dbt.string_literal(pattern) ~ ")") }}
{% endmacro %}
