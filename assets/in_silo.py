"""Assets computed inside each silo: their inputs and their output never leave it. The daily ones
are partitioned by day, each day its own table in the silo (the federated IO manager names it)."""

import dagster as dg

from assets.partitions import daily_partitions
from fedlake.catalog import Catalog
from fedlake.relation import Relation, RelationHandle

CREDIT_PURPOSE = "credit_scoring"  # the monthly totals feed the credit features
AML_PURPOSE = "aml"  # daily volumes per channel are what transaction monitoring watches
DAILY_TABLE = "daily_transactions"

MONTHLY_SPENDING_SQL = """
SELECT a.customer_id,
       date_trunc('month', t.ts) AS month,
       count(*) AS transactions,
       sum(CASE WHEN t.direction = 'debit' THEN t.amount ELSE 0 END) AS debit_total,
       sum(CASE WHEN t.direction = 'credit' THEN t.amount ELSE 0 END) AS credit_total,
       sum(CASE WHEN t.merchant_category IN ('gambling', 'cash_advance') AND t.direction = 'debit'
                THEN t.amount ELSE 0 END) AS risky_debit_total,
       min(t.currency) AS currency
FROM {transactions} AS t
JOIN {accounts} AS a ON a.account_id = t.account_id
GROUP BY a.customer_id, date_trunc('month', t.ts)
"""


def monthly_spending_asset(silo: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=[silo, "monthly_spending"],
        ins={
            "transactions": dg.AssetIn(key=[silo, "transactions"], input_manager_key="federated_io_manager"),
            "accounts": dg.AssetIn(key=[silo, "accounts"], input_manager_key="federated_io_manager"),
        },
        io_manager_key="federated_io_manager",
        group_name=silo,
        kinds={"sql"},
        tags={"silo": silo},
    )
    def monthly_spending(transactions: RelationHandle, accounts: RelationHandle) -> Relation:
        """Monthly debit, credit and gambling/cash-advance totals per customer, computed inside the silo."""
        sql = MONTHLY_SPENDING_SQL.format(transactions=transactions.ref, accounts=accounts.ref)
        return Relation(sql=sql, inputs=(transactions, accounts), purpose=CREDIT_PURPOSE)

    return monthly_spending


DAILY_TRANSACTIONS_SQL = """
SELECT CAST(t.ts AS DATE) AS day, t.currency, t.direction, t.channel,
       count(*) AS transactions, sum(t.amount) AS amount
FROM {transactions} AS t
WHERE t.ts >= TIMESTAMP '{start}' AND t.ts < TIMESTAMP '{end}'
GROUP BY CAST(t.ts AS DATE), t.currency, t.direction, t.channel
"""


def day_bounds(window: dg.TimeWindow) -> tuple[str, str]:
    """A partition's time window as SQL timestamp literals' text (UTC)."""
    return f"{window.start:%Y-%m-%d %H:%M:%S}", f"{window.end:%Y-%m-%d %H:%M:%S}"


def daily_transactions_asset(silo: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=[silo, DAILY_TABLE],
        ins={"transactions": dg.AssetIn(key=[silo, "transactions"], input_manager_key="federated_io_manager")},
        io_manager_key="federated_io_manager",
        partitions_def=daily_partitions,
        group_name=silo,
        kinds={"sql"},
    )
    def daily_transactions(context: dg.AssetExecutionContext, transactions: RelationHandle) -> Relation:
        """Each day's transaction count and amount per currency, direction and channel, computed inside the silo."""
        start, end = day_bounds(context.partition_time_window)
        sql = DAILY_TRANSACTIONS_SQL.format(transactions=transactions.ref, start=start, end=end)
        return Relation(sql=sql, inputs=(transactions,), purpose=AML_PURPOSE)

    return daily_transactions


def in_silo_assets(catalog: Catalog) -> list[dg.AssetsDefinition]:
    """The unpartitioned in-silo assets."""
    monthly = [
        monthly_spending_asset(name)
        for name, spec in catalog.silos.items()
        if {"transactions", "accounts"} <= set(spec.tables)
    ]
    return monthly


def partitioned_in_silo_assets(catalog: Catalog) -> list[dg.AssetsDefinition]:
    """The in-silo assets partitioned by day: built by their own job and schedule, one day per run."""
    return [daily_transactions_asset(name) for name, spec in catalog.silos.items() if "transactions" in spec.tables]
