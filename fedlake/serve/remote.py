"""`fedlake query` through a served coordinator: when FEDLAKE_COORDINATOR names one
(`grpc+tls://host:port`), the CLI sends its SQL there over Flight SQL instead of building agents.

A small pyarrow Flight client (no ADBC needed at run time): CommandStatementQuery in
GetFlightInfo, then DoGet of its ticket. The caller's token is FEDLAKE_TOKEN; on the local
deployment the CLI's own coordinator token is used when none is set, as the in-process CLI does.
The server's CA is FEDLAKE_COORDINATOR_CA, else FEDLAKE_AGENT_CA.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight

from fedlake.agent import AGENT_CA_ENV
from fedlake.errors import FedlakeError
from fedlake.policy.model import Policy
from fedlake.serve import messages as m

COORDINATOR_ENV = "FEDLAKE_COORDINATOR"
TOKEN_ENV = "FEDLAKE_TOKEN"
COORDINATOR_CA_ENV = "FEDLAKE_COORDINATOR_CA"
# what pyarrow adds around the server's message: "Flight returned <status> error, with message: ..."
_WRAPPED = re.compile(r"^Flight returned [\w ]+ error, with message: ")


class CoordinatorError(FedlakeError):
    """The served coordinator refused the query or failed; its one line, with where it came from."""


def query_coordinator(location: str, sql: str, purpose: str | None, token: str, ca: Path | None = None,
                      timeout: float | None = None) -> pa.Table:
    """Run `sql` at the coordinator at `location` as the identity of `token`."""
    kwargs = {"tls_root_certs": Path(ca).read_bytes()} if ca else {}
    headers = [(b"authorization", f"Bearer {token}".encode())]
    if purpose:
        headers.append((m.PURPOSE_HEADER.encode(), purpose.encode()))
    options = flight.FlightCallOptions(headers=headers, timeout=timeout)
    client = flight.FlightClient(location, **kwargs)
    try:
        descriptor = flight.FlightDescriptor.for_command(m.pack(m.CommandStatementQuery(query=sql)))
        info = client.get_flight_info(descriptor, options)
        tables = [client.do_get(endpoint.ticket, options).read_all() for endpoint in info.endpoints]
        return pa.concat_tables(tables) if tables else info.schema.empty_table()
    except flight.FlightError as exc:
        raise CoordinatorError(f"coordinator {location}: {server_message(exc)}") from None
    finally:
        client.close()


def server_message(exc: flight.FlightError) -> str:
    """The server's own one line, without what the Flight client library wraps around it."""
    message = str(exc).split(". Detail:")[0]
    message = message.split(". gRPC client debug context:")[0]
    return _WRAPPED.sub("", message).strip()


def cli_token(deployment: str, policy: Callable[[], Policy]) -> str:
    token = os.environ.get(TOKEN_ENV)
    if token:
        return token
    if deployment == "local":
        from fedlake.agent import client_token
        from fedlake.silos import data_dir

        return client_token(policy(), "coordinator", "local", data_dir())
    raise CoordinatorError(f"{TOKEN_ENV} is not set: the coordinator at {os.environ.get(COORDINATOR_ENV)} needs your bearer token")


def coordinator_ca() -> Path | None:
    """The CA of the served coordinator's certificate: its own when set, else the agents' CA."""
    ca = os.environ.get(COORDINATOR_CA_ENV) or os.environ.get(AGENT_CA_ENV)
    return Path(ca) if ca else None
