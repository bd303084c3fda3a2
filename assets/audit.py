"""The audit ledger as an asset of the governed zone, with the check that its hash chain holds."""

import dagster as dg

from resources.ledger import LedgerResource

AUDIT_LEDGER = dg.AssetKey(["governed", "audit_ledger"])


def audit_ledger_asset() -> dg.AssetsDefinition:
    """The ledger, observed as a source asset of the governed zone (built with the definitions)."""

    @dg.multi_observable_source_asset(
        specs=[
            dg.AssetSpec(
                AUDIT_LEDGER,
                group_name="governed",
                description="Every egress decision, allowed or denied, hash-chained; lives in the governed zone.",
                kinds={"duckdb"},
            )
        ],
        name="audit_ledger",
        required_resource_keys={"ledger"},
    )
    def audit_ledger(context: dg.AssetExecutionContext):
        entries = context.resources.ledger.open().entries()
        last = entries[-1]["entry_hash"] if entries else "empty"
        denied = sum(1 for e in entries if e["decision"] == "denied")
        yield dg.ObserveResult(
            asset_key=AUDIT_LEDGER,
            data_version=dg.DataVersion(last[:16]),
            metadata={"entries": len(entries), "denied": denied, "bytes_out": sum(e["bytes"] for e in entries)},
        )

    return audit_ledger


@dg.asset_check(asset=AUDIT_LEDGER, description="The hash chain verifies from the first entry to the last.")
def hash_chain_intact(ledger: LedgerResource) -> dg.AssetCheckResult:
    result = ledger.open().verify()
    return dg.AssetCheckResult(
        passed=result.ok,
        description=str(result),
        metadata={"entries": result.entries, "first_broken_entry": result.first_broken or 0},
    )
