"""The federated IO manager: an asset's output is a table; Dagster keeps only its handle.

Locations derive from the asset key: `[silo, table]`, or `[governed, table]` for the governed
zone. A `Relation` is materialized by its silo's agent inside that silo (atomically); a
`FederatedRelation` is run by the federated planner through every silo's agent and gate, and its
result streamed into the governed zone (atomically). Either way the metadata records where the
table is, how big, and how many bytes crossed each silo's border meanwhile, read from every
agent's egress counters; a federated one also records the plan and the audit entries it wrote.
In a lake (and the local governed zone) a materialization is one Delta commit, and its version is
recorded as `delta_version`. Loading an input gives a handle, not data; a handle on the governed
zone names the Delta version it was taken at, so a model trained on it reads exactly that version.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from fedlake.agent import AgentClient
from fedlake.catalog import Catalog
from fedlake.errors import FedlakeError
from fedlake.query import Federation, render
from fedlake.relation import FederatedRelation, Relation, RelationHandle
from fedlake.runtime import settle_heap
from fedlake.silos.delta import delta_version
from resources.governed_zone import GOVERNED, GovernedZoneResource
from resources.ledger import LedgerResource
from resources.materialization_metadata import audit_list, bytes_out_by_silo, plan_text, policy_summary
from resources.silos import SiloResource


def location(key: dg.AssetKey) -> tuple[str, str]:
    if len(key.path) != 2:
        raise FedlakeError(f"asset key {key.to_user_string()} is not [silo, table]")
    return key.path[0], key.path[1]


def partition_table(table: str, partition_key: str) -> str:
    """A partition's own table inside its silo: `daily_transactions` on 2025-03-01 is `daily_transactions__20250301`."""
    return f"{table}__{''.join(ch for ch in partition_key if ch.isalnum())}"


def column_schema(columns: tuple[tuple[str, str], ...], classifications: dict[str, str] | None = None) -> dg.TableSchema:
    classifications = classifications or {}
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=name,
                type=type_,
                description=classifications.get(name),
                tags={"classification": classifications[name]} if name in classifications else {},
            )
            for name, type_ in columns
        ]
    )


