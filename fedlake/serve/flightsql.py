"""`fedlake serve`: the coordinator as an Arrow Flight SQL server, for ADBC, JDBC and BI tools.

Flight SQL is Flight whose commands are protobuf messages wrapped in google.protobuf.Any
(fedlake.serve.messages). What is served:

- queries: CommandStatementQuery, and prepared statements (the CreatePreparedStatement and
  ClosePreparedStatement actions, then CommandPreparedStatementQuery), which is how the ADBC driver
  executes. GetFlightInfo plans the federated query and runs its fragments; its ticket
  (TicketStatementQuery) streams the result, once, to the identity that asked.
- metadata: CommandGetSqlInfo, CommandGetCatalogs, CommandGetDbSchemas (the silos),
  CommandGetTables (their tables, optionally with columns) and CommandGetTableTypes.

Everything else (updates, bound parameters, transactions, Substrait) is refused by name. Every call
authenticates its bearer token to an identity (fedlake.serve.coordinator). A refusal or an error
reaches the client as one line; an error fedlake did not raise on purpose (an engine's, a bug) is
logged here under an error id and only the id and the error's class leave.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight

from fedlake.agent import EgressDenied, Forbidden, Unauthenticated
from fedlake.errors import FedlakeError
from fedlake.runtime import stop_on_sigterm, tolerate_unaligned_arrow
from fedlake.serve import messages as m
from fedlake.serve.messages import PURPOSE_HEADER
from fedlake.serve import metadata
from fedlake.serve.coordinator import Coordinator, QueryResult, Session
from fedlake.serve.statements import Handles

log = logging.getLogger("fedlake.serve")

RESULT_SECONDS = 300  # a result not fetched within this is dropped
STATEMENT_SECONDS = 3600  # a prepared statement not used within this is closed
RESULTS_PER_IDENTITY = 32
LOOPBACK = ("127.0.0.1", "localhost", "::1")
STATEMENTS_PER_IDENTITY = 256


class Refusal(FedlakeError):
    """A request this server does not serve: the message names the command or option."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# where an error that wraps another quotes that one's Python traceback: nothing from there on leaves
_TRACEBACK = re.compile(r"(\.?\s*Detail: Python exception:|Traceback \(most recent call last\)).*", re.DOTALL)


def one_line(exc: BaseException) -> str:
    return " ".join(_TRACEBACK.sub("", _ANSI.sub("", str(exc))).split())


def flight_error(exc: BaseException) -> flight.FlightError:
    """What the client sees of an error: a refusal's or fedlake's own one line under the matching
    gRPC status; for anything else (an engine's error, a bug) only an error id, its text going to
    this server's log.

    Always a FlightError: for any other exception pyarrow would append the Python traceback to the
    message. Refusals of the request's content (bad SQL, unknown names, unserved commands) are
    FlightServerError, as no FlightError carries INVALID_ARGUMENT."""
    if isinstance(exc, flight.FlightError):
        return exc
    if isinstance(exc, Unauthenticated):
        return flight.FlightUnauthenticatedError(one_line(exc))
    if isinstance(exc, (EgressDenied, Forbidden)):
        return flight.FlightUnauthorizedError(one_line(exc))
    if isinstance(exc, (FedlakeError, ValueError)):
        return flight.FlightServerError(one_line(exc))
    error_id = uuid.uuid4().hex[:16]
    log.error("fedlake serve: request failed [error id %s]", error_id, exc_info=exc)
    return flight.FlightInternalError(f"fedlake serve: the query failed in the coordinator ({type(exc).__name__}) "
                                      f"[error id {error_id}]; the full text is in the coordinator's log")


class _Authenticated(flight.ServerMiddleware):
    def __init__(self, session: Session):
        self.session = session


class _BearerAuth(flight.ServerMiddlewareFactory):
    """Every call carries `authorization: Bearer <token>`; `x-fedlake-purpose` may name the purpose."""

    def __init__(self, coordinator: Coordinator):
        super().__init__()
        self.coordinator = coordinator

    def start_call(self, info, headers):
        def first(name: str) -> str | None:
            values = headers.get(name) or []
            value = values[0] if values else None
            return value.decode() if isinstance(value, bytes) else value

        try:
            return _Authenticated(self.coordinator.authenticate(first("authorization"), first(PURPOSE_HEADER)))
        except Exception as exc:  # noqa: BLE001 - every error leaves as one line
            raise flight_error(exc) from None


