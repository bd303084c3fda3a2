"""Source assets: every table of every silo, observed in place through the silo's agent.

Observation asks the agent for the table's schema and statistics (row count, bytes, per-column
distinct count, null fraction, and min/max only where the policy lets those values leave), computed
inside the silo; no row is read out.
"""

import hashlib
import json
from typing import Any

import dagster as dg

from fedlake.catalog import Catalog, SiloSpec
from fedlake.errors import FedlakeError
from resources.federated_io_manager import column_schema

OBSERVATION_PURPOSE = "analytics"


def _stats_markdown(stats: dict[str, Any]) -> str:
    lines = ["| column | type | distinct | null fraction | min | max |", "|---|---|---|---|---|---|"]
    for c in stats["columns"]:
        lo = c["min"] if c["min"] is not None else "(withheld by policy)"
        hi = c["max"] if c["max"] is not None else "(withheld by policy)"
        if c.get("masked") in ("deny", "aggregate"):
            shown = "denied" if c["masked"] == "deny" else "aggregate only"
            lines.append(f"| {c['name']} | {c['type']} | ({shown}) | ({shown}) | ({shown}) | ({shown}) |")
            continue
        lines.append(f"| {c['name']} | {c['type']} | {c['distinct']} | {c['null_fraction']:.3f} | {lo} | {hi} |")
    return "\n".join(lines)


def _classifications_markdown(columns: dict[str, str]) -> dg.MarkdownMetadataValue:
    rows = "\n".join(f"| {name} | {classification} |" for name, classification in columns.items())
    return dg.MetadataValue.md("| column | classification |\n|---|---|\n" + rows)


def _observe_table(spec: SiloSpec, table: str, stats: dict[str, Any]) -> dg.ObserveResult:
    declared = spec.tables[table].columns
    present = [c["name"] for c in stats["columns"]]
    undeclared = [c for c in present if c not in declared]
    missing = [c for c in declared if c not in present]
    if undeclared or missing:
        raise FedlakeError(
            f"{spec.source_file}: silos.{spec.name}.tables.{table}: the silo's table and its declaration differ "
            f"(in the silo but not classified: {undeclared or 'none'}; declared but absent: {missing or 'none'})"
        )
    fingerprint = hashlib.sha256(
        json.dumps([stats["rows"], [(c["name"], c["distinct"], c["null_fraction"]) for c in stats["columns"]]]).encode()
    ).hexdigest()[:16]
    return dg.ObserveResult(
        asset_key=[spec.name, table],
        data_version=dg.DataVersion(fingerprint),
        metadata={
            "dagster/row_count": stats["rows"],
            "dagster/column_schema": column_schema(tuple((c["name"], c["type"]) for c in stats["columns"]), declared),
            **({"bytes_in_silo": stats["bytes"]} if stats.get("bytes") is not None else {}),
            "statistics": dg.MetadataValue.md(_stats_markdown(stats)),
        },
    )


def silo_source_assets(spec: SiloSpec, governed_region: str) -> dg.AssetsDefinition:
    specs = [
        dg.AssetSpec(
            key=[spec.name, table],
            description=f"{table} in silo {spec.name} ({spec.kind}, region {spec.region}); observed in place.",
            group_name=spec.name,
            kinds={spec.kind},
            tags={"silo": spec.name, "region": spec.region},
            # the column schema, with observed types, comes from each observation; the definition
            # carries what silos.yaml declares: every column's classification
            metadata={"classifications": _classifications_markdown(t.columns)},
        )
        for table, t in spec.tables.items()
    ]

    @dg.multi_observable_source_asset(
        specs=specs,
        name=f"{spec.name}_sources",
        description=f"Observes every table of silo {spec.name} in place, through its agent.",
        required_resource_keys={spec.name},
        can_subset=True,
    )
    def observe(context: dg.AssetExecutionContext):
        agent = getattr(context.resources, spec.name).agent()
        present = set(agent.list_tables())
        for key in context.selected_asset_keys:
            table = key.path[-1]
            if table not in present:
                raise FedlakeError(
                    f"{spec.source_file}: silos.{spec.name}.tables.{table}: declared, but silo {spec.name} has no "
                    f"such table (has: {', '.join(sorted(present)) or 'none'}). Seed it with `fedlake seed` "
                    "or fix silos.yaml."
                )
            yield _observe_table(spec, table, agent.statistics(table, OBSERVATION_PURPOSE, governed_region))

    return observe


def source_assets(catalog: Catalog) -> list[dg.AssetsDefinition]:
    return [silo_source_assets(spec, catalog.governed_region) for spec in catalog.silos.values()]
