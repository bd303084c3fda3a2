"""What a prod agent must be given before it serves: checked all at once at start-up, so that an
operator reads every missing item in one line instead of discovering them one failed request at a
time (an agent without FEDLAKE_LEDGER used to write its audit entries to a local file that
`fedlake audit verify` never reads)."""

from __future__ import annotations

import os
from pathlib import Path

from fedlake.catalog import Catalog, EnvRef
from fedlake.errors import FedlakeError
from fedlake.policy.model import Policy
from fedlake.policy.transforms import PSEUDONYM_KEY_ENV
from fedlake.signing import SIGNING_KEY_ENV

LEDGER_ENV = "FEDLAKE_LEDGER"
OPTIONAL_SETTINGS = {"owner_dsn"}  # the data owner's credentials stay with the owner


class AgentNotConfigured(FedlakeError):
    """A prod agent lacks configuration it needs; the message names every missing item."""


def missing_configuration(
    catalog: Catalog, policy: Policy, silo: str, tls_cert: Path | None = None, tls_key: Path | None = None
) -> list[str]:
    """Every setting a prod agent of `silo` lacks, each named with what it is for."""
    missing = []
    if not os.environ.get(LEDGER_ENV):
        missing.append(f"{LEDGER_ENV} (the audit ledger: a PostgreSQL DSN or a file path)")
    if not os.environ.get(PSEUDONYM_KEY_ENV):
        missing.append(f"{PSEUDONYM_KEY_ENV} (the pseudonymization key every silo shares)")
    key = os.environ.get(SIGNING_KEY_ENV)
    if not key:
        missing.append(f"{SIGNING_KEY_ENV} (this agent's Ed25519 ledger signing key, a PEM file)")
    elif not Path(key).is_file():
        missing.append(f"{SIGNING_KEY_ENV}={key} (no such file)")
    for identity, client in sorted(policy.clients.items()):
        if not os.environ.get(client.token_env):
            missing.append(f"{client.token_env} (client {identity}'s bearer token, policies.yaml clients.{identity}.token_env)")
    spec = catalog.silo(silo)
    for setting, value in spec.connection("prod").items():
        if isinstance(value, EnvRef) and setting not in OPTIONAL_SETTINGS and not os.environ.get(value.name):
            missing.append(f"{value.name} (silos.{silo}.connection.prod.{setting})")
    for flag, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if path is None:
            missing.append(f"{flag} (prod agents serve over TLS only)")
        elif not Path(path).is_file():
            missing.append(f"{flag} {path} (no such file)")
    return missing


def require_configuration(
    catalog: Catalog, policy: Policy, silo: str, tls_cert: Path | None = None, tls_key: Path | None = None
) -> None:
    missing = missing_configuration(catalog, policy, silo, tls_cert, tls_key)
    if missing:
        raise AgentNotConfigured(f"agent {silo} will not start in prod: missing {'; '.join(missing)}")
