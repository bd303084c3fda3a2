"""Schema contracts for the tables fedlake derives, in the governed zone and inside the silos.

A derived table's contract is the column list its SQL declares (read with sqlglot, so the contract
cannot drift from the code that builds the table): the table must have exactly those columns, in
that order. Dagster's column-schema change check watches the types between materializations, so a
column that turns from integer to text is seen the run it happens; the marts and the models
downstream depend on both.
"""


from collections.abc import Sequence

import dagster as dg
import sqlglot

from assets.governed import account_signals_sql, credit_features_sql
from assets.in_silo import MONTHLY_SPENDING_SQL
from fedlake.catalog import Catalog

CHECK_NAME = "schema_contract"
GOVERNED = "governed"


def declared_columns(sql: str) -> tuple[str, ...]:
    """The output columns a query declares, in order."""
    return tuple(sqlglot.parse_one(sql, read="duckdb").named_selects)


def schema_contract_check(key: dg.AssetKey, columns: Sequence[str]) -> dg.AssetChecksDefinition:
    home, table = key.path
    contract = tuple(columns)
    resource = "governed_zone" if home == GOVERNED else home

    @dg.asset_check(
        asset=key,
        name=CHECK_NAME,
        description=f"{home}.{table} has exactly the {len(contract)} columns its SQL declares, in order.",
        required_resource_keys={resource},
    )
    def contract_holds(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        if home == GOVERNED:
            actual = [(f.name, str(f.type)) for f in context.resources.governed_zone.connector().schema(table)]
        else:
            actual = [(name, type_) for name, type_, *_ in getattr(context.resources, home).agent().schema(table)]
        names = tuple(name for name, _ in actual)
        missing = [c for c in contract if c not in names]
        extra = [c for c in names if c not in contract]
        problems = []
        if missing:
            problems.append(f"missing {', '.join(missing)}")
        if extra:
            problems.append(f"not in the contract: {', '.join(extra)}")
        if not problems and names != contract:
            problems.append("columns out of order")
        return dg.AssetCheckResult(
            passed=not problems,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"{home}.{table}: " + ("; ".join(problems) if problems else f"all {len(contract)} columns as declared"),
            metadata={
                "contract": dg.MetadataValue.md(", ".join(f"`{c}`" for c in contract)),
                "observed": dg.MetadataValue.md(", ".join(f"`{n}` {t}" for n, t in actual)),
            },
        )

    return contract_holds


def derived_sql(catalog: Catalog, key: dg.AssetKey) -> str | None:
    """The SQL that builds a derived table, where fedlake builds it (None for other assets)."""
    home, table = key.path[0], key.path[-1]
    if home == GOVERNED and table == "customer_credit_features":
        loans = next(name for name, spec in catalog.silos.items() if "loans" in spec.tables)
        return credit_features_sql(catalog, loans)
    if home == GOVERNED and table == "aml_account_signals":
        return account_signals_sql(catalog)
    if home in catalog.silos and table == "monthly_spending":
        return MONTHLY_SPENDING_SQL.format(transactions="transactions", accounts="accounts")
    return None


def schema_contract_checks(catalog: Catalog, keys: Sequence[dg.AssetKey]) -> list[dg.AssetChecksDefinition]:
    """A contract check per derived table, and Dagster's type-change check on each."""
    contracts = {key: sql for key in keys if (sql := derived_sql(catalog, key)) is not None}
    checks = [schema_contract_check(key, declared_columns(sql)) for key, sql in contracts.items()]
    return [*checks, *dg.build_column_schema_change_checks(assets=list(contracts))]
