{#
  Each risk dimension of the profile must count every governed loan exactly once: a band missing
  from the CASE, or a loan counted twice, shows here as a dimension whose loans do not add up.
#}
{{ config(meta={'dagster': {'ref': {'name': 'customer_risk_profile'}}}) }}

WITH per_dimension AS (
    SELECT risk_dimension, SUM(loans) AS loans, SUM(defaulted_loans) AS defaulted_loans
    FROM {{ ref('customer_risk_profile') }}
    GROUP BY risk_dimension
),

governed AS (
    SELECT COUNT(*) AS loans, COUNT(*) FILTER (WHERE defaulted) AS defaulted_loans
    FROM {{ ref('stg_customer_credit_features') }}
)

SELECT p.risk_dimension, p.loans, g.loans AS governed_loans
FROM per_dimension AS p
CROSS JOIN governed AS g
WHERE p.loans <> g.loans OR p.defaulted_loans <> g.defaulted_loans
