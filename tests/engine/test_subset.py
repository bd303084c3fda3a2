"""The SQL an agent accepts, as fixtures: what the subset takes, and the one line naming what it refuses."""

from __future__ import annotations

import time

import pytest

from fedlake.agent.subset import MAX_NESTING, Refused, parse_subset

ACCEPTED = [
    "SELECT a, count(*) AS n FROM t WHERE b > 1 AND c LIKE 'x%' GROUP BY a HAVING count(*) > 2 ORDER BY n DESC LIMIT 5 OFFSET 2",
    "WITH x AS (SELECT a FROM t) SELECT a FROM x UNION ALL SELECT a FROM u EXCEPT SELECT a FROM v",
    "SELECT t.a, u.b FROM t JOIN u ON u.k = t.k LEFT JOIN v ON v.k = t.k WHERE EXISTS (SELECT 1 FROM w WHERE w.k = t.k)",
    "SELECT CASE WHEN a IS NULL THEN 'none' ELSE upper(CAST(a AS VARCHAR)) END AS x, TRY_CAST(b AS INTEGER) AS y FROM t",
    "SELECT row_number() OVER (PARTITION BY a ORDER BY b) AS r, lag(b) OVER (ORDER BY b) AS p FROM t QUALIFY r = 1",
    "SELECT date_trunc('month', ts) AS m, EXTRACT(year FROM ts) AS y, coalesce(a, 0) AS z FROM t",
    "SELECT a FROM t WHERE a IN (1, 2, 3) AND b BETWEEN 1 AND 5 AND c NOT IN (SELECT c FROM u)",
    "SELECT a, b, grouping(a) AS g, sum(CAST(c AS DECIMAL(7, 2))) AS s FROM t GROUP BY ROLLUP (a, b)",
    "SELECT a, b, count(*) AS n FROM t GROUP BY CUBE (a, b)",
    "SELECT a, b, count(*) AS n FROM t GROUP BY GROUPING SETS ((a), (a, b), ())",
]

REFUSED = [
    ("SELECT COLUMNS('email') FROM t", "function columns()"),
    ("SELECT #2 FROM t", "POSITIONALCOLUMN"),
    ("SELECT * FROM read_parquet('/etc/passwd')", "table functions are refused"),
    ("SELECT * FROM main.t", "plain name in the silo"),
    ("SELECT error('x')", "function error()"),
    ("SELECT getenv('HOME')", "function getenv()"),
    ("SELECT list(a) FROM t", "function array_agg()"),
    ("SELECT unnest([a]) FROM t", "not in the accepted SQL subset"),
    ("SELECT a FROM t UNION ALL BY NAME SELECT a FROM u", "UNION BY NAME"),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n FROM r", "WITH RECURSIVE"),
    ("SELECT * EXCLUDE (a) FROM t", "EXCLUDE"),
    ("SELECT a FROM t LIMIT (SELECT count(*) FROM t)", "LIMIT takes a literal whole number"),
    ("SELECT CAST(a AS BLOB) FROM t", "CAST to"),
    ("SELECT __fl_m_t.a FROM t AS __fl_m_t", "reserved for the agent"),
    ("SELECT sum(a) FILTER (WHERE b) FROM t", "not in the accepted SQL subset"),
    ("DELETE FROM t", "only queries are accepted"),
    ("SELECT 1; SELECT 2", "exactly one query"),
    ("SELECT FROM WHERE", "does not parse"),
]


@pytest.mark.parametrize("sql", ACCEPTED)
def test_the_subset_accepts_what_analysts_write(sql):
    parse_subset(sql)


@pytest.mark.parametrize("sql, says", REFUSED, ids=[s for _, s in REFUSED])
def test_the_subset_refuses_naming_the_construct(sql, says):
    with pytest.raises(Refused, match=f"(?i){says.replace('(', '[(]').replace(')', '[)]')}"):
        parse_subset(sql)


def test_limits_come_before_parsing():
    started = time.perf_counter()
    for sql in ("SELECT " + "(" * (MAX_NESTING + 1) + "1" + ")" * (MAX_NESTING + 1),
                "SELECT 1 FROM t WHERE " + " OR ".join(f"a = {i}" for i in range(20_000)),
                " UNION ALL ".join("SELECT a FROM t" for _ in range(5000))):
        with pytest.raises(Refused, match="nests parentheses|characters|expression nodes|set operations"):
            parse_subset(sql)
    assert time.perf_counter() - started < 10
