"""Federated SQL over random tables spread across the three silo kinds: every query of the shapes
analysts write returns exactly what the same SQL returns on co-located copies of the tables."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
import sqlglot
import yaml

from fedlake.agent import local_agent_client
from fedlake.agent.gate import EgressDenied
from fedlake.catalog import load_catalog
from fedlake.agent import Forbidden
from fedlake.agent.protocol import Import, KeysFor, LocalFragment, RunResidual
from fedlake.errors import FedlakeError
from fedlake.keyset import KeySet, keyset_bytes
from fedlake.policy.model import load_policy
from fedlake.query import GOVERNED, Federation, PlanningError, render
from fedlake.query.semijoin import find_semijoins
from fedlake.silos import open_silo

TABLES = {
    "eu": {"people": 300, "orders": 1500},
    "us": {"visits": 2000, "products": 60},
    "sg": {"payments": 1200, "refunds": 150},
}


def random_tables(seed: int = 11) -> dict[str, dict[str, pa.Table]]:
    rng = np.random.default_rng(seed)

    def maybe_null(values: list, p: float = 0.05) -> list:
        return [None if rng.random() < p else v for v in values]

    start = dt.datetime(2025, 1, 1)
    n = TABLES
    people = pa.table({
        "id": pa.array(range(n["eu"]["people"]), pa.int64()),
        "name": pa.array([f"person {i % 250}" for i in range(n["eu"]["people"])]),
        "region": pa.array(maybe_null(list(rng.choice(["north", "south", "east", "west"], n["eu"]["people"])))),
        "born": pa.array([dt.date(1950, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 20000, n["eu"]["people"])], pa.date32()),
        "score": pa.array(maybe_null([round(float(x), 2) for x in rng.normal(50, 15, n["eu"]["people"])])),
    })
    orders = pa.table({
        "order_id": pa.array(range(n["eu"]["orders"]), pa.int64()),
        "person_id": pa.array(rng.integers(0, n["eu"]["people"] + 20, n["eu"]["orders"]), pa.int64()),
        "sku": pa.array([f"SKU{int(k):03d}" for k in rng.integers(0, 70, n["eu"]["orders"])]),
        "amount": pa.array(maybe_null([round(float(x), 2) for x in rng.gamma(2, 40, n["eu"]["orders"])])),
        "placed_at": pa.array([start + dt.timedelta(minutes=int(m)) for m in rng.integers(0, 525600, n["eu"]["orders"])], pa.timestamp("us")),
        "status": pa.array(list(rng.choice(["open", "shipped", "cancelled"], n["eu"]["orders"], p=[0.2, 0.7, 0.1]))),
    })
    visits = pa.table({
        "visit_id": pa.array(range(n["us"]["visits"]), pa.int64()),
        "person_id": pa.array(maybe_null([int(x) for x in rng.integers(0, n["eu"]["people"] + 50, n["us"]["visits"])]), pa.int64()),
        "ts": pa.array([start + dt.timedelta(seconds=int(s)) for s in rng.integers(0, 31536000, n["us"]["visits"])], pa.timestamp("us")),
        "duration": pa.array(rng.integers(1, 3600, n["us"]["visits"]), pa.int64()),
        "channel": pa.array(list(rng.choice(["web", "app", "store"], n["us"]["visits"]))),
    })
    products = pa.table({
        "sku": pa.array([f"SKU{k:03d}" for k in range(n["us"]["products"])]),
        "category": pa.array(list(rng.choice(["books", "games", "tools", "food"], n["us"]["products"]))),
        "price": pa.array([round(float(x), 2) for x in rng.uniform(1, 200, n["us"]["products"])]),
    })
    payments = pa.table({
        "payment_id": pa.array(range(n["sg"]["payments"]), pa.int64()),
        "order_id": pa.array(rng.integers(0, n["eu"]["orders"] + 100, n["sg"]["payments"]), pa.int64()),
        "amount": pa.array([round(float(x), 2) for x in rng.gamma(2, 40, n["sg"]["payments"])]),
        "paid_at": pa.array([start + dt.timedelta(hours=int(h)) for h in rng.integers(0, 8760, n["sg"]["payments"])], pa.timestamp("us")),
        "method": pa.array(maybe_null(list(rng.choice(["card", "bank", "wallet"], n["sg"]["payments"])))),
    })
    refunds = pa.table({
        "refund_id": pa.array(range(n["sg"]["refunds"]), pa.int64()),
        "payment_id": pa.array(rng.integers(0, n["sg"]["payments"], n["sg"]["refunds"]), pa.int64()),
        "amount": pa.array([round(float(x), 2) for x in rng.uniform(1, 50, n["sg"]["refunds"])]),
        "reason": pa.array(list(rng.choice(["damaged", "late", "other"], n["sg"]["refunds"]))),
    })
    return {"eu": {"people": people, "orders": orders}, "us": {"visits": visits, "products": products},
            "sg": {"payments": payments, "refunds": refunds}}


KINDS = {"eu": ("postgres", "EU", {"embedded": "eu_pg"}), "us": ("s3", "US", {"path": "us_lake"}), "sg": ("parquet", "SG", {"path": "sg_lake"})}


def write_catalog(home, kinds, tables) -> Path:
    """A silos.yaml declaring `tables` in silos of the given (kind, region, local connection)."""
    path = home / "silos.yaml"
    region = next(iter(kinds.values()))[1]
    path.write_text(yaml.safe_dump({"governed_zone": {"region": region}, "silos": {
        name: {"kind": kind, "region": region, "connection": {"local": connection},
               "tables": {t: {c: "public" for c in table.column_names} for t, table in tables[name].items()}}
        for name, (kind, region, connection) in kinds.items()
    }}))
    return path


def load_silos(home, kinds) -> tuple:
    """The random tables loaded into silos of the given kinds, and co-located in one DuckDB."""
    tables = random_tables()
    catalog = load_catalog(write_catalog(home, kinds, tables))
    colocated = duckdb.connect()
    for silo, silo_tables in tables.items():
        colocated.execute(f"CREATE SCHEMA {silo}")
        with open_silo(catalog.silo(silo), "local", home) as connector:
            for name, table in silo_tables.items():
                connector.load(name, table.schema, table.to_batches(max_chunksize=500))
                colocated.register("incoming", table)
                colocated.execute(f"CREATE TABLE {silo}.{name} AS SELECT * FROM incoming")
                colocated.unregister("incoming")
    return home, catalog, colocated


@pytest.fixture(scope="module")
def silos(tmp_path_factory):
    return load_silos(tmp_path_factory.mktemp("federated"), KINDS)


def federation_under(silos, policy: dict, **options) -> tuple[Federation, list]:
    home, catalog, _ = silos
    path = home / f"policies-{len(list(home.glob('policies*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump({
        "purposes": ["analytics"], "clients": {"coordinator": {"token_env": "FEDLAKE_TEST_UNSET_TOKEN", "purposes": ["analytics"],
                                                                      "roles": ["query", "coordinate"]}},
        **policy,
    }))
    clients = {s: local_agent_client(catalog, load_policy(path, catalog), s, home) for s in catalog.silos}
    return Federation(catalog, clients, **options), list(clients.values())


ALLOW_ALL = {"classifications": {"public": [{"action": "allow"}]}}


@pytest.fixture(scope="module")
def federation(silos):
    fed, clients = federation_under(silos, ALLOW_ALL)
    yield fed, silos[2], silos[1]
    for c in clients:
        c.close()


QUERIES = [
    # one silo: pushed whole
    "SELECT count(*) AS n, sum(amount) AS total FROM eu.orders WHERE status = 'shipped'",
    "SELECT region, count(*) AS n, avg(score) AS s FROM eu.people GROUP BY region HAVING count(*) > 10",
    "SELECT p.region, o.status, count(*) AS n FROM eu.orders o JOIN eu.people p ON p.id = o.person_id GROUP BY 1, 2",
    "SELECT category, max(price) AS top FROM us.products GROUP BY category",
    "SELECT method, count(*) AS n FROM sg.payments GROUP BY method",
    # many-way joins across silos
    "SELECT p.id, o.order_id, y.amount FROM eu.people p JOIN eu.orders o ON o.person_id = p.id JOIN sg.payments y ON y.order_id = o.order_id",
    "SELECT o.order_id, pr.category, y.amount, r.amount AS refunded FROM eu.orders o JOIN us.products pr ON pr.sku = o.sku "
    "JOIN sg.payments y ON y.order_id = o.order_id LEFT JOIN sg.refunds r ON r.payment_id = y.payment_id",
    "SELECT pr.category, count(DISTINCT o.person_id) AS buyers, sum(o.amount) AS revenue FROM eu.orders o JOIN us.products pr ON pr.sku = o.sku GROUP BY pr.category",
    "SELECT p.region, v.channel, count(*) AS visits FROM eu.people p JOIN us.visits v ON v.person_id = p.id GROUP BY ALL",
    "SELECT p.id FROM eu.people p LEFT JOIN us.visits v ON v.person_id = p.id WHERE v.visit_id IS NULL",
    "SELECT v.visit_id, p.name FROM us.visits v RIGHT JOIN eu.people p ON p.id = v.person_id AND v.duration > 1800",
    "SELECT p.id, v.visit_id FROM eu.people p FULL OUTER JOIN us.visits v ON v.person_id = p.id AND v.channel = 'app' WHERE p.score > 60 OR p.id IS NULL",
    "SELECT o.order_id, y.payment_id FROM eu.orders o, sg.payments y WHERE y.order_id = o.order_id AND o.amount > 100 AND y.method = 'card'",
    "SELECT o.order_id FROM eu.orders o JOIN sg.payments y ON y.order_id = o.order_id AND y.amount > o.amount",
    # CTEs
    "WITH spend AS (SELECT person_id, sum(amount) AS s FROM eu.orders GROUP BY person_id), "
    "seen AS (SELECT person_id, count(*) AS n FROM us.visits GROUP BY person_id) "
    "SELECT spend.person_id, spend.s, seen.n FROM spend JOIN seen ON seen.person_id = spend.person_id",
    "WITH big AS (SELECT * FROM sg.payments WHERE amount > 150) SELECT o.status, count(*) AS n FROM big JOIN eu.orders o ON o.order_id = big.order_id GROUP BY 1",
    "WITH a AS (SELECT sku FROM eu.orders WHERE status = 'open'), b AS (SELECT sku, price FROM us.products WHERE sku IN (SELECT sku FROM a)) SELECT sum(price) AS p FROM b",
    # IN / EXISTS / scalar subqueries, correlated too
    "SELECT id FROM eu.people WHERE id IN (SELECT person_id FROM us.visits WHERE channel = 'store')",
    "SELECT id FROM eu.people WHERE id NOT IN (SELECT person_id FROM us.visits WHERE person_id IS NOT NULL)",
    "SELECT order_id FROM eu.orders o WHERE EXISTS (SELECT 1 FROM sg.payments y WHERE y.order_id = o.order_id AND y.amount > 100)",
    "SELECT order_id FROM eu.orders o WHERE NOT EXISTS (SELECT 1 FROM sg.payments y WHERE y.order_id = o.order_id)",
    "SELECT p.id, (SELECT count(*) FROM us.visits v WHERE v.person_id = p.id) AS visits FROM eu.people p",
    "SELECT p.id, (SELECT max(v.duration) FROM us.visits v WHERE v.person_id = p.id AND v.channel = 'web') AS longest FROM eu.people p WHERE p.region = 'north'",
    "SELECT sku, price FROM us.products WHERE price > (SELECT avg(amount) FROM eu.orders)",
    "SELECT o.order_id FROM eu.orders o WHERE o.amount > (SELECT avg(y.amount) FROM sg.payments y WHERE y.order_id = o.order_id)",
    # GROUP BY / HAVING / CASE
    "SELECT CASE WHEN y.amount > 100 THEN 'big' WHEN y.amount > 30 THEN 'mid' ELSE 'small' END AS size, o.status, count(*) AS n "
    "FROM sg.payments y JOIN eu.orders o ON o.order_id = y.order_id GROUP BY 1, 2 HAVING count(*) >= 5",
    "SELECT o.person_id, sum(y.amount) - coalesce(sum(r.amount), 0) AS net FROM eu.orders o JOIN sg.payments y ON y.order_id = o.order_id "
    "LEFT JOIN sg.refunds r ON r.payment_id = y.payment_id GROUP BY o.person_id HAVING sum(y.amount) > 200",
    "SELECT sum(CASE WHEN v.channel = 'app' THEN 1 ELSE 0 END) AS app, sum(CASE WHEN p.region IS NULL THEN 1 ELSE 0 END) AS unknown FROM us.visits v JOIN eu.people p ON p.id = v.person_id",
    # window functions
    "SELECT o.order_id, y.amount, rank() OVER (PARTITION BY o.person_id ORDER BY y.amount DESC, y.payment_id) AS r FROM eu.orders o JOIN sg.payments y ON y.order_id = o.order_id",
    "SELECT person_id, placed_at, sum(amount) OVER (PARTITION BY person_id ORDER BY placed_at, order_id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running FROM eu.orders",
    "SELECT p.region, v.ts, lag(v.duration) OVER (PARTITION BY p.region ORDER BY v.ts, v.visit_id) AS prev FROM us.visits v JOIN eu.people p ON p.id = v.person_id",
    # ORDER BY / LIMIT
    "SELECT p.name, sum(y.amount) AS paid FROM eu.people p JOIN eu.orders o ON o.person_id = p.id JOIN sg.payments y ON y.order_id = o.order_id GROUP BY p.id, p.name ORDER BY paid DESC, p.id LIMIT 10",
    "SELECT sku, price FROM us.products ORDER BY price DESC, sku LIMIT 5",
    "SELECT v.visit_id, v.duration FROM us.visits v JOIN eu.people p ON p.id = v.person_id ORDER BY v.duration DESC, v.visit_id LIMIT 7 OFFSET 3",
    # date arithmetic
    "SELECT o.order_id FROM eu.orders o JOIN sg.payments y ON y.order_id = o.order_id WHERE y.paid_at > o.placed_at + INTERVAL 30 DAY",
    "SELECT date_trunc('month', placed_at) AS month, count(*) AS n FROM eu.orders GROUP BY 1",
    "SELECT date_diff('day', o.placed_at, y.paid_at) AS days, count(*) AS n FROM eu.orders o JOIN sg.payments y ON y.order_id = o.order_id GROUP BY 1",
    "SELECT p.id, extract(year FROM p.born) AS y FROM eu.people p JOIN us.visits v ON v.person_id = p.id WHERE v.ts >= DATE '2025-06-01'",
    "SELECT id, born FROM eu.people WHERE born + INTERVAL 40 YEAR < DATE '2026-01-01' AND region = 'east'",
    # set operations and DISTINCT
    "SELECT person_id FROM eu.orders UNION SELECT person_id FROM us.visits",
    "SELECT person_id FROM eu.orders INTERSECT SELECT person_id FROM us.visits",
    "SELECT person_id FROM us.visits EXCEPT SELECT id FROM eu.people",
    "SELECT DISTINCT o.status, pr.category FROM eu.orders o JOIN us.products pr ON pr.sku = o.sku",
    "SELECT amount FROM eu.orders WHERE amount > 190 UNION ALL SELECT amount FROM sg.payments WHERE amount > 190",
    # semi-joins: where the keys of a small side may and may not reduce the other
    "SELECT p.id, v.visit_id, v.duration FROM eu.people p JOIN us.visits v ON v.person_id = p.id WHERE p.region = 'north'",
    "WITH seen AS (SELECT person_id, count(*) AS n FROM us.visits GROUP BY person_id) "
    "SELECT p.id, seen.n, (SELECT max(n) FROM seen) AS most FROM eu.people p JOIN seen ON seen.person_id = p.id WHERE p.region = 'west'",
    "SELECT p.id, t.person_id FROM eu.people p JOIN (SELECT v.person_id FROM us.visits v JOIN sg.payments y ON y.payment_id = v.visit_id "
    "ORDER BY v.visit_id LIMIT 50) t ON t.person_id = p.id WHERE p.region = 'east'",
    "SELECT p.id, w.r FROM eu.people p JOIN (SELECT v.person_id, row_number() OVER (ORDER BY v.visit_id) AS r FROM us.visits v "
    "JOIN sg.payments y ON y.payment_id = v.visit_id) w ON w.person_id = p.id WHERE p.region = 'north'",
    "SELECT p.id, u.amount FROM eu.people p JOIN (SELECT person_id, amount FROM eu.orders UNION ALL "
    "SELECT person_id, duration AS amount FROM us.visits) u ON u.person_id = p.id WHERE p.region = 'south'",
    "SELECT o.order_id, s.paid FROM eu.orders o LEFT JOIN (SELECT order_id, sum(amount) AS paid FROM sg.payments GROUP BY order_id) s "
    "ON s.order_id = o.order_id WHERE o.status = 'cancelled'",
    # partial aggregation through a cross-silo join
    "SELECT p.region, sum(v.duration) AS total, count(*) AS n, avg(v.duration) AS mean, min(v.ts) AS first, "
    "max(v.duration) AS longest, count(v.person_id) AS c FROM eu.people p JOIN us.visits v ON v.person_id = p.id GROUP BY p.region",
    "SELECT o.status, count(*) AS n, sum(y.amount) AS paid FROM eu.orders o JOIN sg.payments y ON y.order_id = o.order_id "
    "WHERE y.method = 'card' GROUP BY o.status HAVING sum(y.amount) > 100 ORDER BY paid DESC",
    "SELECT sum(y.amount) AS paid, count(*) AS n, min(o.placed_at) AS first FROM eu.orders o JOIN sg.payments y ON y.order_id = o.order_id WHERE o.status = 'open'",
    "SELECT pr.category, min(o.placed_at) AS first, sum(o.amount) AS revenue, avg(o.amount) AS mean FROM eu.orders o "
    "JOIN us.products pr ON pr.sku = o.sku GROUP BY pr.category",
    "SELECT u.person_id, count(*) AS n, sum(u.amount) AS total, max(u.amount) AS top, avg(u.amount) AS mean FROM "
    "(SELECT person_id, amount FROM eu.orders WHERE status <> 'cancelled' UNION ALL SELECT person_id, duration FROM us.visits "
    "UNION ALL SELECT order_id, amount FROM sg.payments) AS u GROUP BY u.person_id HAVING count(*) > 2",
    "SELECT u.who, sum(u.paid) AS paid FROM (SELECT person_id, amount FROM eu.orders UNION ALL SELECT person_id, duration FROM us.visits) "
    "AS u(who, paid) GROUP BY u.who",
    "WITH everywhere AS (SELECT person_id AS who, amount FROM eu.orders UNION ALL SELECT person_id, duration FROM us.visits) "
    "SELECT p.region, sum(e.amount) AS total, count(e.amount) AS n FROM eu.people p JOIN everywhere e ON e.who = p.id GROUP BY p.region",
    # derived tables
    "SELECT t.category, avg(t.n) AS avg_n FROM (SELECT pr.category, o.person_id, count(*) AS n FROM eu.orders o JOIN us.products pr ON pr.sku = o.sku GROUP BY 1, 2) AS t GROUP BY t.category",
    # a table read for its rows alone (no column of it leaves: a placeholder column the agent accepts)
    "SELECT (SELECT count(*) FROM us.visits WHERE duration > 100) AS long_visits FROM eu.people WHERE region = 'north' LIMIT 1",
]


def normalized(table: pa.Table) -> list[tuple]:
    def cell(v):
        if isinstance(v, float):
            return round(v, 6)
        if isinstance(v, int) and not isinstance(v, bool):
            return round(float(v), 6)
        if hasattr(v, "total_seconds"):
            return v.total_seconds()
        return v

    return sorted((tuple(cell(v) for v in row.values()) for row in table.to_pylist()), key=repr)


def test_there_are_at_least_40_query_shapes():
    assert len(QUERIES) >= 40


@pytest.mark.parametrize("sql", QUERIES, ids=[f"q{i:02d}" for i in range(len(QUERIES))])
def test_federated_result_equals_colocated(federation, sql):
    fed, colocated, _ = federation
    expected = colocated.execute(sql).fetch_arrow_table()
    got, plan = fed.run(sql, "analytics")
    assert got.column_names == expected.column_names
    assert got.num_rows == expected.num_rows
    assert normalized(got) == normalized(expected)
    assert plan.result_rows == got.num_rows and all(run.rows is not None for run in plan.runs)


def test_single_silo_queries_are_pushed_whole(federation):
    fed, _, _ = federation
    plan = fed.plan(QUERIES[2], "analytics")
    [fragment] = plan.cut.fragments
    assert fragment.kind == "pushed" and fragment.silo == "eu" and set(fragment.tables) == {"orders", "people"}
    assert "GROUP BY" in fragment.sql and "JOIN" in fragment.sql
    assert plan.cut.residual == "SELECT * FROM __f0"


def test_filters_and_own_joins_go_into_the_silo(federation):
    fed, _, _ = federation
    plan = fed.plan(
        "SELECT p.id, y.amount FROM eu.people p JOIN eu.orders o ON o.person_id = p.id JOIN sg.payments y "
        "ON y.order_id = o.order_id AND y.method = 'card' WHERE o.status = 'open' AND p.score > 40", "analytics")
    by_silo = {f.silo: f for f in plan.cut.fragments}
    assert by_silo["eu"].kind == "join" and set(by_silo["eu"].tables) == {"people", "orders"}
    assert "'open'" in by_silo["eu"].sql and "40" in by_silo["eu"].sql
    assert by_silo["sg"].filters == ('"y"."method" = \'card\'',)
    assert "'card'" not in plan.cut.residual and "'open'" not in plan.cut.residual


def test_where_filters_still_go_into_the_silo_after_a_join_group_is_formed(federation):
    """Forming one silo's join group moves its ON conditions into WHERE; the other tables' filters
    there must still be found (through the nesting) and pushed, and the equi-join still reduce."""
    fed, colocated, _ = federation
    sql = ("SELECT p.region, sum(y.amount) AS paid FROM eu.orders o JOIN eu.people p ON p.id = o.person_id "
           "JOIN sg.payments y ON y.order_id = o.order_id WHERE y.method = 'card' AND p.region = 'north' GROUP BY p.region")
    table, plan = fed.run(sql, "analytics")
    assert normalized(table) == normalized(colocated.execute(sql).fetch_arrow_table())
    payments = next(r for r in plan.runs if r.fragment.silo == "sg")
    assert payments.fragment.filters == ('"y"."method" = \'card\'',)
    # payments' order ids are nearly as many as its rows: grouping by them in the silo would not reduce
    assert not payments.fragment.partial and any("partial aggregation per order_id not pushed" in n for n in payments.notes)
    outputs = {r.fragment.name: sqlglot.parse_one(r.fragment.sql, read="duckdb").named_selects for r in plan.runs}
    assert payments.fragment.name in {c.probe.fragment for c in find_semijoins(plan.cut.residual, outputs)}


def test_only_used_columns_cross(federation):
    fed, _, _ = federation
    plan = fed.plan("SELECT count(*) AS n FROM eu.orders o JOIN us.products pr ON pr.sku = o.sku WHERE pr.price > 100", "analytics")
    us = next(f for f in plan.cut.fragments if f.silo == "us")
    assert '"sku"' in us.sql and '"category"' not in us.sql and '"price" AS' not in us.sql


def test_explain_analyze_shows_fragments_sites_and_bytes(federation):
    fed, _, catalog = federation
    sql = QUERIES[14]
    at_governed = Federation(fed.catalog, fed.clients, site=GOVERNED)
    plan = at_governed.plan(sql, "analytics")
    text = render(plan, catalog)
    assert "fragment __f0 at silo eu (postgres, EU): pushed whole" in text
    assert "fragment __f1 at silo us (s3, US): pushed whole" in text
    assert "border (crosses US -> EU): estimated" in text and "policy: person_id: ALLOW" in text
    assert "residual at the governed zone (EU, DuckDB)" in text
    _, ran = at_governed.run(sql, "analytics")
    analyzed = render(ran, catalog, analyze=True)
    assert "actual" in analyzed and f"{ran.bytes_crossing:,}" in analyzed


SEMIJOIN = QUERIES[QUERIES.index(next(q for q in QUERIES if q.startswith("SELECT p.id, v.visit_id, v.duration")))]


def test_semijoin_sends_only_rows_that_can_join(federation):
    """A small side's keys go into the other silo: fewer rows and bytes cross, same result."""
    fed, colocated, catalog = federation
    reduced_table, reduced = fed.run(SEMIJOIN, "analytics")
    plain_table, plain = Federation(fed.catalog, fed.clients, semijoins=False).run(SEMIJOIN, "analytics")
    assert normalized(reduced_table) == normalized(plain_table) == normalized(colocated.execute(SEMIJOIN).fetch_arrow_table())
    visits = next(r for r in reduced.runs if r.fragment.silo == "us")
    unreduced = next(r for r in plain.runs if r.fragment.silo == "us")
    north = colocated.execute("SELECT count(*) FROM eu.people WHERE region = 'north'").fetchone()[0]
    [(count, nbytes)] = visits.filters.values()
    assert count == north and nbytes == visits.filter_bytes == keyset_bytes(north) < 2 * north  # a Bloom filter
    assert unreduced.rows == TABLES["us"]["visits"] and visits.rows < unreduced.rows / 2
    assert reduced.bytes_crossing < plain.bytes_crossing
    assert "semi-join" in render(reduced, catalog, analyze=True)


