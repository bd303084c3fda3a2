"""Deep and huge SQL is refused in one line naming the limit and the query's value, through the
coordinator and through a real in-process agent, never with a RecursionError; queries at the limits
still run there and answer correctly."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
import yaml

from fedlake.agent import EgressDenied, ledger_for, local_agent_client
from fedlake.catalog import load_catalog
from fedlake.errors import FedlakeError
from fedlake.policy.model import load_policy
from fedlake.query import Federation
from fedlake.silos import open_silo
from fedlake.sql_text import LIMITS, SqlTooComplex, parse_sql

PEOPLE, VISITS = 300, 200
MEGABYTE = 1_000_000


def nested_from(depth: int, inner: str) -> str:
    """`depth` derived tables, one inside the other, around `inner`."""
    return "SELECT id FROM " + "(SELECT id FROM " * (depth - 1) + f"({inner}) AS t0" + ") AS t" * (depth - 1)


def nested_in(depth: int, table: str, inner: str) -> str:
    """`depth` IN subqueries, one inside the other, around `inner`."""
    sql = inner
    for _ in range(depth):
        sql = f"SELECT id FROM {table} WHERE id IN ({sql})"
    return sql


def sum_deep(depth: int, table: str) -> str:
    """A sum whose tree is `depth` deep: SELECT, its alias, the chain of additions, a column, its name."""
    return "SELECT " + " + ".join("id" for _ in range(depth - 3)) + f" AS s FROM {table}"


def unions(branches: int, *tables: str) -> str:
    """`branches` SELECTs in one UNION ALL chain, each of one row, taking turns over the tables."""
    return " UNION ALL ".join(f"SELECT id FROM {tables[i % len(tables)]} WHERE id = {i}" for i in range(branches))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """Two lake silos in two regions, every column public, and a coordinator allowed everything."""
    home = tmp_path_factory.mktemp("sql_limits")
    tables = {"eu": {"people": pa.table({"id": pa.array(range(PEOPLE), pa.int64()), "name": [f"p{i}" for i in range(PEOPLE)]})},
              "us": {"visits": pa.table({"id": pa.array(range(VISITS), pa.int64()), "person_id": pa.array(range(VISITS), pa.int64())})}}
    (home / "silos.yaml").write_text(yaml.safe_dump({"governed_zone": {"region": "EU"}, "silos": {
        "eu": {"kind": "parquet", "region": "EU", "connection": {"local": {"path": "eu_lake"}},
               "tables": {"people": {"id": "public", "name": "public"}}},
        "us": {"kind": "parquet", "region": "US", "connection": {"local": {"path": "us_lake"}},
               "tables": {"visits": {"id": "public", "person_id": "public"}}},
    }}))
    (home / "policies.yaml").write_text(yaml.safe_dump({
        "purposes": ["analytics"],
        "clients": {"coordinator": {"token_env": "FEDLAKE_TEST_UNSET_TOKEN", "purposes": ["analytics"], "roles": ["query", "coordinate"]}},
        "classifications": {"public": [{"action": "allow"}]},
    }))
    catalog = load_catalog(home / "silos.yaml")
    for silo, silo_tables in tables.items():
        with open_silo(catalog.silo(silo), "local", home) as connector:
            for name, table in silo_tables.items():
                connector.load(name, table.schema, table.to_batches())
    policy = load_policy(home / "policies.yaml", catalog)
    clients = {silo: local_agent_client(catalog, policy, silo, home) for silo in catalog.silos}
    yield home, clients, Federation(catalog, clients)
    for client in clients.values():
        client.close()


# each case: the query over (a table of eu, a table of us), and the line that refuses it
TOO_LARGE = {
    "500 nested subqueries": (lambda eu, us: nested_from(500, f"SELECT id FROM {eu}"),
                              lambda sql: f"the query nests parentheses 500 deep; the limit is {LIMITS.nesting}"),
    "2,000 UNION ALL": (lambda eu, us: unions(2001, eu, us),
                        lambda sql: f"the query has 2000 set operations (UNION, INTERSECT, EXCEPT); the limit is {LIMITS.set_operations}"),
    "a 1 MB literal": (lambda eu, us: f"SELECT id FROM {eu} WHERE name = '{'x' * MEGABYTE}'",
                       lambda sql: f"the query has {len(sql)} characters; the limit is {LIMITS.chars}"),
    "500 nested IN subqueries": (lambda eu, us: nested_in(500, eu, f"SELECT id FROM {eu}"),
                                 lambda sql: f"the query nests parentheses 500 deep; the limit is {LIMITS.nesting}"),
    "an expression 400 deep": (lambda eu, us: sum_deep(400, eu),
                               lambda sql: f"the query nests expressions 400 deep; the limit is {LIMITS.depth}"),
}


def one_line(message: str) -> None:
    assert "\n" not in message and len(message) < 300 and "xxxxxxxx" not in message, message


@pytest.mark.parametrize("case", TOO_LARGE, ids=list(TOO_LARGE))
def test_the_coordinator_refuses_too_large_a_query_naming_the_limit(deployment, case):
    _, _, federation = deployment
    make, says = TOO_LARGE[case]
    sql = make("eu.people", "us.visits")
    with pytest.raises(SqlTooComplex) as refused:
        federation.run(sql, "analytics")
    one_line(str(refused.value))
    assert str(refused.value) == says(sql)


@pytest.mark.parametrize("case", TOO_LARGE, ids=list(TOO_LARGE))
def test_the_agent_refuses_too_large_a_request_in_one_ledgered_line(deployment, case):
    home, clients, _ = deployment
    make, says = TOO_LARGE[case]
    sql = make("people", "people")
    ledger = ledger_for(home)
    before = ledger.last_seq()
    with pytest.raises(EgressDenied) as refused:
        clients["eu"].query(sql, "analytics", "EU")
    expected = says(sql)
    assert str(refused.value) == f"egress from eu to EU for analytics denied: {expected}"
    one_line(str(refused.value))
    [entry] = ledger.entries(after=before)
    assert (entry["decision"], entry["error"]) == ("denied", "REFUSED")
    assert json.loads(entry["columns"]) == [{"refused": expected}]


def test_the_agent_refuses_500_nested_in_subqueries(deployment):
    _, clients, _ = deployment
    with pytest.raises(EgressDenied, match=f"the query nests parentheses 500 deep; the limit is {LIMITS.nesting}$"):
        clients["eu"].query(nested_in(500, "people", "SELECT id FROM people"), "analytics", "EU")


def test_queries_at_the_limits_run_through_the_agent(deployment):
    _, clients, _ = deployment
    at_limits = {
        unions(LIMITS.set_operations + 1, "people"): LIMITS.set_operations + 1,
        nested_from(LIMITS.nesting - 1, "SELECT id FROM people"): PEOPLE,
        nested_in(LIMITS.nesting - 1, "people", unions(40, "people")): 40,
        sum_deep(LIMITS.depth, "people"): PEOPLE,
    }
    for sql, rows in at_limits.items():
        parse_sql(sql)
        assert clients["eu"].query(sql, "analytics", "EU").read_all().num_rows == rows


def test_queries_at_the_limits_run_through_the_coordinator(deployment):
    _, _, federation = deployment
    across = "SELECT p.id FROM eu.people p JOIN us.visits v ON v.person_id = p.id"
    at_limits = {
        unions(LIMITS.set_operations + 1, "eu.people", "us.visits"): LIMITS.set_operations + 1,
        nested_from(LIMITS.nesting - 1, across): VISITS,
        nested_in(LIMITS.nesting - 2, "eu.people", "SELECT person_id FROM us.visits"): VISITS,
    }
    for sql, rows in at_limits.items():
        table, _ = federation.run(sql, "analytics")
        assert table.num_rows == rows


def test_parentheses_and_set_operations_in_literals_and_comments_do_not_count():
    quoted = "SELECT '" + "(" * 500 + " UNION " * 500 + "' AS x -- " + "(" * 500 + "\nFROM t /* " + " EXCEPT " * 500 + " */"
    [tree] = parse_sql(quoted)
    assert tree.sql("duckdb").startswith("SELECT '((((")


def test_a_parser_past_the_recursion_limit_gives_the_same_one_line_error():
    """Unary operators chain without parentheses or set operations: sqlglot's parser recurses on
    them before any tree exists to measure, so its RecursionError is the last resort."""
    with pytest.raises(SqlTooComplex, match=r"^the query nests too deeply to plan \(past Python's recursion limit\)$"):
        parse_sql("SELECT " + "NOT " * 3000 + "TRUE")
    assert issubclass(SqlTooComplex, FedlakeError)
