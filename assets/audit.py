"""The audit ledger as an asset of the governed zone, with the check that its chains hold.

Each observation records every writer's chain head in Dagster's own storage and witnesses them in the
ledger (chain "dagster"), so that a chain cut short or rewritten after it was seen no longer matches
what was seen, inside the ledger or outside it.
"""

import dagster as dg

from fedlake.audit import fragment_hash
from fedlake.signing import public_keys
from resources.ledger import LedgerResource

AUDIT_LEDGER = dg.AssetKey(["governed", "audit_ledger"])
WITNESS = "dagster"


def audit_ledger_asset() -> dg.AssetsDefinition:
    """The ledger, observed as a source asset of the governed zone (built with the definitions)."""

    @dg.multi_observable_source_asset(
        specs=[
            dg.AssetSpec(
                AUDIT_LEDGER,
                group_name="governed",
                description="Every request, allowed, refused or failed: one signed hash chain per writer; lives in the governed zone.",
                kinds={"duckdb"},
            )
        ],
        name="audit_ledger",
        required_resource_keys={"ledger"},
    )
    def audit_ledger(context: dg.AssetExecutionContext):
        ledger = context.resources.ledger.open()
        entries = ledger.entries()
        heads = {chain: head for chain, head in ledger.heads().items() if chain != WITNESS}
        if heads:
            ledger.witness(WITNESS, heads)
        version = fragment_hash("|".join(f"{chain}:{seq}:{digest}" for chain, (seq, digest) in sorted(heads.items())))
        denied = sum(1 for e in entries if e["decision"] == "denied")
        yield dg.ObserveResult(
            asset_key=AUDIT_LEDGER,
            data_version=dg.DataVersion(version[:16] if heads else "empty"),
            metadata={
                "entries": len(entries),
                "denied": denied,
                "bytes_out": sum(e["bytes"] for e in entries),
                "heads": dg.MetadataValue.json({chain: {"seq": seq, "hash": digest} for chain, (seq, digest) in heads.items()}),
            },
        )

    return audit_ledger


def _last_observed_heads(instance: dg.DagsterInstance) -> dict[str, tuple[int, str]]:
    """The heads the latest observation saw, as Dagster stored them (outside the ledger)."""
    records = instance.fetch_observations(AUDIT_LEDGER, limit=1).records
    observation = records[0].asset_observation if records else None
    heads = observation.metadata.get("heads") if observation else None
    if heads is None or not isinstance(heads.value, dict):
        return {}
    return {chain: (int(head["seq"]), head["hash"]) for chain, head in heads.value.items()}


@dg.asset_check(asset=AUDIT_LEDGER, description="Every chain verifies: numbering, links, hashes, signatures and witnessed heads.")
def hash_chain_intact(context: dg.AssetCheckExecutionContext, ledger: LedgerResource) -> dg.AssetCheckResult:
    outside = _last_observed_heads(context.instance)
    result = ledger.open().verify(public_keys(None), witnessed={f"{WITNESS} observation": outside} if outside else None)
    return dg.AssetCheckResult(
        passed=result.ok,
        description=str(result),
        metadata={
            "entries": result.entries,
            "chains": result.chains,
            "signatures": result.signatures,
            "witnessed_heads": result.witnessed,
            "first_broken_entry": result.first_broken or 0,
            "broken_chain": result.chain or "",
        },
    )