def test_semijoin_keeps_to_what_the_reduced_rows_feed(federation):
    """Rows the people's keys would drop that another part of the query still reads (a CTE used
    twice, LIMIT or a window above the join) keep the fragment whole."""
    fed, _, _ = federation
    for sql in (QUERIES[QUERIES.index(SEMIJOIN) + i] for i in (1, 2, 3)):
        plan = fed.plan(sql, "analytics", with_estimates=False)
        silo_of = {r.fragment.name: r.fragment.silo for r in plan.runs}
        by_people = [r for r in plan.runs for s in r.semijoins if any(silo_of[k.fragment] == "eu" for k in s.build)]
        assert by_people == [], sql
    union = fed.plan(QUERIES[QUERIES.index(SEMIJOIN) + 4], "analytics", with_estimates=False)
    assert sorted(r.fragment.silo for r in union.runs if r.semijoins) == ["eu", "us"]


def test_semijoin_keys_only_go_where_the_policy_lets_them(silos):
    """If the build side's key may not travel to the probe silo's region, the keys stay home."""
    policy = {"classifications": {"public": [{"action": "allow"}]},
              "overrides": {"eu.people.id": [{"to": ["EU"], "action": "allow"}, {"action": "deny"}]}}
    fed, clients = federation_under(silos, policy)
    try:
        table, plan = fed.run(SEMIJOIN, "analytics")
    finally:
        for c in clients:
            c.close()
    visits = next(r for r in plan.runs if r.fragment.silo == "us")
    assert visits.semijoins == [] and visits.rows == TABLES["us"]["visits"]
    assert any("eu may not send id to US" in note for note in visits.notes)
    assert normalized(table) == normalized(silos[2].execute(SEMIJOIN).fetch_arrow_table())


