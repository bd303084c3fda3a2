"""Who the command line asks as: `--client NAME`, else the bearer token in FEDLAKE_TOKEN, else the
coordinator. The agents decide from the token alone; the client named here only chooses which
token the CLI presents (and, where this process can tell whose a token is, what it may ask for)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fedlake.errors import FedlakeError
from fedlake.policy.model import Client, Policy

TOKEN_ENV = "FEDLAKE_TOKEN"  # the caller's bearer token, the same variable a served coordinator reads (fedlake.serve.remote)
DEFAULT_CLIENT = "coordinator"


@dataclass(frozen=True)
class Identity:
    """The bearer token every agent is shown, and the client it belongs to as policies.yaml names
    it; None when this process cannot tell (a token it does not hold), and the agents still can."""

    token: str
    client: Client | None

    def holds(self, role: str) -> bool:
        return self.client is not None and role in self.client.roles


def choose_identity(policy: Policy, client: str | None, deployment: str, home: Path) -> Identity:
    from fedlake.agent import agent_tokens, client_token

    if client is not None:
        if client not in policy.clients:
            raise FedlakeError(f"unknown client '{client}' in --client (clients in {policy.path}: {', '.join(policy.clients) or 'none'})")
        return Identity(client_token(policy, client, deployment, home), policy.clients[client])
    token = os.environ.get(TOKEN_ENV)
    if token:
        holder = agent_tokens(policy, deployment, home).get(token)
        return Identity(token, policy.clients.get(holder) if holder else None)
    if DEFAULT_CLIENT not in policy.clients:
        raise FedlakeError(f"no identity: give --client NAME or set {TOKEN_ENV} ({policy.path} has no client '{DEFAULT_CLIENT}')")
    return Identity(client_token(policy, DEFAULT_CLIENT, deployment, home), policy.clients[DEFAULT_CLIENT])
