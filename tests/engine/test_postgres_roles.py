"""Least privilege at a PostgreSQL silo, attacked as an insider would: through the agent's own
reader and writer connections, against the server over TCP (the prod deployment) and the embedded
one (local). The reader may only read; the writer may only write its own schema."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from psycopg import errors

from fedlake.catalog import load_catalog, parse_catalog
from fedlake.errors import ConfigError, SiloError
from fedlake.silos import PostgresConnector, connector_for, open_silo
from fedlake.silos.postgres import EMBEDDED_READER, EMBEDDED_WRITER, MADE_SCHEMA, ensure_roles, with_user
from fedlake.synth.seed import seed_demo_bank

REPO = Path(__file__).resolve().parents[2]

PAYMENTS = pa.table(
    {
        "payment_id": pa.array([f"P{i}" for i in range(4)]),
        "customer_id": pa.array(["c1", "c1", "c2", "c3"]),
        "amount": pa.array([10.0, 20.0, 5.0, 1.0]),
    }
)


@dataclass
class Silo:
    """A silo's three DSNs, its schemas and the connector its agent would open."""

    owner: str
    reader: str
    writer: str
    reader_role: str
    writer_role: str
    schema: str
    made: str
    connector: PostgresConnector


@pytest.fixture(scope="module")
def tcp_silo(postgres_dsn) -> Silo:
    tag = uuid.uuid4().hex[:8]
    schema, made, reader, writer = f"src_{tag}", f"made_{tag}", f"reader_{tag}", f"writer_{tag}"
    passwords = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    reader_dsn, writer_dsn = with_user(postgres_dsn, reader, passwords[0]), with_user(postgres_dsn, writer, passwords[1])
    connector = PostgresConnector(
        "eu_test", "EU", reader_dsn, schema=schema, writer_dsn=writer_dsn, owner_dsn=postgres_dsn, writer_schema=made
    )
    connector.ensure_roles()
    connector.load("payments", PAYMENTS.schema, PAYMENTS.to_batches())
    yield Silo(postgres_dsn, reader_dsn, writer_dsn, reader, writer, schema, made, connector)
    connector.close()


@pytest.fixture(scope="module")
def embedded_silo(tmp_path_factory) -> Silo:
    connector = connector_for("postgres", "eu_local", "EU", {"embedded": "eu"}, tmp_path_factory.mktemp("embedded"))
    connector.load("payments", PAYMENTS.schema, PAYMENTS.to_batches())
    owner = connector._owner_dsn
    yield Silo(
        owner, connector._dsn, connector._writer_dsn, EMBEDDED_READER, EMBEDDED_WRITER, "public", MADE_SCHEMA, connector
    )
    connector.close()


@pytest.fixture(params=["tcp", "embedded"])
def silo(request) -> Silo:
    return request.getfixturevalue(f"{request.param}_silo")