PARTIAL = next(q for q in QUERIES if q.startswith("SELECT p.region, sum(v.duration)"))


def test_partial_aggregation_goes_through_the_join_into_the_silo(federation):
    """The visits' silo sends one partial row per person (sums, counts, minima) instead of every visit."""
    fed, colocated, catalog = federation
    table, plan = fed.run(PARTIAL, "analytics")
    assert normalized(table) == normalized(colocated.execute(PARTIAL).fetch_arrow_table())
    visits = next(r for r in plan.runs if r.fragment.silo == "us")
    assert visits.fragment.partial.endswith("per person_id") and "GROUP BY" in visits.fragment.sql
    people = colocated.execute("SELECT count(DISTINCT person_id) FROM us.visits").fetchone()[0]
    assert visits.rows <= people + 1 < TABLES["us"]["visits"]
    assert "partial aggregation in silo: " in render(plan, catalog, analyze=True)


def test_partial_aggregation_goes_into_every_branch_of_a_union_across_silos(federation):
    """Per person across all regions: each silo sends its partial count, sum and maximum per person."""
    fed, colocated, _ = federation
    sql = next(q for q in QUERIES if q.startswith("SELECT u.person_id, count(*)"))
    table, plan = fed.run(sql, "analytics")
    assert normalized(table) == normalized(colocated.execute(sql).fetch_arrow_table())
    assert {r.fragment.silo for r in plan.runs if r.fragment.partial.endswith("per person_id")} == {"eu", "us", "sg"}
    visits = next(r for r in plan.runs if r.fragment.silo == "us")
    assert visits.rows < TABLES["us"]["visits"] / 5