class FlightSqlServer(flight.FlightServerBase):
    def __init__(self, coordinator: Coordinator, location: str, tls_cert: Path | None = None, tls_key: Path | None = None):
        certificates = []
        if tls_cert and tls_key:
            certificates = [flight.CertKeyPair(Path(tls_cert).read_bytes(), Path(tls_key).read_bytes())]
        elif tls_cert or tls_key or location.startswith("grpc+tls"):
            raise FedlakeError("fedlake serve: TLS needs both --tls-cert and --tls-key")
        super().__init__(location, tls_certificates=certificates, middleware={"auth": _BearerAuth(coordinator)})
        self.coordinator = coordinator
        self.statements: Handles[str] = Handles("prepared statement", STATEMENT_SECONDS, STATEMENTS_PER_IDENTITY)
        self.results: Handles[QueryResult] = Handles(
            "query result", RESULT_SECONDS, RESULTS_PER_IDENTITY, on_drop=lambda result: result.close()
        )

    @staticmethod
    def _session(context) -> Session:
        return context.get_middleware("auth").session

    @staticmethod
    def _command(raw: bytes):
        try:
            return m.unpack(raw)
        except m.UnknownCommand as exc:
            raise Refusal(f"fedlake serve does not serve {exc.name}: it answers queries (statements and "
                          "prepared statements) and catalog metadata, read only") from None

    # -- GetFlightInfo: run a query, or describe a metadata answer -------------------------------

    def get_flight_info(self, context, descriptor):
        try:
            return self._flight_info(self._session(context), descriptor)
        except Exception as exc:  # noqa: BLE001 - every error leaves as one line
            raise flight_error(exc) from None

    def _flight_info(self, session: Session, descriptor) -> flight.FlightInfo:
        command = self._command(descriptor.command)
        if isinstance(command, m.CommandStatementQuery):
            if command.HasField("transaction_id"):
                raise Refusal("fedlake serve has no transactions: send the query without a transaction id")
            return self._execute(session, command.query, descriptor)
        if isinstance(command, m.CommandPreparedStatementQuery):
            return self._execute(session, self.statements.get(session.identity, command.prepared_statement_handle), descriptor)
        schema = self._metadata_schema(command)
        return flight.FlightInfo(schema, descriptor, [flight.FlightEndpoint(descriptor.command, [])], -1, -1)

    def _execute(self, session: Session, sql: str, descriptor) -> flight.FlightInfo:
        result = self.coordinator.run(session, sql)
        handle = self.results.add(session.identity, result)
        ticket = m.pack(m.TicketStatementQuery(statement_handle=handle))
        return flight.FlightInfo(result.schema, descriptor, [flight.FlightEndpoint(ticket, [])], -1, -1)

    def get_schema(self, context, descriptor):
        try:
            command = self._command(descriptor.command)
            if isinstance(command, (m.CommandStatementQuery, m.CommandPreparedStatementQuery)):
                raise Refusal("fedlake serve answers a query's schema with its result (GetFlightInfo), not before")
            return flight.SchemaResult(self._metadata_schema(command))
        except Exception as exc:  # noqa: BLE001 - every error leaves as one line
            raise flight_error(exc) from None

    @staticmethod
    def _metadata_schema(command) -> pa.Schema:
        if isinstance(command, m.CommandGetSqlInfo):
            return metadata.SQL_INFO_SCHEMA
        if isinstance(command, m.CommandGetCatalogs):
            return metadata.CATALOGS_SCHEMA
        if isinstance(command, m.CommandGetDbSchemas):
            return metadata.DB_SCHEMAS_SCHEMA
        if isinstance(command, m.CommandGetTables):
            return metadata.TABLES_WITH_SCHEMA_SCHEMA if command.include_schema else metadata.TABLES_SCHEMA
        if isinstance(command, m.CommandGetTableTypes):
            return metadata.TABLE_TYPES_SCHEMA
        raise Refusal(f"fedlake serve does not answer {type(command).DESCRIPTOR.full_name} with GetFlightInfo")

    # -- DoGet: a query's result, once, or a metadata answer -------------------------------------

    def do_get(self, context, ticket):
        session = self._session(context)
        try:
            command = self._command(ticket.ticket)
            if isinstance(command, m.TicketStatementQuery):
                result = self.results.take(session.identity, command.statement_handle)
                return flight.GeneratorStream(result.schema, _one_line_errors(result))
            return flight.RecordBatchStream(self._metadata(session, command))
        except Exception as exc:  # noqa: BLE001 - every error leaves as one line
            raise flight_error(exc) from None

    def _metadata(self, session: Session, command) -> pa.Table:
        if isinstance(command, m.CommandGetSqlInfo):
            return metadata.sql_info(command.info)
        if isinstance(command, m.CommandGetCatalogs):
            return metadata.catalogs()
        if isinstance(command, m.CommandGetDbSchemas):
            catalog = command.catalog if command.HasField("catalog") else None
            pattern = command.db_schema_filter_pattern if command.HasField("db_schema_filter_pattern") else None
            return metadata.db_schemas(self.coordinator.silos(), catalog, pattern)
        if isinstance(command, m.CommandGetTables):
            listed = []
            if not (command.HasField("catalog") and command.catalog) and metadata.wants_tables(command.table_types):
                listed = self.coordinator.tables(
                    session,
                    command.db_schema_filter_pattern if command.HasField("db_schema_filter_pattern") else None,
                    command.table_name_filter_pattern if command.HasField("table_name_filter_pattern") else None,
                    with_columns=command.include_schema,
                )
            return metadata.tables(listed, command.include_schema)
        if isinstance(command, m.CommandGetTableTypes):
            return metadata.table_types()
        raise Refusal(f"fedlake serve does not answer {type(command).DESCRIPTOR.full_name} with DoGet")

    # -- actions: prepared statements ------------------------------------------------------------

    def do_action(self, context, action):
        session = self._session(context)
        try:
            if action.type == m.CREATE_PREPARED_STATEMENT:
                request = self._command(action.body.to_pybytes())
                if not isinstance(request, m.ActionCreatePreparedStatementRequest):
                    raise ValueError(f"{m.CREATE_PREPARED_STATEMENT} takes an ActionCreatePreparedStatementRequest")
                if request.HasField("transaction_id"):
                    raise Refusal("fedlake serve has no transactions: prepare the statement without a transaction id")
                handle = self.statements.add(session.identity, request.query)
                answer = m.ActionCreatePreparedStatementResult(prepared_statement_handle=handle)
                return [flight.Result(pa.py_buffer(m.pack(answer)))]
            if action.type == m.CLOSE_PREPARED_STATEMENT:
                request = self._command(action.body.to_pybytes())
                if not isinstance(request, m.ActionClosePreparedStatementRequest):
                    raise ValueError(f"{m.CLOSE_PREPARED_STATEMENT} takes an ActionClosePreparedStatementRequest")
                self.statements.drop(session.identity, request.prepared_statement_handle)
                return []
            raise Refusal(f"fedlake serve has no action '{action.type}' (it has {m.CREATE_PREPARED_STATEMENT}, "
                          f"{m.CLOSE_PREPARED_STATEMENT})")
        except Exception as exc:  # noqa: BLE001 - every error leaves as one line
            raise flight_error(exc) from None

    def list_actions(self, context):
        return [
            (m.CREATE_PREPARED_STATEMENT, "prepare a federated query (Flight SQL)"),
            (m.CLOSE_PREPARED_STATEMENT, "close a prepared statement (Flight SQL)"),
        ]

    def do_put(self, context, descriptor, reader, writer):
        raise flight_error(Refusal("fedlake serve is read only and takes no bound parameters: "
                                   "write literals into the query; tables are made by the IO manager"))

    def list_flights(self, context, criteria):
        raise flight_error(Refusal("fedlake serve lists no flights: ask for tables with GetTables"))

    def do_exchange(self, context, descriptor, reader, writer):
        raise flight_error(Refusal("fedlake serve has no DoExchange"))

    def shutdown(self):
        self.results.clear()
        self.statements.clear()
        super().shutdown()


