"""The compliance-gated join layer: assets in the governed zone, built by the federated planner.

Each silo computes its part where the data lies (per person, per account), the gate lets
out only what the policy allows for the asset's purpose (national ids and account ids as keyed
pseudonyms, so the parts join across silos), and the join happens in the governed zone.
"""

from __future__ import annotations

import dagster as dg

from fedlake.catalog import Catalog
from fedlake.relation import FederatedRelation, RelationHandle
from fedlake.regions import Money

GROUP = "governed"
CREDIT_PURPOSE = "credit_scoring"
AML_PURPOSE = "aml"
# The behaviour window of the credit features: the calendar year before the loans (issued in Q1 2026).
WINDOW_START, WINDOW_END = "2025-01-01 00:00:00", "2026-01-01 00:00:00"


def _eur(amount: str, currency: str, money: Money) -> str:
    """Codes and rates were held to strict shapes when silos.yaml was loaded (fedlake.regions)."""
    cases = " ".join(f"WHEN '{c}' THEN {rate!r}" for c, rate in money.rates_to_eur.items())
    return f"{amount} * CASE {currency} {cases} END"


def _foreign(country: str, region: str, money: Money) -> str:
    domestic = ", ".join(f"'{c}'" for c in money.region(region).domestic_countries)
    return f"({country} IS NOT NULL AND {country} NOT IN ({domestic}))"


def _regional_silos(catalog: Catalog) -> list[tuple[str, str]]:
    """Every silo that holds the bank's customers, accounts and transactions, whatever its region;
    a region silos.yaml does not declare under `regions` is an error naming it, not a silo left out."""
    parts = [
        (name, spec.region)
        for name, spec in catalog.silos.items()
        if {"customers", "accounts", "transactions"} <= set(spec.tables)
    ]
    for _, region in parts:
        catalog.money.region(region, catalog.path)
    return parts


MONTHS = tuple(f"d{m:02d}" for m in range(1, 13))
_PERSON_SUMS = (*MONTHS, "gambling_eur", "cash_advance_eur", "transactions", "cross_border")


def _transactions_in_eur(silo: str, region: str, money: Money, columns: str, where: str = "") -> str:
    """A silo's transactions with amount_eur and abroad computed once per row: the rate table is
    written once per silo, not in every sum, so a fragment's size does not grow with the number of
    currencies (and planning stays linear in the number of silos)."""
    eur = _eur("amount", "currency", money)
    abroad = _foreign("counterparty_country", region, money)
    return f"(SELECT {columns}, {eur} AS amount_eur, {abroad} AS abroad FROM {silo}.transactions {where})"


def person_sql(silo: str, region: str, money: Money) -> str:
    """One silo's part, one row per person (national id): debit spending in EUR for each month of
    the window, its gambling and cash-advance parts, and transaction counts; computed in the silo."""
    debit = "t.direction = 'debit'"
    eur = "t.amount_eur"
    window = f"WHERE ts >= TIMESTAMP '{WINDOW_START}' AND ts < TIMESTAMP '{WINDOW_END}'"
    transactions = _transactions_in_eur(silo, region, money, "account_id, ts, direction, merchant_category", window)
    months = ",\n           ".join(
        f"sum(CASE WHEN {debit} AND month(t.ts) = {m} THEN {eur} ELSE 0 END) AS {column}"
        for m, column in enumerate(MONTHS, start=1)
    )
    return f"""
    SELECT c.national_id,
           {months},
           sum(CASE WHEN {debit} AND t.merchant_category = 'gambling' THEN {eur} ELSE 0 END) AS gambling_eur,
           sum(CASE WHEN {debit} AND t.merchant_category = 'cash_advance' THEN {eur} ELSE 0 END) AS cash_advance_eur,
           count(*) AS transactions,
           sum(CASE WHEN t.abroad THEN 1 ELSE 0 END) AS cross_border
    FROM {transactions} t
    JOIN {silo}.accounts a ON a.account_id = t.account_id
    JOIN {silo}.customers c ON c.customer_id = a.customer_id
    GROUP BY c.national_id"""