AGGREGATE_ONLY = {"classifications": {"public": [{"action": "allow"}]}, "subjects": {"visits": "person_id"},
                  "overrides": {"us.visits.duration": [{"action": "aggregate"}]},
                  "dp": {"epsilon": 1.0, "delta": 1.0e-6, "budget": {"epsilon": 1000.0, "delta": 1.0e-3, "period": "day"},
                         "max_rows_per_subject": 5, "bounds": {"us.visits.duration": [0, 3600]}}}
BY_REGION = "SELECT p.region, sum(v.duration) AS total, count(*) AS n FROM eu.people p JOIN us.visits v ON v.person_id = p.id GROUP BY p.region"
BY_CHANNEL = "SELECT channel, sum(v.duration) AS total, count(*) AS n FROM us.visits v GROUP BY channel"


def run_under(silos, policy: dict, sql: str):
    fed, clients = federation_under(silos, policy)
    try:
        return fed.run(sql, "analytics")
    finally:
        for c in clients:
            c.close()


def test_aggregate_only_data_of_one_silo_leaves_through_differential_privacy(silos):
    """Durations leave the US only aggregated: per channel, the silo bounds each person's visits,
    clamps the durations and releases noisy sums and counts calibrated by OpenDP, close to the
    truth on groups this large; the plan and the ledger say so."""
    fed, clients = federation_under(silos, AGGREGATE_ONLY)
    try:
        plan = fed.plan(BY_CHANNEL, "analytics")
        table, _ = fed.run(BY_CHANNEL, "analytics")
    finally:
        for c in clients:
            c.close()
    exact = {r["channel"]: r for r in silos[2].execute(BY_CHANNEL).fetch_arrow_table().to_pylist()}
    released = {r["channel"]: r for r in table.to_pylist()}
    assert set(released) == set(exact)
    for channel, row in released.items():
        assert abs(row["n"] - exact[channel]["n"]) < 0.5 * exact[channel]["n"]  # bounded to 5 visits per person, noised
        assert row["total"] != exact[channel]["total"]
    assert {d["output"]: d["action"] for d in plan.runs[0].decisions} == {"channel": "allow", "total": "aggregate", "n": "aggregate"}


