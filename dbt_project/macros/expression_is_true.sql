{#
  A generic test: fails on every row where `expression` is not true (false or null). dbt-core has
  no such test and this project takes no packages (no `dbt deps`, nothing fetched), so it is here.
#}
{% test expression_is_true(model, expression) %}
SELECT *
FROM {{ model }}
WHERE ({{ expression }}) IS NOT TRUE
{% endtest %}
