"""The residual's size estimate and the choice of its site, from the fragments' estimates alone."""

from __future__ import annotations

import pyarrow as pa
import pytest

from fedlake.arrow_types import arrow_width
from fedlake.query.placement import result_bytes, result_rows, site_costs, unique_columns

NONE = frozenset()


@pytest.mark.parametrize(
    ("sql", "unique"),
    [
        ("SELECT k, sum(v) AS s FROM t GROUP BY k", {"k"}),
        ("SELECT k AS key, count(*) AS n FROM t GROUP BY 1", {"key"}),
        ("SELECT k, max(v) AS m FROM t GROUP BY ALL", {"k"}),
        ("SELECT a, b, count(*) AS n FROM t GROUP BY a, b", set()),
        ("SELECT DISTINCT k FROM t", {"k"}),
        ("SELECT count(*) AS n, sum(v) AS s FROM t", {"n", "s"}),
        ("SELECT k, v FROM t", set()),
        ("SELECT x.k, x.s FROM (SELECT k, sum(v) AS s FROM t GROUP BY k) AS x WHERE x.s > 0", {"k"}),
    ],
)
def test_unique_columns_follow_group_by_distinct_and_projection(sql, unique):
    assert unique_columns(sql) == unique


FRAGMENTS = {"loans": (10_000, NONE), "people": (30_000, frozenset({"id"})), "moves": (500_000, NONE)}


@pytest.mark.parametrize(
    ("residual", "rows"),
    [
        # a key the other side is unique on keeps this side's rows, inner or left
        ("SELECT * FROM loans l LEFT JOIN people p ON p.id = l.person", 10_000),
        ("SELECT * FROM loans l JOIN people p ON l.person = p.id", 10_000),
        # grouping the many side on the key makes it unique on the key
        ("SELECT * FROM loans l LEFT JOIN (SELECT person, sum(x) AS s FROM moves GROUP BY person) m ON m.person = l.person", 10_000),
        ("WITH m AS (SELECT person, count(*) AS n FROM moves GROUP BY person) SELECT l.*, m.n FROM loans l JOIN m ON m.person = l.person", 10_000),
        # this side unique: the other side's rows
        ("SELECT * FROM people p JOIN moves m ON m.person = p.id", 500_000),
        ("SELECT count(*) AS n FROM people p JOIN moves m ON m.person = p.id", 1),
        ("SELECT * FROM loans UNION ALL SELECT * FROM loans", 20_000),
        ("SELECT * FROM moves ORDER BY 1 LIMIT 25", 25),
        ("SELECT * FROM loans, people", 300_000_000),
        # the planner's residual keeps a join's equalities in WHERE once it has pushed a join group
        ('SELECT * FROM "loans" AS "l" CROSS JOIN "people" AS "p" WHERE ((TRUE AND "p"."id" = "l"."person") AND TRUE)', 10_000),
        ("SELECT * FROM people p, moves m WHERE m.person = p.id AND m.x > 0", 500_000),
        ("SELECT * FROM loans l JOIN people p ON p.id = l.person OR p.id = l.other", 30_000),
    ],
)
def test_result_rows_follow_the_residuals_shape(residual, rows):
    assert result_rows(residual, FRAGMENTS) == rows


def test_result_bytes_are_rows_times_the_width_of_what_the_residual_returns():
    schemas = {"loans": pa.schema([("loan_id", pa.string()), ("principal", pa.float64()), ("person", pa.string())])}
    nbytes = result_bytes("SELECT loan_id, principal * 2 AS twice FROM loans", schemas, 1000, arrow_width)
    assert nbytes == 1000 * (arrow_width(pa.string()) + 8)


def test_each_silo_site_saves_its_own_fragments_and_pays_for_the_result():
    sites = site_costs([("eu", 600), ("us", 300), ("eu", 100), ("sg", 50)], result_bytes=200)
    by_site = {s.silo: s.estimated_bytes for s in sites}
    assert sites[0].silo is None and by_site[None] == 1050
    assert by_site == {None: 1050, "eu": 550, "us": 950, "sg": 1200}
    assert min(sites, key=lambda s: s.estimated_bytes).silo == "eu"


# statistics: the payments' method has 5 values, the people's region 4, the moves' person 20,000
DISTINCT = {"moves": {"person": 20_000, "method": 5}, "people": {"region": 4, "id": 30_000}}


@pytest.mark.parametrize(
    ("residual", "rows"),
    [
        # a 5-group result over 500,000 rows is 5 rows, not 500,000
        ("SELECT m.method, sum(m.x) AS s FROM moves m GROUP BY m.method", 5),
        ("SELECT m.method AS how, count(*) AS n FROM moves m JOIN people p ON p.id = m.person GROUP BY 1", 5),
        ("SELECT p.region, m.method, count(*) AS n FROM moves m JOIN people p ON p.id = m.person GROUP BY ALL", 20),
        ("SELECT DISTINCT m.method FROM moves m", 5),
        # the product of the keys' counts, never more than the rows grouped
        ("SELECT m.person, m.method, count(*) AS n FROM moves m GROUP BY m.person, m.method", 100_000),
        ("SELECT p.id, p.region, count(*) AS n FROM people p GROUP BY p.id, p.region", 30_000),
        # through a derived table and a CTE; a key without statistics keeps every row
        ("SELECT g.method, g.n FROM (SELECT method, count(*) AS n FROM moves GROUP BY method) AS g", 5),
        ("WITH g AS (SELECT person, method FROM moves) SELECT g.method, count(*) AS n FROM g GROUP BY g.method", 5),
        ("SELECT l.person, count(*) AS n FROM loans l GROUP BY l.person", 10_000),
    ],
)
def test_result_rows_of_a_grouped_result_follow_the_keys_distinct_counts(residual, rows):
    assert result_rows(residual, FRAGMENTS, distinct=DISTINCT) == rows


def test_without_statistics_a_group_by_keeps_its_rows():
    assert result_rows("SELECT m.method, sum(m.x) AS s FROM moves m GROUP BY m.method", FRAGMENTS) == 500_000


def test_a_distinct_count_above_the_fragments_rows_is_capped():
    few = {"moves": (40, NONE)}
    assert result_rows("SELECT m.person, count(*) AS n FROM moves m GROUP BY m.person", few, distinct=DISTINCT) == 40