def test_no_partial_aggregation_or_rows_across_silos_for_aggregate_only_data(silos):
    """Grouping durations by another silo's people would need the visits' rows, or partial sums
    combined without their noise: neither may leave, and the error names the column and the rule."""
    fed, clients = federation_under(silos, AGGREGATE_ONLY)
    try:
        plan = fed.plan(BY_REGION, "analytics")
        with pytest.raises(EgressDenied) as denied:
            fed.run(BY_REGION, "analytics")
    finally:
        for c in clients:
            c.close()
    visits = next(r for r in plan.runs if r.fragment.silo == "us")
    assert not visits.fragment.partial and any("only with differential privacy" in n for n in visits.notes)
    assert "us.visits.duration may leave only through differentially private" in str(denied.value)
    assert "overrides.us.visits.duration[0]" in str(denied.value)


def test_a_residual_is_only_a_coordinators_to_place(silos):
    """Placing a residual, preparing a transfer and posting semi-join keys need the coordinate role;
    a coordinator's residual may import only catalogued silos' agents over TLS."""
    fed, clients = federation_under(silos, {**AGGREGATE_ONLY, "clients": {
        "coordinator": {"token_env": "FEDLAKE_TEST_UNSET_TOKEN", "purposes": ["analytics"], "roles": ["query"]}}})
    request = RunResidual("r", "analytics", "SELECT * FROM __f0", local=(LocalFragment("__f0", "SELECT channel FROM visits"),))
    try:
        with pytest.raises(Forbidden, match="lacks the role 'coordinate'"):
            fed.clients["us"].residual(request)
        with pytest.raises(Forbidden, match="lacks the role 'coordinate'"):
            fed.clients["eu"].prepare_transfer("SELECT id FROM people", "analytics", "us")
    finally:
        for c in clients:
            c.close()
    fed, clients = federation_under(silos, ALLOW_ALL)
    try:
        for silo, location in (("mars", "grpc+tls://10.0.0.1:443"), ("eu", "grpc://127.0.0.1:1"), ("us", "inprocess://x")):
            dialled = replace(request, imports=(Import("__f1", silo, location, "t"),))
            with pytest.raises(FedlakeError, match="an import must name another catalogued silo"):
                fed.clients["us"].residual(dialled)
    finally:
        for c in clients:
            c.close()


