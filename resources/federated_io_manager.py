"""The federated IO manager: an asset's output is a table inside a silo; Dagster keeps only its handle.

Locations derive from the asset key: `[silo, table]`. Handing an output over asks the silo's agent
to materialize the relation inside its silo (atomically) and records where it went, how big it is
and how many bytes crossed any silo's border meanwhile, read from every agent's egress counters.
Loading an input gives a handle, not data.
"""

from __future__ import annotations

import dagster as dg

from fedlake.catalog import Catalog
from fedlake.errors import FedlakeError
from fedlake.relation import Relation, RelationHandle
from fedlake.agent import AgentClient
from resources.silos import SiloResource


def location(key: dg.AssetKey) -> tuple[str, str]:
    if len(key.path) != 2:
        raise FedlakeError(f"asset key {key.to_user_string()} is not [silo, table]")
    return key.path[0], key.path[1]


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
    def __init__(self, catalog: Catalog, silos: dict[str, SiloResource]):
        self._catalog = catalog
        self._silos = silos

    def _agent(self, silo: str) -> AgentClient:
        if silo not in self._silos:
            raise FedlakeError(f"no resource for silo '{silo}' in this deployment (have: {', '.join(self._silos)})")
        return self._silos[silo].agent()

    def handle_output(self, context: dg.OutputContext, obj: Relation) -> None:
        if not isinstance(obj, Relation):
            raise FedlakeError(
                f"{context.asset_key.to_user_string()} returned {type(obj).__name__}; assets on the federated "
                "IO manager return a Relation (SQL over their inputs), never rows"
            )
        silo, table = location(context.asset_key)
        home = obj.home_silo()
        if home != silo:
            raise FedlakeError(f"{context.asset_key.to_user_string()} is keyed to silo {silo} but reads from {home}")
        if table in self._catalog.silo(silo).tables:
            raise FedlakeError(f"{silo}.{table} is a source table declared in silos.yaml; a derived asset may not replace it")

        before = {name: self._agent(name).egress() for name in self._silos}
        made = self._agent(silo).materialize(table, obj.sql)
        after = {name: self._agent(name).egress() for name in self._silos}
        moved_rows = {name: after[name][0] - before[name][0] for name in self._silos}
        moved_bytes = {name: after[name][1] - before[name][1] for name in self._silos}

        columns = tuple((name, type_) for name, type_ in made["columns"])
        context.add_output_metadata(
            {
                "silo": silo,
                "table": table,
                "location": f"{silo}.{table}",
                "dagster/row_count": made["rows"],
                "dagster/column_schema": column_schema(columns),
                "bytes_in_silo": made["bytes"],
                "rows_moved_out": sum(moved_rows.values()),
                "bytes_moved_out": sum(moved_bytes.values()),
                "bytes_moved_out_by_silo": moved_bytes,
                "inputs": [h.qualified_name for h in obj.inputs],
            }
        )

    def load_input(self, context: dg.InputContext) -> RelationHandle:
        silo, table = location(context.asset_key)
        agent = self._agent(silo)
        return RelationHandle(silo=silo, table=table, columns=tuple(agent.schema(table)), rows=agent.row_count(table))


def federated_io_manager(catalog: Catalog) -> dg.IOManagerDefinition:
    """The IO manager needs every silo's resource, and the silos come from the catalog, so its
    required resource keys are the catalog's silo names."""

    def build(init_context: dg.InitResourceContext) -> FederatedIOManager:
        silos = {name: getattr(init_context.resources, name) for name in catalog.silos}
        return FederatedIOManager(catalog, silos)

    return dg.IOManagerDefinition(
        resource_fn=build,
        required_resource_keys=set(catalog.silos),
        description="Materializes relations inside their silo and hands downstream assets a handle.",
    )
