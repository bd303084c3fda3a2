{#
  Accounts that simple AML rules flag, one row per account, with which rules fired
  (thresholds: var aml_rules):
  - near_threshold_cash: repeated cash deposits just under the 10,000 reporting threshold
    (structuring);
  - linked_abroad: money moving with several of the bank's own accounts in other regions
    (cycles through regions);
  - cross_border: a large share of the account's transactions and a large amount crossing borders
    (pass-through from abroad).
#}
{%- set rules = var('aml_rules') -%}

WITH signals AS (
    SELECT * FROM {{ ref('stg_aml_account_signals') }}
),

evaluated AS (
    SELECT
        account_id,
        region,
        transactions,
        volume_eur,
        near_threshold_cash,
        linked_accounts_abroad,
        linked_regions_abroad,
        cross_border_share,
        cross_border_eur,
        near_threshold_cash >= {{ rules['near_threshold_cash_min_deposits'] }} AS near_threshold_cash_alert,
        linked_accounts_abroad >= {{ rules['linked_abroad_min_accounts'] }}
            AND cross_border_eur >= {{ rules['linked_abroad_min_cross_border_eur'] }} AS linked_abroad_alert,
        cross_border_share >= {{ rules['cross_border_min_share'] }}
            AND cross_border_eur >= {{ rules['cross_border_min_eur'] }} AS cross_border_alert
    FROM signals
)

SELECT
    *,
    CAST(near_threshold_cash_alert AS INTEGER)
        + CAST(linked_abroad_alert AS INTEGER)
        + CAST(cross_border_alert AS INTEGER) AS rules_fired,
    CONCAT_WS(', ',
        CASE WHEN near_threshold_cash_alert THEN 'near_threshold_cash' END,
        CASE WHEN linked_abroad_alert THEN 'linked_abroad' END,
        CASE WHEN cross_border_alert THEN 'cross_border' END
    ) AS alert_rules
FROM evaluated
WHERE near_threshold_cash_alert OR linked_abroad_alert OR cross_border_alert