@pytest.mark.parametrize(
    "extra",
    [
        {"eu.people.id": [{"to": ["EU"], "action": "allow"}, {"action": "deny"}]},
        {"us.visits.duration": [{"to": ["US"], "action": "aggregate"}, {"action": "deny"}]},
    ],
    ids=["keys may not travel", "denied outright"],
)
def test_where_no_site_complies_the_error_names_the_column_and_the_rule(silos, extra):
    policy = {**AGGREGATE_ONLY, "overrides": {**AGGREGATE_ONLY["overrides"], **extra}}
    with pytest.raises(EgressDenied) as denied:
        run_under(silos, policy, BY_REGION)
    assert "us.visits.duration" in str(denied.value) and "overrides.us.visits.duration[" in str(denied.value)


@pytest.mark.parametrize(
    "sql, says",
    [
        ("SELECT * FROM eu.nope", "unknown table eu.nope"),
        ("SELECT * FROM mars.people", "unknown silo 'mars'"),
        ("SELECT no_such_column FROM eu.people", "unknown column 'no_such_column' in eu.people"),
        ("DELETE FROM eu.people", "exactly one SELECT"),
        ("SELECT FROM WHERE", "cannot parse"),
    ],
)
def test_bad_queries_are_clear_errors(federation, sql, says):
    fed, _, _ = federation
    with pytest.raises(PlanningError, match=says):
        fed.run(sql, "analytics")


