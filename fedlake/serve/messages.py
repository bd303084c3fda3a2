"""The Flight SQL messages fedlake serves, declared from the field numbers of Apache Arrow's
`format/FlightSql.proto` (package `arrow.flight.protocol.sql`).

No installed package ships FlightSql_pb2 (pyarrow implements Flight SQL only in C++, the ADBC
driver in Go), and generating one needs a protoc that is not pinned. So the descriptors are built
here with the pinned `protobuf` runtime (descriptor_pb2 + message_factory): the runtime does every
byte of wire encoding, and this file is only the schema, checked field by field against the spec.
Only the messages fedlake reads or writes are declared; any other command is refused by its name.
"""

from __future__ import annotations

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

PACKAGE = "arrow.flight.protocol.sql"
TYPE_URL_PREFIX = "type.googleapis.com/"

_F = descriptor_pb2.FieldDescriptorProto
STRING, BYTES, BOOL, UINT32 = _F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_BOOL, _F.TYPE_UINT32
SINGLE, OPTIONAL, REPEATED = "single", "optional", "repeated"

# message name -> [(field, number, type, cardinality)], as in FlightSql.proto
MESSAGES: dict[str, list[tuple[str, int, int, str]]] = {
    "CommandGetSqlInfo": [("info", 1, UINT32, REPEATED)],
    "CommandGetCatalogs": [],
    "CommandGetDbSchemas": [("catalog", 1, STRING, OPTIONAL), ("db_schema_filter_pattern", 2, STRING, OPTIONAL)],
    "CommandGetTables": [
        ("catalog", 1, STRING, OPTIONAL),
        ("db_schema_filter_pattern", 2, STRING, OPTIONAL),
        ("table_name_filter_pattern", 3, STRING, OPTIONAL),
        ("table_types", 4, STRING, REPEATED),
        ("include_schema", 5, BOOL, SINGLE),
    ],
    "CommandGetTableTypes": [],
    "CommandStatementQuery": [("query", 1, STRING, SINGLE), ("transaction_id", 2, BYTES, OPTIONAL)],
    "TicketStatementQuery": [("statement_handle", 1, BYTES, SINGLE)],
    "CommandPreparedStatementQuery": [("prepared_statement_handle", 1, BYTES, SINGLE)],
    "ActionCreatePreparedStatementRequest": [("query", 1, STRING, SINGLE), ("transaction_id", 2, BYTES, OPTIONAL)],
    "ActionCreatePreparedStatementResult": [
        ("prepared_statement_handle", 1, BYTES, SINGLE),
        ("dataset_schema", 2, BYTES, SINGLE),
        ("parameter_schema", 3, BYTES, SINGLE),
    ],
    "ActionClosePreparedStatementRequest": [("prepared_statement_handle", 1, BYTES, SINGLE)],
}

# fedlake's own header: the purpose a call declares (fedlake.serve.coordinator)
PURPOSE_HEADER = "x-fedlake-purpose"

# Flight SQL's DoAction types, as the spec names them
CREATE_PREPARED_STATEMENT = "CreatePreparedStatement"
CLOSE_PREPARED_STATEMENT = "ClosePreparedStatement"


def _file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(name="fedlake/FlightSql.proto", package=PACKAGE, syntax="proto3")
    for name, fields in MESSAGES.items():
        message = file.message_type.add(name=name)
        for field, number, kind, cardinality in fields:
            declared = message.field.add(name=field, number=number, type=kind, json_name=_camel(field))
            declared.label = _F.LABEL_REPEATED if cardinality == REPEATED else _F.LABEL_OPTIONAL
            if cardinality == OPTIONAL:
                # proto3 `optional`: presence is tracked through a synthetic one-field oneof
                declared.proto3_optional = True
                declared.oneof_index = len(message.oneof_decl)
                message.oneof_decl.add(name=f"_{field}")
    return file


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())
_CLASSES: dict[str, type[Message]] = {
    name: message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}")) for name in MESSAGES
}

CommandGetSqlInfo = _CLASSES["CommandGetSqlInfo"]
CommandGetCatalogs = _CLASSES["CommandGetCatalogs"]
CommandGetDbSchemas = _CLASSES["CommandGetDbSchemas"]
CommandGetTables = _CLASSES["CommandGetTables"]
CommandGetTableTypes = _CLASSES["CommandGetTableTypes"]
CommandStatementQuery = _CLASSES["CommandStatementQuery"]
TicketStatementQuery = _CLASSES["TicketStatementQuery"]
CommandPreparedStatementQuery = _CLASSES["CommandPreparedStatementQuery"]
ActionCreatePreparedStatementRequest = _CLASSES["ActionCreatePreparedStatementRequest"]
ActionCreatePreparedStatementResult = _CLASSES["ActionCreatePreparedStatementResult"]
ActionClosePreparedStatementRequest = _CLASSES["ActionClosePreparedStatementRequest"]


class UnknownCommand(ValueError):
    """A well-formed Any whose message fedlake does not serve; `name` is the message's full name."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(name)


def pack(message: Message) -> bytes:
    """A message wrapped in google.protobuf.Any, as Flight SQL sends every command."""
    wrapped = any_pb2.Any()
    wrapped.Pack(message)
    return wrapped.SerializeToString()


def unpack(raw: bytes) -> Message:
    """The message inside an Any; UnknownCommand for one fedlake does not serve, ValueError for bytes
    that are not an Any at all."""
    wrapped = any_pb2.Any()
    try:
        wrapped.ParseFromString(raw)
    except DecodeError:
        raise ValueError("not a Flight SQL command (a google.protobuf.Any)") from None
    if not wrapped.type_url.startswith(TYPE_URL_PREFIX):
        raise ValueError("not a Flight SQL command (a google.protobuf.Any)")
    name = wrapped.type_url[len(TYPE_URL_PREFIX):]
    short = name[len(PACKAGE) + 1:] if name.startswith(PACKAGE + ".") else None
    if short not in _CLASSES:
        raise UnknownCommand(name)
    message = _CLASSES[short]()
    try:
        message.ParseFromString(wrapped.value)
    except DecodeError:
        raise ValueError(f"a {name} that does not decode") from None
    return message
