"""The plan-quality rules end to end, over three silos of three kinds behind their agents: what a
fragment ships, what a small IN subquery reduces, and what the silos' own statistics decide."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest
import sqlglot
import yaml

from fedlake.agent import local_agent_client
from fedlake.arrow_types import sql_type
from fedlake.catalog import load_catalog
from fedlake.policy.model import load_policy
from fedlake.query import GOVERNED, Federation
from fedlake.query.cut import cut_query
from fedlake.query.placement import result_rows, unique_columns
from fedlake.query.semijoin import find_semijoins
from fedlake.query.statistics import fragment_distinct
from fedlake.silos import open_silo

ORDERS, PEOPLE, VISITS, PAYMENTS = 4000, 300, 2000, 3000
FREQUENT = 12  # people with far more visits than the others


def bank_tables() -> dict[str, dict[str, pa.Table]]:
    rng = np.random.default_rng(5)
    visitors = np.concatenate([rng.integers(0, PEOPLE, VISITS - 40 * FREQUENT), np.repeat(np.arange(FREQUENT) * 7, 40)])
    return {
        "eu": {
            "orders": pa.table({"order_id": pa.array(range(ORDERS), pa.int64()),
                                "person_id": pa.array(rng.integers(0, PEOPLE, ORDERS), pa.int64()),
                                "amount": pa.array(np.round(rng.gamma(2, 40, ORDERS), 2)),
                                "status": pa.array(list(rng.choice(["open", "shipped", "cancelled"], ORDERS)))}),
            "people": pa.table({"id": pa.array(range(PEOPLE), pa.int64()),
                                "region": pa.array(list(rng.choice(["north", "south", "east", "west"], PEOPLE)))}),
        },
        "us": {"visits": pa.table({"visit_id": pa.array(range(VISITS), pa.int64()),
                                   "person_id": pa.array(visitors, pa.int64()),
                                   "duration": pa.array(rng.integers(1, 3600, VISITS), pa.int64())})},
        "sg": {"payments": pa.table({"payment_id": pa.array(range(PAYMENTS), pa.int64()),
                                     "order_id": pa.array(rng.integers(0, ORDERS, PAYMENTS), pa.int64()),
                                     "amount": pa.array(np.round(rng.gamma(2, 40, PAYMENTS), 2)),
                                     "method": pa.array(list(rng.choice(["card", "bank", "wallet", "cash", "cheque"], PAYMENTS))),
                                     "memo": pa.array([f"paid for order, reference {i} " + "x" * int(n)
                                                       for i, n in enumerate(rng.integers(50, 300, PAYMENTS))])})},
    }


# memos are free text: under this policy they never leave their silo
STRICT = {"classifications": {"public": [{"action": "allow"}], "free_text": [{"action": "deny"}]},
          "purposes": ["analytics"], "clients": {"coordinator": {"token_env": "FEDLAKE_TEST_UNSET_TOKEN",
                                                                 "purposes": ["analytics"], "roles": ["query", "coordinate"]}}}


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    """(federation, co-located DuckDB, connectors by silo) over the tables in three silos."""
    home = tmp_path_factory.mktemp("plans")
    tables = bank_tables()
    kinds = {"eu": ("postgres", "EU", {"embedded": "eu_pg"}), "us": ("s3", "US", {"path": "us_lake"}),
             "sg": ("parquet", "SG", {"path": "sg_lake"})}
    (home / "silos.yaml").write_text(yaml.safe_dump({"governed_zone": {"region": "EU"}, "silos": {
        name: {"kind": kind, "region": region, "connection": {"local": connection},
               "tables": {t: {c: "free_text" if c == "memo" else "public" for c in table.column_names}
                          for t, table in tables[name].items()}}
        for name, (kind, region, connection) in kinds.items()}}))
    (home / "policies.yaml").write_text(yaml.safe_dump(STRICT))
    catalog = load_catalog(home / "silos.yaml")
    colocated = duckdb.connect()
    connectors = {}
    for silo, silo_tables in tables.items():
        colocated.execute(f"CREATE SCHEMA {silo}")
        connectors[silo] = open_silo(catalog.silo(silo), "local", home)
        for name, table in silo_tables.items():
            connectors[silo].load(name, table.schema, table.to_batches(max_chunksize=1000))
            colocated.register("incoming", table)
            colocated.execute(f"CREATE TABLE {silo}.{name} AS SELECT * FROM incoming")
            colocated.unregister("incoming")
    policy = load_policy(home / "policies.yaml", catalog)
    clients = {s: local_agent_client(catalog, policy, s, home) for s in catalog.silos}
    yield Federation(catalog, clients, site=GOVERNED), colocated, connectors
    for client in clients.values():
        client.close()
    for connector in connectors.values():
        connector.close()


def rows(table: pa.Table) -> list[tuple]:
    return sorted((tuple(round(v, 6) if isinstance(v, float) else v for v in r.values()) for r in table.to_pylist()), key=repr)


def outputs(sql: str) -> list[str]:
    return sqlglot.parse_one(sql, read="duckdb").named_selects


@pytest.mark.parametrize("sql", [
    "SELECT o.order_id FROM eu.orders o WHERE EXISTS (SELECT * FROM sg.payments y WHERE y.order_id = o.order_id AND y.amount > 100)",
    "SELECT o.status, count(*) AS n FROM eu.orders o JOIN (SELECT * FROM sg.payments) AS y ON y.order_id = o.order_id GROUP BY o.status",
], ids=["exists", "derived"])
def test_a_star_in_a_subquery_ships_only_the_key_it_uses(bank, sql):
    """The payments' fragment selects the order id alone: the memo it never needed neither crosses
    nor gets the query refused under a policy that keeps memos home."""
    fed, colocated, _ = bank
    table, plan = fed.run(sql, "analytics")
    assert rows(table) == rows(colocated.execute(sql).fetch_arrow_table())
    [payments] = [r for r in plan.runs if r.fragment.silo == "sg"]
    assert outputs(payments.fragment.sql) == ["order_id"] and "memo" not in payments.fragment.sql
    assert payments.bytes < 16 * payments.rows  # one 8-byte key a row, no memo of 50 to 300 characters


def test_an_in_subquery_with_a_small_answer_reduces_the_other_side(bank):
    """The few frequent visitors (a grouped HAVING in another silo) reduce the orders like a
    semi-join: only their orders cross, not all of them."""
    fed, colocated, _ = bank
    sql = ("SELECT o.order_id, o.amount FROM eu.orders o WHERE o.person_id IN "
           "(SELECT v.person_id FROM us.visits v GROUP BY v.person_id HAVING count(*) > 30)")
    table, plan = fed.run(sql, "analytics")
    assert rows(table) == rows(colocated.execute(sql).fetch_arrow_table())
    [orders] = [r for r in plan.runs if r.fragment.silo == "eu"]
    [visits] = [r for r in plan.runs if r.fragment.silo == "us"]
    assert [(s.probe.name, [k.fragment for k in s.build]) for s in orders.semijoins] == [("person_id", [visits.fragment.name])]
    assert visits.rows == FREQUENT
    assert orders.rows < ORDERS / 10 and orders.rows >= table.num_rows


def test_an_in_subquery_across_silos_offers_its_exact_keys(bank):
    """A subquery that joins two silos is no fragment: the semi-join's keys are its result, a query
    over the fragments it reads, and the answer stays exact."""
    fed, colocated, _ = bank
    sql = ("SELECT p.id, p.region FROM eu.people p WHERE p.id IN (SELECT o.person_id FROM eu.orders o "
           "JOIN sg.payments y ON y.order_id = o.order_id GROUP BY o.person_id HAVING sum(y.amount) > 1000)")
    table, plan = fed.run(sql, "analytics")
    assert rows(table) == rows(colocated.execute(sql).fetch_arrow_table())
    names = {r.fragment.name: outputs(r.fragment.sql) for r in plan.runs}
    [exact] = [s for s in find_semijoins(plan.cut.residual, names) if s.keys_sql]
    people = next(r for r in plan.runs if "people" in r.fragment.tables)
    assert exact.probe.fragment == people.fragment.name and set(exact.reads) == set(names) - {people.fragment.name}


def statistics_of(connectors) -> dict:
    return {silo: {t: c.column_statistics(t) for t in c.list_tables()} for silo, c in connectors.items()}


def test_the_silos_statistics_decide_where_a_partial_aggregate_pays(bank):
    """Per person, the visits' partial sums are 300 groups of 2,000 rows: pushed. Per visit, as
    many groups as rows: the rows cross as they are, and the plan says why."""
    _, _, connectors = bank
    schema = {silo: {t: {f.name: sql_type(f.type) for f in c.schema(t)} for t in c.list_tables()} for silo, c in connectors.items()}
    statistics = statistics_of(connectors)
    few = cut_query("SELECT p.region, sum(v.duration) AS t FROM eu.people p JOIN us.visits v ON v.person_id = p.id "
                    "GROUP BY p.region", schema, statistics=statistics)
    assert next(f for f in few.fragments if f.silo == "us").partial.endswith("per person_id")
    many = cut_query("SELECT p.region, v.visit_id, sum(v.duration) AS t FROM eu.people p JOIN us.visits v "
                     "ON v.person_id = p.id GROUP BY p.region, v.visit_id", schema, statistics=statistics)
    visits = next(f for f in many.fragments if f.silo == "us")
    assert not visits.partial and "groups of 2,000 rows" in visits.notes[0]


def test_a_five_group_result_is_estimated_from_the_silos_statistics(bank):
    """Payments per method: five methods, so about five rows, whatever the payments' rows."""
    fed, _, connectors = bank
    sql = ("SELECT y.method, sum(o.amount) AS total FROM eu.orders o JOIN sg.payments y ON y.order_id = o.order_id "
           "GROUP BY y.method")
    statistics = statistics_of(connectors)
    plan = fed.plan(sql, "analytics")
    shapes = {r.fragment.name: (r.estimated_rows, unique_columns(r.fragment.sql)) for r in plan.runs}
    assert result_rows(plan.cut.residual, shapes) >= PAYMENTS / 2
    assert result_rows(plan.cut.residual, shapes, fragment_distinct(plan.cut.fragments, statistics)) == 5
