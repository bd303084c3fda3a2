"""PII discovery, one asset check per source table: the silo's agent scans the table in place for
values that look like e-mail addresses, phone numbers, national ids or IBANs in columns not
classified pii.*; only the counts and the column names leave. The governed zone's tables get the
same scan over every text column: nothing there is classified PII, so nothing should look like it
(a pseudonym is a hash, not an address)."""

from collections.abc import Iterable

import dagster as dg

from fedlake.agent.pii import pii_scan
from fedlake.catalog import Catalog, SiloSpec

CHECK_NAME = "no_undeclared_pii"


def silo_pii_checks(spec: SiloSpec) -> dg.AssetChecksDefinition:
    check_specs = [
        dg.AssetCheckSpec(
            CHECK_NAME,
            asset=dg.AssetKey([spec.name, table]),
            description="No value that looks like personal data in a column not classified as PII.",
        )
        for table in spec.tables
    ]

    @dg.multi_asset_check(
        specs=check_specs,
        name=f"{spec.name}_pii_discovery",
        required_resource_keys={spec.name},
        can_subset=True,
    )
    def scan(context: dg.AssetCheckExecutionContext):
        agent = getattr(context.resources, spec.name).agent()
        for check_key in context.selected_asset_check_keys:
            table = check_key.asset_key.path[-1]
            yield _result(check_key.asset_key, agent.pii_scan(table))

    return scan


def _result(asset_key: dg.AssetKey, report: dict) -> dg.AssetCheckResult:
    findings = report["findings"]
    described = "; ".join(
        f"{column}: " + ", ".join(f"{n} {kind}" for kind, n in kinds.items()) for column, kinds in findings.items()
    )
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=CHECK_NAME,
        passed=not findings,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"undeclared PII found: {described}" if findings else "no undeclared PII",
        metadata={"findings": findings, "scanned_columns": report["scanned_columns"]},
    )


def governed_pii_checks(catalog: Catalog, keys: Iterable[dg.AssetKey]) -> dg.AssetChecksDefinition:
    """One scan per governed table, run in the governed zone by Dagster's own connector to it."""
    zone = SiloSpec(name="governed", kind="governed", region=catalog.governed_region, tables={})

    @dg.multi_asset_check(
        specs=[
            dg.AssetCheckSpec(
                CHECK_NAME,
                asset=key,
                blocking=True,
                description="No value that looks like personal data in the governed table: only pseudonyms and aggregates belong here.",
            )
            for key in keys
        ],
        name="governed_pii_discovery",
        required_resource_keys={"governed_zone"},
        can_subset=True,
    )
    def scan(context: dg.AssetCheckExecutionContext):
        connector = context.resources.governed_zone.connector()
        for check_key in context.selected_asset_check_keys:
            yield _result(check_key.asset_key, pii_scan(connector, zone, check_key.asset_key.path[-1]))

    return scan


def pii_checks(catalog: Catalog) -> list[dg.AssetChecksDefinition]:
    return [silo_pii_checks(spec) for spec in catalog.silos.values()]
