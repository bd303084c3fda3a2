"""Where Great Expectations' SQL runs for a silo: the silo's own database, reached through SQLAlchemy.

PostgreSQL is reached with the connector's DSN; a lake (local, S3, Delta or plain Parquet) through
the connector's own embedded DuckDB, where every table is already a view of its current version.
A lake whose fragments run on Spark is validated on that same DuckDB next to its files, as its
statistics are. Either way GE sends SQL and gets back aggregates and at most a few sample values;
no table is read into the agent's memory.

GE 1.x does not know DuckDB. duckdb-engine is PostgreSQL's SQLAlchemy dialect with DuckDB as its
driver, so GE is told to build PostgreSQL expressions, with one difference taken care of: DuckDB's
`~` is a full match where PostgreSQL's (and GE's everywhere else) is a search, so on DuckDB the
regex operators GE writes are compiled to `regexp_matches`, which searches.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from fedlake.silos.base import Connector
from fedlake.silos.lake import LakeConnector
from fedlake.silos.postgres import PostgresConnector
from fedlake.silos.spark import SparkLake

DUCKDB_URL = "duckdb://"
POSTGRES_URL = "postgresql+psycopg://"
# GE's regex operators for PostgreSQL, and whether each is negated.
_REGEX_OPERATORS = {"~": False, "!~": True}


@dataclass(frozen=True)
class InPlaceSQL:
    """How GE's SQL datasource reaches a silo's table in place."""

    url: str  # names the SQLAlchemy dialect only: connections come from `connect`
    connect: Callable[[], Any]  # a new DBAPI connection to the silo's own database
    schema: str | None  # where the table is
    engine: str  # where the SQL ran, in words, for the report
    dialect_module: ModuleType | None = None  # the SQL GE builds, where it cannot tell from the dialect
    close: Callable[[], None] = lambda: None  # releases what `connect` draws on


def in_place_sql(connector: Connector, table: str) -> InPlaceSQL | None:
    """The silo's own database as GE's SQL datasource sees it (the caller calls `close` when done);
    None for a silo without one."""
    if isinstance(connector, PostgresConnector):
        return _postgres(connector)
    if isinstance(connector, SparkLake):
        return _duckdb(connector.lake, table, f"next to the lake of Spark silo {connector.name}")
    if isinstance(connector, LakeConnector):
        return _duckdb(connector, table, f"in the agent of silo {connector.name}")
    return None


def _postgres(connector: PostgresConnector) -> InPlaceSQL:
    """GE's postgres datasource insists on a URL with a host, which the local deployment's embedded
    server (a Unix socket) does not have, so the generic one gets the connector's DSN as a factory."""
    import psycopg

    dsn, schema = connector._dsn, connector._schema
    return InPlaceSQL(
        url=POSTGRES_URL,
        connect=lambda: psycopg.connect(dsn),
        schema=schema,
        engine=f"great_expectations SQL on PostgreSQL, in silo {connector.name} (schema {schema})",
    )


def _duckdb(lake: LakeConnector, table: str, where: str) -> InPlaceSQL:
    import sqlalchemy.dialects.postgresql

    _compile_regex_for_duckdb()
    views = lake.cursor_over(table)  # the table's view is made (or brought to its current version) once, here
    return InPlaceSQL(
        url=DUCKDB_URL,
        connect=lambda: _autocommit_connection()(views.cursor()),
        schema=None,
        engine=f"great_expectations SQL on DuckDB, {where} (the lake's own DuckDB; GE receives aggregates and samples)",
        dialect_module=sqlalchemy.dialects.postgresql,
        close=views.close,
    )


@functools.cache
def _autocommit_connection() -> type:
    """A cursor on the lake's DuckDB as a SQLAlchemy DBAPI connection, without transactions: GE
    fetches a query's rows after handing its connection back, and the rollback SQLAlchemy issues
    then would make DuckDB drop the pending result. GE only reads here; DuckDB commits each
    statement by itself."""
    from duckdb_engine import ConnectionWrapper

    class Autocommit(ConnectionWrapper):
        def begin(self) -> None:
            pass

        def commit(self) -> None:
            pass

        def rollback(self) -> None:
            pass

    return Autocommit


@functools.cache
def _compile_regex_for_duckdb() -> None:
    """On DuckDB, GE's `column ~ pattern` becomes `regexp_matches(column, pattern)` (a search, as
    in PostgreSQL), and `!~` its negation; every other binary expression compiles as before."""
    from sqlalchemy.ext.compiler import compiles
    from sqlalchemy.sql.elements import BinaryExpression
    from sqlalchemy.sql.operators import custom_op

    @compiles(BinaryExpression, "duckdb")
    def regex_as_search(element, compiler, **kw):
        operator = element.operator
        if isinstance(operator, custom_op) and operator.opstring in _REGEX_OPERATORS:
            left, right = compiler.process(element.left, **kw), compiler.process(element.right, **kw)
            return f"{'NOT ' if _REGEX_OPERATORS[operator.opstring] else ''}regexp_matches({left}, {right})"
        return compiler.visit_binary(element, **kw)