def _one_line_errors(result: QueryResult) -> Iterator[pa.RecordBatch]:
    """The result's batches; an error raised while they stream leaves as one line too."""
    try:
        yield from result.batches
    except Exception as exc:  # noqa: BLE001 - every error leaves as one line
        raise flight_error(exc) from None
    finally:
        result.close()


def serve(coordinator: Coordinator, host: str, port: int, tls_cert: Path | None, tls_key: Path | None) -> None:
    """Run the Flight SQL server until SIGTERM or SIGINT; prints where it listens once it does."""
    tolerate_unaligned_arrow()
    scheme = "grpc+tls" if tls_cert else "grpc+tcp"
    if scheme == "grpc+tcp" and host not in LOOPBACK:
        coordinator.close()
        raise FedlakeError(f"fedlake serve: bearer tokens would cross the network in clear on {host}: give --tls-cert "
                           f"and --tls-key (without TLS it listens on loopback only: {', '.join(LOOPBACK)})")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = FlightSqlServer(coordinator, f"{scheme}://{host}:{port}", tls_cert, tls_key)
    stop_on_sigterm(server)
    identities = ", ".join(coordinator.federations) or "none"
    print(f"fedlake serve: Flight SQL on {scheme}://{host}:{server.port} (identities: {identities})", flush=True)
    try:
        server.serve()
    finally:
        coordinator.close()
