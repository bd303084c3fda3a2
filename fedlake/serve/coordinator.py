"""The long-lived coordinator behind `fedlake serve`: one Federation per identity, built once at
start, that runs each client's SQL with that client's own identity.

A client's bearer token maps to an identity of policies.yaml exactly as at the agents
(`agent_tokens`). The coordinator then calls the agents *as that identity* (in-process agents are
built once and shared; over Flight, one client per silo per identity), so every agent checks the
identity's purposes, region and roles itself and ledgers the request under its name. An identity
without the `coordinate` role gets what its role allows: residuals in the governed zone and no
semi-join keys sent into silos (both are coordinator operations at the agents).

The purpose comes from the `x-fedlake-purpose` header, else the identity's first purpose; results
go to the governed zone's region, so an identity whose results go elsewhere is refused here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from fedlake.agent import (
    AGENT_CA_ENV,
    AgentClient,
    FlightAgentClient,
    Forbidden,
    InProcessAgentClient,
    SiloAgent,
    Unauthenticated,
    agent_tokens,
    build_agent,
    ledger_for,
)
from fedlake.catalog import Catalog, EnvRef
from fedlake.errors import FedlakeError
from fedlake.policy.model import Policy
from fedlake.query import GOVERNED, Federation, render
from fedlake.serve.metadata import TableListing, like
from fedlake.serve.witnessing import WITNESS_CHAIN, Witnessing

_EXPLAIN = re.compile(r"\s*EXPLAIN(\s+ANALYZE)?\s+", re.IGNORECASE)


@dataclass(frozen=True)
class Session:
    """Who is asking, from their token, and the purpose they declared (or their first)."""

    identity: str
    purpose: str


@dataclass
class QueryResult:
    """A query's result as it streams: its schema now, its batches as they are read."""

    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]
    close: Callable[[], None] = lambda: None  # releases the result if nobody reads it