@pytest.mark.parametrize("sql", QUERIES, ids=[f"q{i:02d}" for i in range(len(QUERIES))])
def test_the_result_is_the_same_wherever_the_residual_runs(federation, sql):
    """The residual run in each silo the query reads (its other fragments sent there agent to agent)
    returns what co-located DuckDB returns."""
    fed, colocated, catalog = federation
    expected = normalized(colocated.execute(sql).fetch_arrow_table())
    for silo in sorted({f.silo for f in fed.plan(sql, "analytics", with_estimates=False).cut.fragments}):
        got, plan = Federation(catalog, fed.clients, site=silo).run(sql, "analytics")
        assert plan.site == silo and normalized(got) == expected, silo
        assert plan.result_rows == got.num_rows and all(run.rows is not None for run in plan.runs)


# the orders meet the payments: one row of result, many rows of fragments
PLACED = ("SELECT count(*) AS n, sum(y.amount) AS paid, max(o.amount) AS top FROM eu.orders o "
          "JOIN sg.payments y ON y.order_id = o.order_id")


def test_the_residual_runs_where_it_moves_the_fewest_bytes(federation):
    """The orders stay in their silo, the payments go straight to its agent, and only the one row of
    the result crosses to the governed zone: fewer bytes than at the governed zone."""
    fed, colocated, catalog = federation
    ledger = fed.clients["eu"].agent.ledger
    before = ledger.last_seq()
    table, placed = fed.run(PLACED, "analytics")
    _, governed = Federation(catalog, fed.clients, site=GOVERNED).run(PLACED, "analytics")
    assert normalized(table) == normalized(colocated.execute(PLACED).fetch_arrow_table())
    assert placed.site == "eu" and governed.site is None
    orders = next(r for r in placed.runs if r.fragment.silo == "eu")
    payments = next(r for r in placed.runs if r.fragment.silo == "sg")
    assert orders.at_site and orders.rows == TABLES["eu"]["orders"] and not payments.at_site
    assert placed.bytes_crossing == payments.bytes + payments.filter_bytes + placed.result_bytes
    at_governed = next(r for r in governed.runs if r.fragment.silo == "eu")
    assert placed.bytes_crossing < governed.bytes_crossing - at_governed.bytes / 2
    assert placed.bytes_by_silo() == {"eu": placed.result_bytes, "sg": payments.bytes}
    chosen = {s.silo: s.estimated_bytes for s in placed.sites}
    assert chosen["eu"] == min(chosen.values()) and set(chosen) == {None, "eu", "sg"}
    text = render(placed, catalog, analyze=True)
    assert "residual at silo eu (postgres, EU; DuckDB in its agent)" in text
    assert "stays in silo eu, where the residual runs" in text and "crosses SG -> EU, to silo eu's agent" in text
    assert "silo eu" in text and "(chosen)" in text
    # the audit: sg's agent sent its fragment to eu's agent, whose residual's result left for the governed zone
    entries = ledger.entries(after=before)
    sent = [e for e in entries if e["silo"] == "sg" and e["operation"] == "query"]
    residual = [e for e in entries if e["silo"] == "eu" and e["operation"] == "residual"]
    assert sent and sent[0]["rows"] == payments.rows
    assert residual and residual[0]["rows"] == table.num_rows and residual[0]["destination"] == "EU"