def refused(dsn: str, statement: str, *setup: str) -> None:
    """The statement fails on a fresh connection as the DSN's role, with the server's own refusal."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in setup:
            conn.execute(s)
        with pytest.raises((errors.InsufficientPrivilege, errors.ReadOnlySqlTransaction, errors.UndefinedObject)):
            conn.execute(statement)


def rows(dsn: str, statement: str) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(statement).fetchall()


def test_the_agent_connects_as_the_reader_and_writer_never_as_the_owner(silo):
    assert rows(silo.reader, "SELECT current_user") == [(silo.reader_role,)]
    assert rows(silo.writer, "SELECT current_user") == [(silo.writer_role,)]
    for role in (silo.reader_role, silo.writer_role):
        attributes = rows(
            silo.owner,
            f"SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin "
            f"FROM pg_roles WHERE rolname = '{role}'",
        )
        assert attributes == [(False, False, False, False, False, True)]
        memberships = f"SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = '{role}'"
        assert rows(silo.owner, memberships) == [(0,)]
    assert rows(silo.reader, "SHOW statement_timeout") == [("5min",)]


@pytest.mark.parametrize("as_role", ["reader", "writer"])
@pytest.mark.parametrize(
    "attack",
    [
        "SELECT pg_read_file('postgresql.conf')",
        "SELECT pg_ls_dir('.')",
        "COPY (SELECT 1) TO PROGRAM 'id'",
        "COPY (SELECT 1) TO '/tmp/fedlake_leak.csv'",
        "SELECT lo_import('/etc/passwd')",
        "ALTER ROLE postgres PASSWORD 'taken'",
        "CREATE ROLE fedlake_intruder SUPERUSER",
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION postgres",
    ],
)
def test_neither_role_reaches_the_server_or_other_roles(silo, as_role, attack):
    refused(getattr(silo, as_role), attack)


def test_a_role_cannot_widen_itself(silo):
    for dsn, role in ((silo.reader, silo.reader_role), (silo.writer, silo.writer_role)):
        for attribute in ("SUPERUSER", "CREATEROLE", "CREATEDB", "BYPASSRLS"):
            refused(dsn, f'ALTER ROLE "{role}" {attribute}')
        refused(dsn, f'GRANT pg_read_server_files TO "{role}"')


def test_the_reader_only_reads(silo):
    source, made = f'"{silo.schema}"', f'"{silo.made}"'
    # read-only transactions are the first wall; privileges hold even after the reader lowers it
    for setup in ((), ("SET default_transaction_read_only = off",)):
        refused(silo.reader, f"CREATE TABLE {source}.stolen (a int)", *setup)
        refused(silo.reader, f"CREATE TABLE {made}.stolen (a int)", *setup)
        refused(silo.reader, f"DROP TABLE {source}.payments", *setup)
        refused(silo.reader, f"DELETE FROM {source}.payments", *setup)
        refused(silo.reader, f"ALTER TABLE {source}.payments ADD COLUMN x int", *setup)
        refused(silo.reader, f"CREATE SCHEMA stolen_{uuid.uuid4().hex[:6]}", *setup)
    # a temporary table is the reader's own, but no server file can be copied into it
    lowered = ("SET default_transaction_read_only = off", "CREATE TEMP TABLE leak (line text)")
    refused(silo.reader, "COPY leak FROM '/etc/hostname'", *lowered)
    refused(silo.reader, "COPY leak FROM PROGRAM 'id'", *lowered)
    assert rows(silo.reader, f"SELECT count(*) FROM {source}.payments") == [(4,)]


def test_the_writer_writes_its_schema_only(silo):
    source, made = f'"{silo.schema}"', f'"{silo.made}"'
    table = f"scratch_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(silo.writer, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {made}.{table} AS SELECT customer_id FROM {source}.payments")
    assert rows(silo.reader, f"SELECT count(*) FROM {made}.{table}") == [(4,)], "the reader sees what the writer made"
    refused(silo.writer, f"CREATE TABLE {source}.stolen (a int)")
    refused(silo.writer, f"DROP TABLE {source}.payments")
    refused(silo.writer, f"INSERT INTO {source}.payments (payment_id) VALUES ('forged')")
    refused(silo.writer, f"ALTER TABLE {source}.payments RENAME TO gone")
    refused(silo.writer, f"CREATE SCHEMA stolen_{uuid.uuid4().hex[:6]}")
    assert rows(silo.owner, f"SELECT count(*) FROM {source}.payments") == [(4,)]


@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_materialize_lands_in_the_writer_schema_and_reads_back(silo, engine):
    silo.connector.engine = engine
    table = f"totals_{engine}"
    made = silo.connector.materialize(
        table, "SELECT customer_id, sum(amount) AS total FROM payments GROUP BY 1", annotations={"by": "test"}
    )
    assert made.rows == 3
    where = rows(
        silo.owner,
        f"SELECT schemaname, tableowner FROM pg_tables "
        f"WHERE tablename = '{table}' AND schemaname IN ('{silo.schema}', '{silo.made}')",
    )
    assert where == [(silo.made, silo.writer_role)]
    assert {"payments", table} <= set(silo.connector.list_tables())
    assert silo.connector.annotations(table) == {"by": "test"}
    back = silo.connector.execute(f"SELECT customer_id, total FROM {table} ORDER BY 1").read_all()
    assert back.column("total").to_pylist() == [30.0, 5.0, 1.0]
    joined = silo.connector.execute(f"SELECT count(*) AS n FROM payments JOIN {table} USING (customer_id)").read_all()
    assert joined.column("n").to_pylist() == [4]
    assert silo.connector.statistics(table).rows == 3


def test_a_made_table_cannot_shadow_a_source_table(silo):
    with pytest.raises(SiloError, match="'payments' is a source table"):
        silo.connector.materialize("payments", "SELECT 1 AS n")
    assert silo.connector.row_count("payments") == 4


def test_the_writer_drops_made_tables_and_only_the_owner_drops_source_tables(tcp_silo):
    tcp_silo.connector.materialize("to_drop", "SELECT 1 AS n")
    tcp_silo.connector.drop("to_drop")
    assert "to_drop" not in tcp_silo.connector.list_tables()
    agent = PostgresConnector(
        "eu_test", "EU", tcp_silo.reader, schema=tcp_silo.schema, writer_dsn=tcp_silo.writer, writer_schema=tcp_silo.made
    )
    try:
        with pytest.raises(SiloError, match="silo eu_test: loading payments needs .* owner_dsn"):
            agent.load("payments", PAYMENTS.schema, PAYMENTS.to_batches())
        with pytest.raises(SiloError, match="owner_dsn"):
            agent.drop("payments")
    finally:
        agent.close()
    assert tcp_silo.connector.row_count("payments") == 4


def test_role_set_up_is_idempotent_and_narrows_a_widened_role(tcp_silo):
    with psycopg.connect(tcp_silo.owner, autocommit=True) as conn:
        conn.execute(f'ALTER ROLE "{tcp_silo.reader_role}" CREATEDB')
        conn.execute(f'GRANT pg_read_server_files TO "{tcp_silo.reader_role}"')
        conn.execute(f'GRANT "{tcp_silo.writer_role}" TO "{tcp_silo.reader_role}"')
    reaches = "SELECT pg_has_role('pg_read_server_files', 'USAGE')"
    assert rows(tcp_silo.reader, reaches) == [(True,)]
    tcp_silo.connector.ensure_roles()
    tcp_silo.connector.ensure_roles()
    assert rows(tcp_silo.reader, reaches) == [(False,)]
    refused(tcp_silo.reader, f'SET ROLE "{tcp_silo.writer_role}"')
    assert rows(tcp_silo.owner, f"SELECT rolcreatedb FROM pg_roles WHERE rolname = '{tcp_silo.reader_role}'") == [(False,)]
    assert rows(tcp_silo.reader, f'SELECT count(*) FROM "{tcp_silo.schema}".payments') == [(4,)]
    # the password in the DSN still logs in, and a wrong one does not
    wrong = with_user(tcp_silo.owner, tcp_silo.reader_role, "not-the-password")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(wrong).close()


def test_tables_made_before_the_roles_move_to_the_writer_schema(tcp_silo):
    """A silo upgraded from one superuser: what the agent made (annotated) moves, the source stays."""
    source = f'"{tcp_silo.schema}"'
    with psycopg.connect(tcp_silo.owner, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {source}.made_long_ago AS SELECT 1 AS n")
        conn.execute(f"COMMENT ON TABLE {source}.made_long_ago IS 'fedlake:{{\"by\": \"coordinator\"}}'")
    tcp_silo.connector.ensure_roles()
    where = rows(
        tcp_silo.owner,
        f"SELECT schemaname, tableowner FROM pg_tables WHERE tablename IN ('made_long_ago', 'payments') "
        f"AND schemaname IN ('{tcp_silo.schema}', '{tcp_silo.made}') ORDER BY tablename",
    )
    assert where == [(tcp_silo.made, tcp_silo.writer_role), (tcp_silo.schema, "postgres")]
    assert tcp_silo.connector.annotations("made_long_ago") == {"by": "coordinator"}
    assert tcp_silo.connector.materialize("made_long_ago", "SELECT 2 AS n").rows == 1


def test_roles_need_their_own_schema(postgres_dsn):
    with pytest.raises(SiloError, match="must differ"):
        ensure_roles(postgres_dsn, "public", "r_same", "w_same", writer_schema="public")


def test_seeding_sets_the_roles_up_and_runs_twice(tmp_path):
    catalog = load_catalog(REPO / "silos.yaml")
    for _ in range(2):
        seed_demo_bank(catalog, "local", tmp_path, 0.01, 3)
    with open_silo(catalog.silo("eu_core"), "local", tmp_path) as connector:
        assert rows(connector._dsn, "SELECT current_user") == [(EMBEDDED_READER,)]
        refused(connector._dsn, "SELECT pg_read_file('postgresql.conf')")
        refused(connector._writer_dsn, "CREATE TABLE public.stolen (a int)")
        assert rows(connector._dsn, "SELECT count(*) > 0 FROM public.loans") == [(True,)]
        owner = rows(connector._owner_dsn, f"SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = '{MADE_SCHEMA}'")
        assert owner == [(EMBEDDED_WRITER,)]
        made = connector.materialize("loan_count", "SELECT count(*) AS n FROM loans")
        assert made.rows == 1
        assert connector.execute("SELECT n > 0 AS ok FROM loan_count").read_all().column("ok").to_pylist() == [True]


def test_the_agent_opens_its_silo_without_the_owner_dsn(catalog, monkeypatch):
    monkeypatch.setenv("EU_CORE_DSN", "postgresql://eu_core_reader@127.0.0.1:1/postgres")
    monkeypatch.setenv("EU_CORE_WRITER_DSN", "postgresql://eu_core_writer@127.0.0.1:1/postgres")
    monkeypatch.delenv("EU_CORE_OWNER_DSN", raising=False)
    connector = open_silo(catalog.silo("eu_core"), "prod")
    with pytest.raises(SiloError, match="silo eu_core: loading loans needs the data owner's DSN \\(connection key owner_dsn\\)"):
        connector.load("loans", PAYMENTS.schema, [])


def _catalog_with(connection: dict) -> dict:
    return {
        "silos": {
            "eu_core": {"kind": "postgres", "region": "EU", "connection": {"prod": connection}, "tables": {"t": {"a": "public"}}}
        }
    }


@pytest.mark.parametrize(
    "connection, key, message",
    [
        ({"dsn": "postgresql://r@h/db"}, "writer_dsn", "required beside dsn"),
        ({"writer_dsn": "postgresql://w@h/db"}, "dsn", "read-only DSN"),
        ({"embedded": "eu", "owner_dsn": "postgresql://o@h/db"}, "owner_dsn", "derives its roles"),
        ({"embedded": "eu", "writer_schema": "public"}, "writer_schema", "must differ from schema"),
        ({"embedded": "eu", "reader_dsn": "x"}, "reader_dsn", "unknown setting"),
    ],
)
def test_catalog_names_the_bad_connection_key(connection, key, message):
    with pytest.raises(ConfigError, match=message) as raised:
        parse_catalog(_catalog_with(connection))
    assert f"silos.eu_core.connection.prod.{key}" in str(raised.value)


def test_catalog_accepts_the_three_dsns():
    catalog = parse_catalog(
        _catalog_with({"dsn": {"env": "R"}, "writer_dsn": {"env": "W"}, "owner_dsn": {"env": "O"}, "writer_schema": "made"})
    )
    assert set(catalog.silo("eu_core").connection("prod")) == {"dsn", "writer_dsn", "owner_dsn", "writer_schema"}


def test_the_prod_deployment_gives_eu_core_its_roles(prod_env):
    """What the eu_core agent process is handed: the reader and the writer, each locked down."""
    assert rows(prod_env["EU_CORE_DSN"], "SELECT current_user, current_setting('default_transaction_read_only')") == [
        ("eu_core_reader", "on")
    ]
    assert rows(prod_env["EU_CORE_WRITER_DSN"], "SELECT current_user") == [("eu_core_writer",)]
    for dsn in (prod_env["EU_CORE_DSN"], prod_env["EU_CORE_WRITER_DSN"]):
        refused(dsn, "SELECT pg_read_file('postgresql.conf')")
        refused(dsn, "SET ROLE postgres")
    refused(prod_env["EU_CORE_WRITER_DSN"], "CREATE TABLE public.stolen (a int)")
