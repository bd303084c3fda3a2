"""What assets pass each other: relations (SQL to run in a silo) and handles (where a table lives).

Dagster never holds a relation's rows: an asset returns a Relation, the federated IO manager turns it
into a table inside a silo, and downstream assets receive a RelationHandle naming that table.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedlake.errors import FedlakeError


@dataclass(frozen=True)
class RelationHandle:
    silo: str
    table: str
    columns: tuple[tuple[str, str], ...]  # (name, Arrow type)
    rows: int
    version: int | None = None  # the Delta version loaded, where the table has one: what a model trained on it names

    @property
    def ref(self) -> str:
        """The table as SQL names it inside its own silo."""
        return '"' + self.table.replace('"', '""') + '"'

    @property
    def qualified_name(self) -> str:
        return f"{self.silo}.{self.table}"


@dataclass(frozen=True)
class Relation:
    """SQL (DuckDB dialect) over the tables of its inputs, to be materialized where they live, for
    a purpose: the silo computes it over the masks of that purpose, so that what it makes holds only
    what that purpose may see."""

    sql: str
    inputs: tuple[RelationHandle, ...]
    purpose: str

    def home_silo(self) -> str:
        """The one silo all inputs live in; a relation over several silos is not an in-silo relation."""
        silos = sorted({h.silo for h in self.inputs})
        if len(silos) != 1:
            names = ", ".join(h.qualified_name for h in self.inputs) or "none"
            raise FedlakeError(
                f"relation reads from {len(silos)} silos ({names}); an in-silo relation reads from exactly one. "
                "Cross-silo relations belong in the governed zone and go through the federated planner."
            )
        return silos[0]


@dataclass(frozen=True)
class FederatedRelation:
    """SQL over `silo.table` names (and governed tables), declared for a purpose: the federated
    planner runs it through the silos' agents and its result lives in the governed zone."""

    sql: str
    purpose: str
    inputs: tuple[RelationHandle, ...]
