"""The answers to Flight SQL's metadata commands, in the exact Arrow schemas the spec fixes
(clients such as the ADBC driver compare them field by field, nullability included).

fedlake names tables `silo.table`, so a silo is a Flight SQL database schema and there is no
catalog level: catalog_name is null everywhere, and GetCatalogs answers no rows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import pyarrow as pa

from fedlake.arrow_types import sql_type

TABLE_TYPE = "TABLE"

CATALOGS_SCHEMA = pa.schema([pa.field("catalog_name", pa.utf8(), nullable=False)])
DB_SCHEMAS_SCHEMA = pa.schema([pa.field("catalog_name", pa.utf8()), pa.field("db_schema_name", pa.utf8(), nullable=False)])
TABLES_SCHEMA = pa.schema([
    pa.field("catalog_name", pa.utf8()),
    pa.field("db_schema_name", pa.utf8()),
    pa.field("table_name", pa.utf8(), nullable=False),
    pa.field("table_type", pa.utf8(), nullable=False),
])
TABLES_WITH_SCHEMA_SCHEMA = TABLES_SCHEMA.append(pa.field("table_schema", pa.binary(), nullable=False))
TABLE_TYPES_SCHEMA = pa.schema([pa.field("table_type", pa.utf8(), nullable=False)])

# GetSqlInfo's value: a dense union whose members, in this order, are the spec's type codes 0..5
_INFO_VALUE = pa.dense_union([
    pa.field("string_value", pa.utf8()),
    pa.field("bool_value", pa.bool_()),
    pa.field("bigint_value", pa.int64()),
    pa.field("int32_bitmask", pa.int32()),
    pa.field("string_list", pa.list_(pa.utf8())),
    pa.field("int32_to_int32_list_map", pa.map_(pa.int32(), pa.list_(pa.int32()))),
])
SQL_INFO_SCHEMA = pa.schema([pa.field("info_name", pa.uint32(), nullable=False), pa.field("value", _INFO_VALUE, nullable=False)])

# SqlInfo codes (FlightSql.proto, enum SqlInfo) and what fedlake answers
SERVER_NAME, SERVER_VERSION, SERVER_ARROW_VERSION, SERVER_READ_ONLY, SERVER_SQL, SERVER_SUBSTRAIT = 0, 1, 2, 3, 4, 5
SERVER_TRANSACTION, SERVER_CANCEL = 8, 9
SQL_DDL_CATALOG, SQL_DDL_SCHEMA, SQL_DDL_TABLE, SQL_IDENTIFIER_QUOTE_CHAR = 500, 501, 502, 504
SQL_SCHEMA_TERM, SQL_CATALOG_TERM = 529, 531
TRANSACTION_NONE = 0  # SqlSupportedTransaction.SQL_SUPPORTED_TRANSACTION_NONE



def _fedlake_version() -> str:
    try:
        return version("fedlake")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


SQL_INFO: dict[int, str | bool | int] = {
    SERVER_NAME: "fedlake",
    SERVER_VERSION: _fedlake_version(),
    SERVER_ARROW_VERSION: pa.__version__,
    SERVER_READ_ONLY: True,
    SERVER_SQL: True,
    SERVER_SUBSTRAIT: False,
    SERVER_TRANSACTION: TRANSACTION_NONE,
    SERVER_CANCEL: False,
    SQL_DDL_CATALOG: False,
    SQL_DDL_SCHEMA: False,
    SQL_DDL_TABLE: False,
    SQL_IDENTIFIER_QUOTE_CHAR: '"',
    SQL_SCHEMA_TERM: "silo",
    SQL_CATALOG_TERM: "",
}
_INT32_INFOS = {SERVER_TRANSACTION}


def sql_info(requested: Iterable[int]) -> pa.Table:
    """The requested SqlInfo codes fedlake knows (all of them when none is named), one row each."""
    codes = [code for code in (list(requested) or SQL_INFO) if code in SQL_INFO]
    kinds, offsets = [], []
    members: dict[int, list] = {0: [], 1: [], 3: []}
    for code in codes:
        value = SQL_INFO[code]
        kind = 3 if code in _INT32_INFOS else 1 if isinstance(value, bool) else 0
        kinds.append(kind)
        offsets.append(len(members[kind]))
        members[kind].append(value)
    children = [
        pa.array(members[0], pa.utf8()),
        pa.array(members[1], pa.bool_()),
        pa.array([], pa.int64()),
        pa.array(members[3], pa.int32()),
        pa.array([], pa.list_(pa.utf8())),
        pa.array([], pa.map_(pa.int32(), pa.list_(pa.int32()))),
    ]
    value = pa.UnionArray.from_dense(
        pa.array(kinds, pa.int8()), pa.array(offsets, pa.int32()), children, [f.name for f in _INFO_VALUE]
    )
    return pa.Table.from_arrays([pa.array(codes, pa.uint32()), value], schema=SQL_INFO_SCHEMA)


def like(pattern: str | None) -> re.Pattern[str] | None:
    """A Flight SQL filter pattern (`%` any run, `_` any one character, `\\` escapes) as a regex."""
    if pattern is None:
        return None
    out, escaped = [], False
    for char in pattern:
        if escaped:
            out.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            out.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _matches(pattern: re.Pattern[str] | None, name: str) -> bool:
    return pattern is None or pattern.match(name) is not None


def catalogs() -> pa.Table:
    return CATALOGS_SCHEMA.empty_table()


def db_schemas(silos: Iterable[str], catalog: str | None, pattern: str | None) -> pa.Table:
    """The silos, as database schemas; a catalog named (other than the empty one) matches none."""
    wanted = like(pattern)
    names = [] if catalog else sorted(s for s in silos if _matches(wanted, s))
    return pa.table({"catalog_name": pa.nulls(len(names), pa.utf8()), "db_schema_name": names}, schema=DB_SCHEMAS_SCHEMA)


@dataclass(frozen=True)
class TableListing:
    """One table a client may name, with its columns as the silo holds them: (name, Arrow type)."""

    silo: str
    table: str
    columns: tuple[tuple[str, pa.DataType], ...] = ()
    classifications: tuple[tuple[str, str], ...] = ()  # column -> classification, where silos.yaml declares one


def table_types() -> pa.Table:
    return pa.table({"table_type": [TABLE_TYPE]}, schema=TABLE_TYPES_SCHEMA)


def wants_tables(types: Iterable[str]) -> bool:
    types = list(types)
    return not types or TABLE_TYPE in types


def tables(listings: Iterable[TableListing], include_schema: bool) -> pa.Table:
    rows = sorted(listings, key=lambda t: (t.silo, t.table))
    columns = {
        "catalog_name": pa.nulls(len(rows), pa.utf8()),
        "db_schema_name": [t.silo for t in rows],
        "table_name": [t.table for t in rows],
        "table_type": [TABLE_TYPE] * len(rows),
    }
    if not include_schema:
        return pa.table(columns, schema=TABLES_SCHEMA)
    columns["table_schema"] = [_table_schema(t).serialize().to_pybytes() for t in rows]
    return pa.table(columns, schema=TABLES_WITH_SCHEMA_SCHEMA)


def _table_schema(listing: TableListing) -> pa.Schema:
    """The table's columns with the column metadata Flight SQL defines, and each column's declared
    classification: what a query may return of it is decided per query by policy."""
    declared = dict(listing.classifications)
    fields = []
    for name, arrow_type in listing.columns:
        metadata = {
            "ARROW:FLIGHT:SQL:DB_SCHEMA_NAME": listing.silo,
            "ARROW:FLIGHT:SQL:TABLE_NAME": listing.table,
            "ARROW:FLIGHT:SQL:TYPE_NAME": sql_type(arrow_type),
            "ARROW:FLIGHT:SQL:IS_READ_ONLY": "1",
        }
        if name in declared:
            metadata["fedlake:classification"] = declared[name]
        fields.append(pa.field(name, arrow_type, metadata=metadata))
    return pa.schema(fields)
