{#
  The loans of the governed zone's current version, typed once. A table, not a view: every mart of
  one build reads the same snapshot, and a later governed write (which deletes the version a view
  would point at) cannot break what was built.
#}
SELECT
    loan_id,
    CAST(principal AS DOUBLE PRECISION) AS principal,
    CAST(rate AS DOUBLE PRECISION) AS rate,
    CAST(term_months AS INTEGER) AS term_months,
    purpose,
    CAST(issued_at AS TIMESTAMP) AS issued_at,
    CAST(defaulted AS BOOLEAN) AS defaulted,
    CAST(income AS DOUBLE PRECISION) AS income,
    CAST(employment_years AS INTEGER) AS employment_years,
    CAST(dti AS DOUBLE PRECISION) AS dti,
    CAST(spending_volatility AS DOUBLE PRECISION) AS spending_volatility,
    CAST(gambling_share AS DOUBLE PRECISION) AS gambling_share,
    CAST(cash_advance_share AS DOUBLE PRECISION) AS cash_advance_share,
    CAST(cross_border_share AS DOUBLE PRECISION) AS cross_border_share,
    CAST(transactions AS BIGINT) AS transactions
FROM {{ governed_table('customer_credit_features') }}