def test_a_silo_the_policy_would_not_let_fragments_reach_is_not_a_site(silos):
    """us would move the fewest bytes, but sg's payment ids reach the US only pseudonymized, not as
    the governed zone gets them (and the join needs them as they are): the residual runs elsewhere,
    EXPLAIN says why, and asking for us is an error naming the column."""
    sql = ("SELECT count(*) AS n, sum(y.amount) AS paid, max(v.duration) AS longest FROM us.visits v "
           "JOIN sg.payments y ON y.payment_id = v.visit_id")
    policy = {"classifications": {"public": [{"action": "allow"}]},
              "overrides": {"sg.payments.payment_id": [{"to": ["EU", "SG"], "action": "allow"}, {"action": "pseudonymize"}]}}
    fed, clients = federation_under(silos, policy)
    try:
        table, plan = fed.run(sql, "analytics")
        with pytest.raises(PlanningError, match="may not run in silo us: sg may not send payments.payment_id to US as it sends"):
            Federation(fed.catalog, fed.clients, site="us").plan(sql, "analytics")
        # the sending agent checks it too, whatever the planner asked
        payments = next(r for r in plan.runs if r.fragment.silo == "sg")
        with pytest.raises(EgressDenied, match="to us \\(US\\) denied: the policy masks payments.payment_id there otherwise"):
            fed.clients["sg"].prepare_transfer(payments.fragment.sql, "analytics", "us")
    finally:
        for c in clients:
            c.close()
    assert normalized(table) == normalized(silos[2].execute(sql).fetch_arrow_table())
    us = next(s for s in plan.sites if s.silo == "us")
    assert us.estimated_bytes == min(s.estimated_bytes for s in plan.sites)
    assert "sg may not send payments.payment_id" in us.blocked and plan.site == "sg"
    assert "(not allowed: sg may not send" in render(plan, fed.catalog)


def test_a_transfer_capability_is_for_one_stream_and_its_keys(federation):
    fed, _, _ = federation
    from fedlake.agent import Forbidden, Unauthenticated
    from fedlake.agent.peers import open_peer

    eu = fed.clients["eu"]
    ticket = eu.prepare_transfer("SELECT id, region FROM people", "analytics", "sg")
    peer = open_peer(eu.location, ticket, None)
    caller = eu.agent.authenticate_transfer(ticket)
    with pytest.raises(Forbidden, match="redeems only the fragment it was made for"):
        eu.agent.fragments.attach(caller, KeysFor("another-ticket", "id"), KeySet.of(pa.array([1]), "integer"))
    with pytest.raises(FedlakeError, match="semi-join keys are text, column 'id' is int"):
        eu.agent.fragments.attach(caller, KeysFor(ticket, "id"), KeySet.of(pa.array(["1"]), "text"))
    kept = peer.fetch([("id", KeySet.of(pa.array([1, 2, 3]), "integer"), "people.id = x.id")]).read_all()
    assert sorted(kept.column("id").to_pylist()) == [1, 2, 3]
    with pytest.raises(Unauthenticated, match="unknown, spent or expired"):
        peer.fetch()
    ticket = eu.prepare_transfer("SELECT id, region FROM people", "analytics", "sg")
    caller = eu.agent.authenticate_transfer(ticket)
    with pytest.raises(Forbidden, match="does not allow action 'list_tables'"):
        eu.agent.action(caller, "list_tables", {})
    with pytest.raises(Forbidden, match="only redeems"):
        eu.agent.stream(caller, "SELECT * FROM people", "analytics", "EU")
    with pytest.raises(Unauthenticated, match="unknown, spent or expired"):
        eu.agent.authenticate_transfer("0" * 64)


def test_a_residual_reads_only_its_fragments(federation):
    fed, _, _ = federation
    for sql in ("SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM people", "SELECT * FROM eu.orders"):
        request = RunResidual("r", "analytics", sql, local=(LocalFragment("__f0", "SELECT id FROM people"),))
        with pytest.raises(FedlakeError, match="may read only its fragments"):
            fed.clients["eu"].residual(request).read_all()
