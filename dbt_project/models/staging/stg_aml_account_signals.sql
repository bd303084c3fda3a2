{#
  The account signals of the governed zone's current version, typed once (counts arrive as
  DECIMAL sums from the planner), with the cross-border share the AML rules use.
#}
SELECT
    account_id,
    region,
    CAST(transactions AS BIGINT) AS transactions,
    CAST(volume_eur AS DOUBLE PRECISION) AS volume_eur,
    CAST(near_threshold_cash AS BIGINT) AS near_threshold_cash,
    CAST(cross_border AS BIGINT) AS cross_border,
    COALESCE(CAST(cross_border AS DOUBLE PRECISION) / NULLIF(CAST(transactions AS DOUBLE PRECISION), 0), 0) AS cross_border_share,
    CAST(cross_border_eur AS DOUBLE PRECISION) AS cross_border_eur,
    CAST(largest_credit_eur AS DOUBLE PRECISION) AS largest_credit_eur,
    CAST(linked_accounts_abroad AS BIGINT) AS linked_accounts_abroad,
    CAST(linked_regions_abroad AS BIGINT) AS linked_regions_abroad
FROM {{ governed_table('aml_account_signals') }}
