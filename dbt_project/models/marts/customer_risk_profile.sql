{#
  Default rates by risk band. Each loan is banded on its debt-to-income ratio, its gambling share
  and its cross-border share (thresholds: var risk_band_thresholds), and on an overall band that
  adds up points over the three (low 0, medium 1, high 2; var overall_band_points). One row per
  risk dimension and band, every band present even when no loan falls in it, so each dimension's
  rows count every loan exactly once.
#}
{%- set thresholds = var('risk_band_thresholds') -%}
{%- set points = var('overall_band_points') -%}
{%- set dimensions = [('dti', 'dti'), ('gambling', 'gambling_share'), ('cross_border', 'cross_border_share')] -%}
{%- set bands = [('low', 1), ('medium', 2), ('high', 3)] -%}

WITH loans AS (
    SELECT * FROM {{ ref('stg_customer_credit_features') }}
),

banded AS (
    SELECT
        loan_id,
        defaulted,
        principal,
        dti,
        {%- for name, column in dimensions %}
        CASE
            WHEN {{ column }} >= {{ thresholds[column][1] }} THEN 'high'
            WHEN {{ column }} >= {{ thresholds[column][0] }} THEN 'medium'
            ELSE 'low'
        END AS {{ name }}_band{{ ',' if not loop.last }}
        {%- endfor %}
    FROM loans
),

scored AS (
    SELECT
        *,
        {%- for name, column in dimensions %}
        CASE {{ name }}_band WHEN 'high' THEN 2 WHEN 'medium' THEN 1 ELSE 0 END{{ ' +' if not loop.last }}
        {%- endfor %} AS risk_points
    FROM banded
),

per_dimension AS (
    {%- for name, column in dimensions %}
    SELECT '{{ name }}' AS risk_dimension, {{ name }}_band AS band, loan_id, defaulted, principal, dti FROM scored
    UNION ALL
    {%- endfor %}
    SELECT
        'overall' AS risk_dimension,
        CASE
            WHEN risk_points >= {{ points[1] }} THEN 'high'
            WHEN risk_points >= {{ points[0] }} THEN 'medium'
            ELSE 'low'
        END AS band,
        loan_id, defaulted, principal, dti
    FROM scored
),

spine AS (
    {%- for name, column in dimensions + [('overall', 'risk_points')] %}
    {%- set outer = loop %}
    {%- set cuts = points if name == 'overall' else thresholds[column] %}
    {%- for band, rank in bands %}
    SELECT
        '{{ name }}' AS risk_dimension,
        '{{ column }}' AS banded_on,
        '{{ band }}' AS band,
        {{ rank }} AS band_rank,
        CAST({{ 'NULL' if rank == 1 else cuts[rank - 2] }} AS DOUBLE PRECISION) AS lower_bound,
        CAST({{ 'NULL' if rank == 3 else cuts[rank - 1] }} AS DOUBLE PRECISION) AS upper_bound
    {{- '' if outer.last and loop.last else '\n    UNION ALL' }}
    {%- endfor %}
    {%- endfor %}
),

all_loans AS (
    SELECT COUNT(*) AS loans FROM loans
)

SELECT
    s.risk_dimension || ':' || s.band AS band_key,
    s.risk_dimension,
    s.band,
    s.band_rank,
    s.banded_on,
    s.lower_bound,
    s.upper_bound,
    COUNT(p.loan_id) AS loans,
    COUNT(p.loan_id) FILTER (WHERE p.defaulted) AS defaulted_loans,
    CAST(COUNT(p.loan_id) FILTER (WHERE p.defaulted) AS DOUBLE PRECISION) / NULLIF(COUNT(p.loan_id), 0) AS default_rate,
    CAST(COUNT(p.loan_id) AS DOUBLE PRECISION) / NULLIF({{ dbt.any_value('a.loans') }}, 0) AS share_of_loans,
    COALESCE(SUM(p.principal), 0) AS principal,
    AVG(p.dti) AS avg_dti
FROM spine AS s
CROSS JOIN all_loans AS a
LEFT JOIN per_dimension AS p
    ON p.risk_dimension = s.risk_dimension AND p.band = s.band
GROUP BY s.risk_dimension, s.band, s.band_rank, s.banded_on, s.lower_bound, s.upper_bound
ORDER BY s.risk_dimension, s.band_rank
