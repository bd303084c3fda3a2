"""PII discovery, one asset check per source table: the silo's agent scans the table in place for
values that look like e-mail addresses, phone numbers, national ids or IBANs in columns not
classified pii.*; only the counts and the column names leave."""

import dagster as dg

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
            report = agent.pii_scan(table)
            findings = report["findings"]
            described = "; ".join(
                f"{column}: " + ", ".join(f"{n} {kind}" for kind, n in kinds.items()) for column, kinds in findings.items()
            )
            yield dg.AssetCheckResult(
                asset_key=check_key.asset_key,
                check_name=CHECK_NAME,
                passed=not findings,
                severity=dg.AssetCheckSeverity.ERROR,
                description=f"undeclared PII found: {described}" if findings else "no undeclared PII",
                metadata={"findings": findings, "scanned_columns": report["scanned_columns"]},
            )

    return scan


def pii_checks(catalog: Catalog) -> list[dg.AssetChecksDefinition]:
    return [silo_pii_checks(spec) for spec in catalog.silos.values()]
