{#
  Models land in the schema their folder names (`staging`, `marts`), not dbt's default
  `<target schema>_<custom schema>`: the marts database is fedlake's own, so plain names read better.
#}
{% macro generate_schema_name(custom_schema_name, node) %}
  {{- (custom_schema_name or target.schema) | trim -}}
{% endmacro %}