class FederatedIOManager(dg.IOManager):
    def __init__(self, catalog: Catalog, silos: dict[str, SiloResource], governed: GovernedZoneResource, ledger: LedgerResource):
        settle_heap()  # a step has loaded Dagster and the definitions: keep them out of the collector's way
        self._catalog = catalog
        self._silos = silos
        self._governed = governed
        self._ledger = ledger

    def _agent(self, silo: str) -> AgentClient:
        if silo not in self._silos:
            raise FedlakeError(f"no resource for silo '{silo}' in this deployment (have: {', '.join(self._silos)})")
        return self._silos[silo].agent()

    def _egress(self) -> dict[str, tuple[int, int]]:
        return {name: self._agent(name).egress() for name in self._silos}

    def handle_output(self, context: dg.OutputContext, obj: Relation | FederatedRelation) -> None:
        silo, table = location(context.asset_key)
        if context.has_asset_partitions:
            table = partition_table(table, context.asset_partition_key)
        before = self._egress()
        if isinstance(obj, Relation):
            metadata = self._in_silo(context, silo, table, obj)
        elif isinstance(obj, FederatedRelation):
            metadata = self._governed_zone(silo, table, obj)
        else:
            raise FedlakeError(
                f"{context.asset_key.to_user_string()} returned {type(obj).__name__}; assets on the federated "
                "IO manager return a Relation or a FederatedRelation (SQL over their inputs), never rows"
            )
        after = self._egress()
        moved_bytes = {name: after[name][1] - before[name][1] for name in self._silos}
        metadata.update(
            {
                "location": f"{silo}.{table}",
                "rows_moved_out": sum(after[name][0] - before[name][0] for name in self._silos),
                "bytes_moved_out": sum(moved_bytes.values()),
                **bytes_out_by_silo(moved_bytes),
            }
        )
        context.add_output_metadata(metadata)

    def _in_silo(self, context: dg.OutputContext, silo: str, table: str, obj: Relation) -> dict[str, Any]:
        home = obj.home_silo()
        if home != silo:
            raise FedlakeError(f"{context.asset_key.to_user_string()} is keyed to silo {silo} but reads from {home}")
        if table in self._catalog.silo(silo).tables:
            raise FedlakeError(f"{silo}.{table} is a source table declared in silos.yaml; a derived asset may not replace it")
        made = self._agent(silo).materialize(table, obj.sql, obj.purpose)
        return {
            "silo": silo,
            "table": table,
            "dagster/row_count": made["rows"],
            "dagster/column_schema": column_schema(tuple((n, t) for n, t in made["columns"])),
            "bytes_in_silo": made["bytes"],
            "inputs": [h.qualified_name for h in obj.inputs],
            **({"delta_version": made["version"]} if made.get("version") is not None else {}),
        }

    def _governed_zone(self, zone: str, table: str, obj: FederatedRelation) -> dict[str, Any]:
        if zone != GOVERNED:
            raise FedlakeError(f"a FederatedRelation lives in the governed zone: key it [{GOVERNED}, {table}], not [{zone}, {table}]")
        ledger = self._ledger.open()
        before = ledger.last_seq()
        federation = Federation(self._catalog, {name: self._agent(name) for name in self._silos}, witness=ledger)
        plan = federation.plan(obj.sql, obj.purpose)
        denied = [r for r in plan.runs if r.denied]
        if denied:
            raise FedlakeError(
                f"the planner found no compliant plan for {GOVERNED}.{table} ({obj.purpose}):\n" + render(plan, self._catalog)
            )
        reader = federation.stream(plan)
        connector = self._governed.connector()
        rows = connector.load(table, reader.schema, reader)
        version = delta_version(connector, table)
        entries = ledger.entries(after=before)
        federation.witness_heads(plan, by="dagster")
        return {
            "silo": GOVERNED,
            "table": table,
            "dagster/row_count": rows,
            "dagster/column_schema": column_schema(tuple((f.name, str(f.type)) for f in reader.schema)),
            "bytes_in_zone": connector.statistics(table).bytes,
            "purpose": obj.purpose,
            "residual_site": f"silo {plan.site}" if plan.site else "governed zone",
            "policy_summary": policy_summary(plan),
            "plan": dg.MetadataValue.md("```\n" + plan_text(plan, self._catalog) + "\n```"),
            "audit_entries": audit_list(entries),
            "inputs": [h.qualified_name for h in obj.inputs],
            **({"delta_version": version} if version is not None else {}),
        }

    def load_input(self, context: dg.InputContext) -> RelationHandle:
        silo, table = location(context.asset_key)
        if silo == GOVERNED:
            zone = self._governed.connector()
            version = delta_version(zone, table)
            columns = tuple((f.name, str(f.type)) for f in zone.schema(table))
            return RelationHandle(silo=silo, table=table, columns=columns, rows=zone.row_count(table), version=version)
        agent = self._agent(silo)
        return RelationHandle(silo=silo, table=table, columns=tuple(agent.schema(table)), rows=agent.row_count(table))


def federated_io_manager(catalog: Catalog) -> dg.IOManagerDefinition:
    """The IO manager needs every silo's resource, and the silos come from the catalog, so its
    required resource keys are the catalog's silo names (with the governed zone and the ledger)."""

    def build(init_context: dg.InitResourceContext) -> FederatedIOManager:
        silos = {name: getattr(init_context.resources, name) for name in catalog.silos}
        return FederatedIOManager(catalog, silos, init_context.resources.governed_zone, init_context.resources.ledger)

    return dg.IOManagerDefinition(
        resource_fn=build,
        required_resource_keys={*catalog.silos, "governed_zone", "ledger"},
        description="Materializes relations inside their silo, federated relations in the governed zone; hands out handles.",
    )
