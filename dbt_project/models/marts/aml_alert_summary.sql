{#
  AML alerts per region: how many accounts the rules flag, per rule, and the volume they move.
  The governed signals are per account, not per day, so this summarises the current governed
  version rather than a day; one row for every region that has accounts, alerts or not.
#}
WITH signals AS (
    SELECT * FROM {{ ref('stg_aml_account_signals') }}
),

alerts AS (
    SELECT * FROM {{ ref('aml_account_alerts') }}
)

SELECT
    s.region,
    COUNT(*) AS accounts,
    COUNT(a.account_id) AS alerted_accounts,
    CAST(COUNT(a.account_id) AS DOUBLE PRECISION) / COUNT(*) AS alert_rate,
    COUNT(a.account_id) FILTER (WHERE a.near_threshold_cash_alert) AS near_threshold_cash_alerts,
    COUNT(a.account_id) FILTER (WHERE a.linked_abroad_alert) AS linked_abroad_alerts,
    COUNT(a.account_id) FILTER (WHERE a.cross_border_alert) AS cross_border_alerts,
    SUM(s.volume_eur) AS volume_eur,
    COALESCE(SUM(a.volume_eur), 0) AS alerted_volume_eur
FROM signals AS s
LEFT JOIN alerts AS a
    ON a.account_id = s.account_id
GROUP BY s.region
ORDER BY s.region
