"""Assets computed inside each silo: their inputs and their output never leave it."""

from __future__ import annotations

import dagster as dg

from fedlake.catalog import Catalog
from fedlake.relation import Relation, RelationHandle

CREDIT_PURPOSE = "credit_scoring"  # the monthly totals feed the credit features

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


def in_silo_assets(catalog: Catalog) -> list[dg.AssetsDefinition]:
    return [
        monthly_spending_asset(name)
        for name, spec in catalog.silos.items()
        if {"transactions", "accounts"} <= set(spec.tables)
    ]
