"""Silo agents: the one way into a silo, with the egress gate and the audit ledger in front."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from fedlake.agent.agent import Caller, Forbidden, SiloAgent, Unauthenticated
from fedlake.agent.client import AgentClient, FlightAgentClient, InProcessAgentClient
from fedlake.agent.gate import EgressDenied, EgressPlan
from fedlake.agent.plugin import AgentPlugin, PluginContext
from fedlake.audit import Ledger, open_ledger
from fedlake.catalog import Catalog
from fedlake.policy.model import Policy
from fedlake.policy.transforms import local_secret, pseudonym_key
from fedlake.signing import signing_key
from fedlake.silos import Connector, open_silo

LEDGER_ENV = "FEDLAKE_LEDGER"
AGENT_CA_ENV = "FEDLAKE_AGENT_CA"  # the CA of the agents' certificates: the coordinator's and the peers' trust

__all__ = [
    "AgentClient",
    "AgentPlugin",
    "Caller",
    "EgressDenied",
    "EgressPlan",
    "FlightAgentClient",
    "Forbidden",
    "InProcessAgentClient",
    "PluginContext",
    "SiloAgent",
    "Unauthenticated",
    "agent_tokens",
    "build_agent",
    "client_token",
    "ledger_for",
    "local_agent_client",
]


def ledger_for(home: Path, signer: str | None = None) -> Ledger:
    """The ledger: FEDLAKE_LEDGER (a PostgreSQL DSN or a DuckDB path), else the local governed zone's
    DuckDB file. `signer` names the chain whose key signs what this ledger appends (an agent's silo)."""
    key = signing_key(home, signer) if signer else None
    return open_ledger(os.environ.get(LEDGER_ENV) or str(home / "governed" / "audit.duckdb"), signer=key)


def client_token(policy: Policy, identity: str, deployment: str, home: Path) -> str:
    """A client's bearer token: from its environment variable; the local deployment makes one."""
    client = policy.clients[identity]
    token = os.environ.get(client.token_env)
    if token:
        return token
    if deployment == "local":
        return local_secret(home, f"token.{identity}")
    raise Unauthenticated(f"{client.token_env} is not set: client '{identity}' has no token")


def agent_tokens(policy: Policy, deployment: str, home: Path) -> dict[str, str]:
    tokens = policy.tokens()
    if deployment == "local":
        for identity in policy.clients:
            tokens.setdefault(client_token(policy, identity, deployment, home), identity)
    return tokens


def build_agent(
    catalog: Catalog,
    policy: Policy,
    silo: str,
    deployment: str,
    home: Path,
    connector: Connector | None = None,
    ledger: Ledger | None = None,
    plugins: Sequence[AgentPlugin] = (),
) -> SiloAgent:
    """The agent of one silo, as it runs next to that silo; the connector defaults to the one the
    catalog's connection settings open for the deployment. It serves queries and the silo's own
    actions, and whatever `plugins` register (see fedlake.plugins for a deployment's choice)."""
    spec = catalog.silo(silo)
    agent = SiloAgent(
        spec,
        connector or open_silo(spec, deployment, home),
        policy,
        ledger or ledger_for(home, silo),
        pseudonym_key(home if deployment == "local" else None),
        agent_tokens(policy, deployment, home),
        peer_ca=Path(os.environ[AGENT_CA_ENV]).read_bytes() if os.environ.get(AGENT_CA_ENV) else None,
    )
    context = PluginContext(catalog, deployment, home)
    for plugin in plugins:
        plugin(agent, context)
    return agent


def local_agent_client(
    catalog: Catalog,
    policy: Policy,
    silo: str,
    home: Path,
    identity: str = "coordinator",
    plugins: Sequence[AgentPlugin] = (),
) -> InProcessAgentClient:
    """An in-process agent of the local deployment, with the client `identity`'s token."""
    agent = build_agent(catalog, policy, silo, "local", home, plugins=plugins)
    return InProcessAgentClient(agent, client_token(policy, identity, "local", home))