def _person_features(source: str) -> str:
    """Behaviour features per person over the 12 months of the window (months without spending count as 0)."""
    total = " + ".join(MONTHS)
    squares = " + ".join(f"{m} * {m}" for m in MONTHS)
    sums = ", ".join(f"sum({c}) AS {c}" for c in _PERSON_SUMS)
    return f"""
    SELECT national_id,
           {total} AS debit_eur,
           CASE WHEN {total} > 0
                THEN sqrt(greatest(({squares}) / 12 - (({total}) / 12) ^ 2, 0)) / (({total}) / 12)
                ELSE 0 END AS spending_volatility,
           coalesce(gambling_eur / nullif({total}, 0), 0) AS gambling_share,
           coalesce(cash_advance_eur / nullif({total}, 0), 0) AS cash_advance_share,
           coalesce(cross_border / nullif(transactions, 0), 0) AS cross_border_share,
           transactions
    FROM (SELECT national_id, {sums} FROM {source} GROUP BY national_id) AS person"""


def credit_features_sql(catalog: Catalog, loans_silo: str) -> str:
    parts = _regional_silos(catalog)
    ctes = [f"{silo}_people AS ({person_sql(silo, region, catalog.money)})" for silo, region in parts]
    everywhere = " UNION ALL ".join(f"SELECT * FROM {silo}_people" for silo, _ in parts)
    ctes.append(f"all_people AS ({everywhere})")
    ctes.append(f"everywhere AS ({_person_features('all_people')})")
    ctes.append(f"home_only AS ({_person_features(f'{loans_silo}_people')})")
    features = ("spending_volatility", "gambling_share", "cash_advance_share", "cross_border_share")
    return f"""
    WITH {', '.join(ctes)}
    SELECT l.loan_id, l.principal, l.rate, l.term_months, l.purpose, l.issued_at, l.defaulted,
           c.income, c.employment_years,
           12 * l.principal * (l.rate / 12) / (1 - pow(1 + l.rate / 12, -l.term_months)) / c.income AS dti,
           {', '.join(f'coalesce(e.{f}, 0) AS {f}' for f in features)},
           coalesce(e.transactions, 0) AS transactions,
           {', '.join(f'coalesce(h.{f}, 0) AS home_{f}' for f in features)},
           coalesce(h.transactions, 0) AS home_transactions
    FROM {loans_silo}.loans l
    JOIN {loans_silo}.customers c ON c.customer_id = l.customer_id
    LEFT JOIN everywhere e ON e.national_id = c.national_id
    LEFT JOIN home_only h ON h.national_id = c.national_id"""