class Coordinator:
    """Built once when the server starts; serves concurrent queries (a Federation keeps no per-query state)."""

    def __init__(self, catalog: Catalog, policy: Policy, deployment: str, home: Path):
        self.catalog = catalog
        self.policy = policy
        self.tokens = agent_tokens(policy, deployment, home)
        self.witness = ledger_for(home, WITNESS_CHAIN)
        ca = os.environ.get(AGENT_CA_ENV)
        local: dict[str, SiloAgent] = {}
        for name, spec in catalog.silos.items():
            if not spec.agents.get(deployment):
                local[name] = build_agent(catalog, policy, name, deployment, home)
        self._clients: list[AgentClient] = []
        self.federations: dict[str, Federation] = {}
        for token, identity in sorted(self.tokens.items(), key=lambda item: item[1]):
            client = policy.clients[identity]
            if identity in self.federations or "query" not in client.roles:
                continue
            clients: dict[str, AgentClient] = {}
            for name in catalog.silos:
                if name in local:
                    clients[name] = InProcessAgentClient(local[name], token)
                else:
                    clients[name] = FlightAgentClient(name, self._location(name, deployment), token, ca)
            self._clients += clients.values()
            coordinates = "coordinate" in client.roles
            self.federations[identity] = Federation(
                catalog, clients, site="auto" if coordinates else GOVERNED, semijoins=coordinates, witness=self.witness
            )
        self._local = list(local.values())
        self.witnessing = Witnessing()

    def _location(self, silo: str, deployment: str) -> str:
        location = self.catalog.silo(silo).agents[deployment]["location"]
        if isinstance(location, EnvRef):
            return location.resolve(f"{self.catalog.path} (silos.{silo}.agent.{deployment})")
        return location

    # -- who is asking ---------------------------------------------------------------------------

    def authenticate(self, authorization: str | None, purpose: str | None) -> Session:
        """`Bearer <token>` -> the identity it belongs to, and the purpose it may declare."""
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthenticated("fedlake serve: no bearer token (send the header 'authorization: Bearer <token>')")
        identity = self.tokens.get(authorization[len("Bearer "):].strip())
        if identity is None:
            raise Unauthenticated("fedlake serve: invalid bearer token")
        client = self.policy.clients[identity]
        where = f"{self.policy.path}: clients.{identity}"
        if identity not in self.federations:
            raise Forbidden(f"fedlake serve: client '{identity}' may not query: it lacks the role 'query' ({where}.roles)")
        if client.region != self.catalog.governed_region:
            raise Forbidden(f"fedlake serve: client '{identity}' receives its results in {client.region}, but this "
                            f"coordinator delivers to the governed zone's region {self.catalog.governed_region} ({where}.region)")
        if not client.purposes:
            raise Forbidden(f"fedlake serve: client '{identity}' may declare no purpose ({where}.purposes)")
        purpose = purpose or client.purposes[0]
        if purpose not in client.purposes:
            raise Forbidden(f"fedlake serve: client '{identity}' may not declare purpose '{purpose}' "
                            f"(may declare: {', '.join(client.purposes)}; {where}.purposes)")
        return Session(identity, purpose)

    # -- queries ---------------------------------------------------------------------------------

    def run(self, session: Session, sql: str) -> QueryResult:
        """Plan and start a federated query; `EXPLAIN [ANALYZE] <query>` answers the plan, one line a row."""
        federation = self.federations[session.identity]
        explain = _EXPLAIN.match(sql)
        if explain:
            return self._explain(federation, session, sql[explain.end():], analyze=bool(explain.group(1)))
        plan = federation.plan(sql, session.purpose, with_estimates=False)
        reader = federation.stream(plan)
        ended = []

        def end() -> None:
            """Witness once, whether the result was read to its end, cut short or never fetched."""
            if not ended:
                ended.append(True)
                reader.close()
                self.witnessing.after(federation, plan)

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                yield from reader
            finally:
                end()

        return QueryResult(reader.schema, batches(), end)

    def _explain(self, federation: Federation, session: Session, sql: str, analyze: bool) -> QueryResult:
        plan = federation.plan(sql, session.purpose, with_estimates=True)
        if analyze:
            table = federation.stream(plan).read_all()
            plan.result_rows, plan.result_bytes = table.num_rows, table.nbytes
            self.witnessing.after(federation, plan)
        lines = pa.table({"plan": render(plan, self.catalog, analyze=analyze).splitlines()})
        return QueryResult(lines.schema, iter(lines.to_batches()))

    # -- what a client may name ------------------------------------------------------------------

    def silos(self) -> list[str]:
        return list(self.catalog.silos)

    def tables(self, session: Session, silo_pattern: str | None, table_pattern: str | None,
               with_columns: bool) -> list[TableListing]:
        """The tables of every silo matching the patterns, as the identity's agents list them."""
        clients = self.federations[session.identity].clients
        silos, tables = like(silo_pattern), like(table_pattern)
        listed = []
        for silo in self.catalog.silos:
            if silos is not None and not silos.match(silo):
                continue
            client, spec = clients[silo], self.catalog.silo(silo)
            for table in client.list_tables():
                if tables is not None and not tables.match(table):
                    continue
                if not with_columns:
                    listed.append(TableListing(silo, table))
                    continue
                columns = tuple((name, _arrow_type(kind)) for name, kind in client.schema(table))
                declared = spec.tables[table].columns if table in spec.tables else {}
                listed.append(TableListing(silo, table, columns, tuple(declared.items())))
        return listed

    def close(self) -> None:
        self.witnessing.close()
        for client in self._clients:
            if isinstance(client, FlightAgentClient):
                client.close()
        for agent in self._local:
            agent.connector.close()


_ZONED = re.compile(r"timestamp\[(s|ms|us|ns), tz=(.+)\]")
_DECIMAL = re.compile(r"decimal(128|256)\((\d+), (-?\d+)\)")


def _arrow_type(name: str) -> pa.DataType:
    """An Arrow type from the name an agent reports it by (`str(type)`)."""
    if zoned := _ZONED.fullmatch(name):
        return pa.timestamp(zoned.group(1), tz=zoned.group(2))
    if decimal := _DECIMAL.fullmatch(name):
        make = pa.decimal128 if decimal.group(1) == "128" else pa.decimal256
        return make(int(decimal.group(2)), int(decimal.group(3)))
    try:
        return pa.type_for_alias(name)
    except ValueError:
        raise FedlakeError(f"fedlake serve: an agent reports a column type '{name}' that has no Arrow name") from None
