"""Row-count reconciliation: every derived table accounts for exactly the source rows it was built from.

Each check compares one count measured on the derived table with one measured on its sources, both
computed where the data lies: the governed zone's tables are counted in the zone, an in-silo
table through a federated aggregate (only the total leaves the silo), the sources by their agents.
A join that drops or duplicates rows, or a source that changed under a run, shows as a difference.
"""


from collections.abc import Iterable
from dataclasses import dataclass

import dagster as dg

from assets.in_silo import day_bounds
from assets.partitions import daily_partitions
from fedlake.catalog import Catalog
from fedlake.query import Federation
from resources.federated_io_manager import partition_table

CHECK_NAME = "row_count_reconciles_with_sources"
GOVERNED = "governed"


@dataclass(frozen=True)
class Reconciliation:
    """`measure` (SQL returning one row with column `n`) on the derived table must equal the sum of
    the row counts of `sources` ([silo, table] each)."""

    asset: dg.AssetKey
    measure: str
    sources: tuple[tuple[str, str], ...]
    purpose: str
    meaning: str

    def description(self) -> str:
        names = ", ".join(f"{silo}.{table}" for silo, table in self.sources)
        return f"{self.meaning}: {self.measure} equals the rows of {names}, each counted in its silo."


def _source_tables(assets_def: dg.AssetsDefinition, key: dg.AssetKey, table: str) -> tuple[tuple[str, str], ...]:
    """The silo tables named `table` that an asset reads: its inputs decide, not a list kept here."""
    return tuple(sorted((dep.path[0], dep.path[1]) for dep in assets_def.asset_deps[key] if dep.path[-1] == table))


def reconciliations(governed: Iterable[dg.AssetsDefinition], in_silo: Iterable[dg.AssetsDefinition]) -> list[Reconciliation]:
    found = []
    for assets_def in governed:
        for key in assets_def.keys:
            table = key.path[-1]
            if table == "customer_credit_features":
                found.append(Reconciliation(
                    key, f"SELECT count(*) AS n FROM {table}", _source_tables(assets_def, key, "loans"),
                    "credit_scoring", "one row per loan",
                ))
            elif table == "aml_account_signals":
                found.append(Reconciliation(
                    key, f"SELECT sum(transactions) AS n FROM {table}", _source_tables(assets_def, key, "transactions"),
                    "aml", "every transaction of every silo counted once",
                ))
    for assets_def in in_silo:
        for key in assets_def.keys:
            silo, table = key.path
            if table == "monthly_spending":
                found.append(Reconciliation(
                    key, f"SELECT sum(transactions) AS n FROM {silo}.{table}", ((silo, "transactions"),),
                    "credit_scoring", "every transaction of the silo in one month's totals",
                ))
    return found


def reconciliation_check(catalog: Catalog, rec: Reconciliation) -> dg.AssetChecksDefinition:
    in_zone = rec.asset.path[0] == GOVERNED
    silos = {silo for silo, _ in rec.sources} | ({rec.asset.path[0]} if not in_zone else set())

    @dg.asset_check(
        asset=rec.asset,
        name=CHECK_NAME,
        description=rec.description(),
        blocking=in_zone,
        required_resource_keys={*silos, "governed_zone"},
    )
    def reconcile(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        agents = {silo: getattr(context.resources, silo).agent() for silo in silos}
        if in_zone:
            measured = context.resources.governed_zone.connector().execute(rec.measure).read_all()
        else:
            federation = Federation(catalog, agents)
            measured = federation.stream(federation.plan(rec.measure, rec.purpose)).read_all()
        value = measured.column("n")[0].as_py()
        derived = int(value or 0)
        by_source = {f"{silo}.{table}": agents[silo].row_count(table) for silo, table in rec.sources}
        expected = sum(by_source.values())
        where = rec.asset.to_user_string()
        return dg.AssetCheckResult(
            passed=derived == expected,
            severity=dg.AssetCheckSeverity.ERROR,
            description=(
                f"{where}: {derived:,} reconciles with {expected:,} source rows ({rec.meaning})"
                if derived == expected
                else f"{where}: {derived:,} where the sources have {expected:,} rows ({rec.meaning}): "
                f"{derived - expected:+,}"
            ),
            metadata={
                "derived": derived,
                "source_rows": expected,
                "difference": derived - expected,
                **{f"source_rows/{name}": rows for name, rows in by_source.items()},
            },
        )

    return reconcile


def daily_reconciliation_check(catalog: Catalog, key: dg.AssetKey) -> dg.AssetChecksDefinition:
    """Per day: the day's totals count exactly the silo's transactions of that day (both counted in the silo)."""
    silo, table = key.path

    @dg.asset_check(
        asset=key,
        name=CHECK_NAME,
        partitions_def=daily_partitions,
        description=f"Each day of {silo}.{table} counts exactly {silo}.transactions of that day, both counted in the silo.",
        required_resource_keys={silo},
    )
    def reconcile_day(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        start, end = day_bounds(context.partition_time_window)
        federation = Federation(catalog, {silo: getattr(context.resources, silo).agent()})

        def count(sql: str) -> int:
            return int(federation.stream(federation.plan(sql, "aml")).read_all().column("n")[0].as_py() or 0)

        day_table = partition_table(table, context.partition_key)
        derived = count(f"SELECT sum(transactions) AS n FROM {silo}.{day_table}")
        expected = count(
            f"SELECT count(*) AS n FROM {silo}.transactions WHERE ts >= TIMESTAMP '{start}' AND ts < TIMESTAMP '{end}'"
        )
        return dg.AssetCheckResult(
            passed=derived == expected,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"{silo}.{day_table}: {derived:,} transactions counted, {expected:,} in {silo}.transactions that day",
            metadata={"derived": derived, "source_rows": expected, "difference": derived - expected},
        )

    return reconcile_day


def reconciliation_checks(
    catalog: Catalog,
    governed: Iterable[dg.AssetsDefinition],
    in_silo: Iterable[dg.AssetsDefinition],
    daily: Iterable[dg.AssetsDefinition] = (),
) -> list[dg.AssetChecksDefinition]:
    checks = [reconciliation_check(catalog, rec) for rec in reconciliations(governed, in_silo)]
    return [*checks, *(daily_reconciliation_check(catalog, key) for assets_def in daily for key in assets_def.keys)]