def account_signals_sql(catalog: Catalog) -> str:
    """Per account and silo: volumes, near-threshold cash deposits, cross-border flows, and how many
    of its counterparties are the bank's own accounts in other silos (matched on pseudonyms)."""
    parts = _regional_silos(catalog)
    per_silo = []
    for silo, region in parts:
        eur, foreign = "t.amount_eur", "t.abroad"
        transactions = _transactions_in_eur(silo, region, catalog.money, "account_id, amount, direction, channel")
        per_silo.append(f"""
        SELECT t.account_id, '{region}' AS region, count(*) AS transactions,
               sum({eur}) AS volume_eur,
               sum(CASE WHEN t.direction = 'credit' AND t.channel = 'cash' AND t.amount >= 9000 AND t.amount < 10000
                        THEN 1 ELSE 0 END) AS near_threshold_cash,
               sum(CASE WHEN {foreign} THEN 1 ELSE 0 END) AS cross_border,
               sum(CASE WHEN {foreign} THEN {eur} ELSE 0 END) AS cross_border_eur,
               max(CASE WHEN t.direction = 'credit' THEN {eur} ELSE 0 END) AS largest_credit_eur
        FROM {transactions} t GROUP BY t.account_id""")
    links = " UNION ALL ".join(
        f"SELECT DISTINCT t.account_id, t.counterparty_account FROM {silo}.transactions t WHERE t.counterparty_account IS NOT NULL"
        for silo, _ in parts
    )
    # links meet the bank's accounts in an inner join, so the planner can send the accounts' keys
    # into each silo and only links to the bank's own accounts cross (a semi-join)
    return f"""
    WITH accounts AS ({' UNION ALL '.join(per_silo)}),
         links AS ({links}),
         linked AS (SELECT l.account_id, other.account_id AS other_account, other.region AS other_region
                    FROM links l JOIN accounts other ON other.account_id = l.counterparty_account)
    SELECT a.account_id, a.region, a.transactions, a.volume_eur, a.near_threshold_cash, a.cross_border,
           a.cross_border_eur, a.largest_credit_eur,
           count(DISTINCT CASE WHEN x.other_region <> a.region THEN x.other_account END) AS linked_accounts_abroad,
           count(DISTINCT CASE WHEN x.other_region <> a.region THEN x.other_region END) AS linked_regions_abroad
    FROM accounts a
    LEFT JOIN linked x ON x.account_id = a.account_id
    GROUP BY ALL"""


def _inputs(catalog: Catalog, tables: tuple[str, ...]) -> dict[str, dg.AssetIn]:
    return {
        f"{silo}__{table}": dg.AssetIn(key=[silo, table], input_manager_key="federated_io_manager")
        for silo, _ in _regional_silos(catalog)
        for table in tables
    }


def customer_credit_features_asset(catalog: Catalog, loans_silo: str = "eu_core") -> dg.AssetsDefinition:
    sql = credit_features_sql(catalog, loans_silo)
    ins = _inputs(catalog, ("customers", "accounts", "transactions"))
    ins[f"{loans_silo}__loans"] = dg.AssetIn(key=[loans_silo, "loans"], input_manager_key="federated_io_manager")

    @dg.asset(
        key=[GROUP, "customer_credit_features"],
        ins=ins,
        io_manager_key="federated_io_manager",
        group_name=GROUP,
        kinds={"duckdb"},
        tags={"purpose": CREDIT_PURPOSE},
        automation_condition=dg.AutomationCondition.eager(),
    )
    def customer_credit_features(**inputs: RelationHandle) -> FederatedRelation:
        """One row per loan: its EU facts and the borrower's behaviour in every region, joined on pseudonyms."""
        return FederatedRelation(sql=sql, purpose=CREDIT_PURPOSE, inputs=tuple(inputs.values()))

    return customer_credit_features


def aml_account_signals_asset(catalog: Catalog) -> dg.AssetsDefinition:
    sql = account_signals_sql(catalog)

    @dg.asset(
        key=[GROUP, "aml_account_signals"],
        ins=_inputs(catalog, ("transactions",)),
        io_manager_key="federated_io_manager",
        group_name=GROUP,
        kinds={"duckdb"},
        tags={"purpose": AML_PURPOSE},
        automation_condition=dg.AutomationCondition.eager(),
    )
    def aml_account_signals(**inputs: RelationHandle) -> FederatedRelation:
        """Per pseudonymized account: volumes, near-threshold cash, cross-border flows and links abroad."""
        return FederatedRelation(sql=sql, purpose=AML_PURPOSE, inputs=tuple(inputs.values()))

    return aml_account_signals


def governed_assets(catalog: Catalog) -> list[dg.AssetsDefinition]:
    assets = [aml_account_signals_asset(catalog)]
    loans = [name for name, spec in catalog.silos.items() if "loans" in spec.tables]
    if loans:
        assets.insert(0, customer_credit_features_asset(catalog, loans[0]))
    return assets
