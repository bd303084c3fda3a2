"""Where the planner may send a small side's keys into another fragment, and where it must not."""

from __future__ import annotations

import duckdb
import pytest

from fedlake.query.semijoin import Column, SemiJoin, choose_semijoins, find_semijoins

# __f3: a subquery pushed whole into a silo, e.g. the keys a grouped HAVING keeps
FRAGMENTS = {"__f0": ["id", "region"], "__f1": ["person_id", "amount"], "__f2": ["person_id", "amount"], "__f3": ["person_id"]}


def probes(residual: str) -> set[tuple[str, str, tuple[str, ...]]]:
    return {(s.probe.fragment, s.probe.name, tuple(k.fragment for k in s.build)) for s in find_semijoins(residual, FRAGMENTS)}


def test_inner_join_may_reduce_either_side():
    found = probes('SELECT p.id FROM "__f0" AS p JOIN "__f1" AS o ON o.person_id = p.id')
    assert found == {("__f1", "person_id", ("__f0",)), ("__f0", "id", ("__f1",))}


def test_left_join_reduces_only_its_right_side():
    assert probes('SELECT p.id FROM "__f0" AS p LEFT JOIN "__f1" AS o ON o.person_id = p.id') == {("__f1", "person_id", ("__f0",))}
    assert probes('SELECT p.id FROM "__f0" AS p FULL JOIN "__f1" AS o ON o.person_id = p.id') == set()


def test_through_group_by_on_the_key_and_union_branches():
    grouped = 'SELECT p.id, s.t FROM "__f0" AS p JOIN (SELECT person_id, sum(amount) AS t FROM "__f1" GROUP BY person_id) AS s ON s.person_id = p.id'
    assert ("__f1", "person_id", ("__f0",)) in probes(grouped)
    union = 'SELECT p.id FROM "__f0" AS p JOIN (SELECT * FROM "__f1" UNION ALL SELECT * FROM "__f2") AS u ON u.person_id = p.id'
    assert {("__f1", "person_id", ("__f0",)), ("__f2", "person_id", ("__f0",))} <= probes(union)


def test_not_through_what_would_see_the_missing_rows():
    other_group = 'SELECT p.id FROM "__f0" AS p JOIN (SELECT amount, min(person_id) AS person_id FROM "__f1" GROUP BY amount) AS s ON s.person_id = p.id'
    limited = 'SELECT p.id FROM "__f0" AS p JOIN (SELECT person_id FROM "__f1" ORDER BY amount LIMIT 5) AS s ON s.person_id = p.id'
    windowed = 'SELECT p.id FROM "__f0" AS p JOIN (SELECT person_id, rank() OVER (ORDER BY amount) AS r FROM "__f1") AS s ON s.person_id = p.id'
    for residual in (other_group, limited, windowed):
        assert not any(probe == "__f1" for probe, _, _ in probes(residual)), residual


def test_a_cte_read_elsewhere_too_is_reduced_only_if_every_reader_is():
    both = ('WITH o AS (SELECT * FROM "__f1") SELECT p.id FROM "__f0" AS p LEFT JOIN o ON o.person_id = p.id '
            'LEFT JOIN o AS o2 ON o2.person_id = p.id')
    assert ("__f1", "person_id", ("__f0",)) in probes(both)
    one = ('WITH o AS (SELECT * FROM "__f1") SELECT p.id, (SELECT max(amount) FROM o) AS top FROM "__f0" AS p '
           'LEFT JOIN o ON o.person_id = p.id')
    assert not any(probe == "__f1" for probe, _, _ in probes(one))


def test_a_probe_may_take_filters_on_several_columns():
    residual = ('SELECT p.id FROM "__f0" AS p JOIN "__f1" AS o ON o.person_id = p.id '
                'JOIN "__f2" AS y ON y.person_id = o.amount')
    candidates = find_semijoins(residual, FRAGMENTS)
    estimates = {"__f0": (1_000, 40_000), "__f1": (100_000, 4_000_000), "__f2": (2_000, 80_000)}
    chosen = {(s.probe, s.build) for s in choose_semijoins(candidates, estimates)}
    assert chosen == {
        (Column("__f1", "person_id"), (Column("__f0", "id"),)),
        (Column("__f1", "amount"), (Column("__f2", "person_id"),)),
    }


def test_a_join_inside_a_cte_reduces_what_the_cte_reads_whatever_reads_the_cte():
    residual = ('WITH linked AS (SELECT l.person_id, p.region FROM "__f1" AS l JOIN "__f0" AS p ON p.id = l.person_id) '
                'SELECT x.region, count(*) FROM linked AS x GROUP BY x.region')
    assert ("__f1", "person_id", ("__f0",)) in probes(residual)
    read_twice = ('WITH o AS (SELECT * FROM "__f1"), linked AS (SELECT o.person_id FROM o JOIN "__f0" AS p ON p.id = o.person_id) '
                  'SELECT count(*) FROM linked UNION ALL SELECT count(*) FROM o')
    assert not any(probe == "__f1" for probe, _, _ in probes(read_twice))


def test_choice_takes_the_cheap_filter_for_the_big_probe_and_makes_no_cycle():
    candidates = find_semijoins('SELECT p.id FROM "__f0" AS p JOIN "__f1" AS o ON o.person_id = p.id', FRAGMENTS)
    chosen = choose_semijoins(candidates, {"__f0": (1_000, 40_000), "__f1": (100_000, 4_000_000)})
    assert [(s.probe, s.build) for s in chosen] == [(Column("__f1", "person_id"), (Column("__f0", "id"),))]
    # a filter as big as what it would save is not sent; nor is one without an estimate
    assert choose_semijoins(candidates, {"__f0": (100_000, 200_000), "__f1": (100_000, 200_000)}) == []
    assert choose_semijoins(candidates, {"__f0": None, "__f1": (100_000, 4_000_000)}) == []
    # a key set is a Bloom filter of about 1.2 bytes a key: 1,000 keys pay against a probe of 4 kB,
    # where their 64-bit hashes (8 kB) would not
    chosen = choose_semijoins(candidates, {"__f0": (1_000, 2_000), "__f1": (1_000, 4_000)})
    assert [(s.probe, s.build) for s in chosen] == [(Column("__f1", "person_id"), (Column("__f0", "id"),))]


ACROSS = ('SELECT p.id FROM "__f0" AS p WHERE p.id IN (SELECT o.person_id FROM "__f1" AS o JOIN "__f2" AS y '
          'ON y.person_id = o.amount GROUP BY o.person_id HAVING count(*) > 13)')
MEMBERSHIPS = [
    'SELECT p.id FROM "__f0" AS p WHERE p.id IN (SELECT * FROM "__f3")',
    ACROSS,
    'SELECT p.id FROM "__f0" AS p WHERE p.region = \'north\' AND EXISTS (SELECT 1 FROM "__f1" AS o WHERE o.person_id = p.id AND o.amount > 5)',
    'SELECT p.id FROM "__f0" AS p WHERE NOT EXISTS (SELECT 1 FROM "__f1" AS o WHERE o.person_id = p.id)',
    'SELECT p.id FROM "__f0" AS p WHERE EXISTS (SELECT count(*) FROM "__f1" AS o WHERE o.person_id = p.id)',
    'SELECT p.id, (SELECT sum(o.amount) FROM "__f1" AS o WHERE o.person_id = p.id) AS paid FROM "__f0" AS p',
    'SELECT p.id FROM "__f0" AS p WHERE p.id NOT IN (SELECT * FROM "__f3")',
    'SELECT p.id FROM "__f0" AS p WHERE p.id IN (SELECT * FROM "__f3") OR p.region = \'north\'',
    'WITH k AS (SELECT o.person_id FROM "__f1" AS o JOIN "__f2" AS y ON y.person_id = o.amount) '
    'SELECT p.id FROM "__f0" AS p WHERE p.id IN (SELECT k.person_id FROM k)',
]


def test_an_in_subquery_reduces_the_outer_side_and_the_other_way():
    assert probes(MEMBERSHIPS[0]) == {("__f0", "id", ("__f3",)), ("__f3", "person_id", ("__f0",))}


def test_an_in_subquery_across_silos_gives_its_exact_keys_as_a_query():
    """A grouped HAVING over two fragments keeps a few keys: the semi-join's keys are the
    subquery's result, not every key of the fragment it reads."""
    [outer] = [s for s in find_semijoins(ACROSS, FRAGMENTS) if s.probe == Column("__f0", "id")]
    assert outer.build == (Column("__f1", "person_id"),) and outer.reads == ("__f1", "__f2")
    assert outer.sources == {"__f1", "__f2"}
    db = fragments_db()
    assert sorted(db.execute(outer.keys_sql).fetchall(), key=repr) == sorted(db.execute(
        'SELECT o.person_id FROM "__f1" AS o JOIN "__f2" AS y ON y.person_id = o.amount GROUP BY 1 HAVING count(*) > 13').fetchall(), key=repr)
    assert 0 < len(db.execute(outer.keys_sql).fetchall()) < len(db.execute('SELECT DISTINCT person_id FROM "__f1"').fetchall())


def test_exists_reduces_both_sides_and_not_exists_only_the_rows_it_looks_for():
    both = {("__f1", "person_id", ("__f0",)), ("__f0", "id", ("__f1",))}
    assert probes(MEMBERSHIPS[2]) == both
    assert probes(MEMBERSHIPS[3]) == {("__f1", "person_id", ("__f0",))}
    # an aggregate without GROUP BY makes a row for every outer row: the outer side stays whole
    assert probes(MEMBERSHIPS[4]) == {("__f1", "person_id", ("__f0",))}
    assert probes(MEMBERSHIPS[5]) == {("__f1", "person_id", ("__f0",))}


def test_not_in_and_in_under_or_reduce_nothing():
    assert probes(MEMBERSHIPS[6]) == set()
    assert probes(MEMBERSHIPS[7]) == set()


def test_keys_computed_from_fragments_never_wait_for_keys_themselves():
    candidates = find_semijoins(ACROSS, FRAGMENTS)
    estimates = {"__f0": (1_000_000, 40_000_000), "__f1": (50_000, 1_000_000), "__f2": (10_000, 200_000)}
    chosen = choose_semijoins(candidates, estimates)
    reduced_by_the_subquery = [s for s in chosen if s.probe.fragment == "__f0"]
    assert reduced_by_the_subquery and reduced_by_the_subquery[0].keys_sql
    assert not any(s.probe.fragment in {"__f1", "__f2"} for s in chosen)


def fragments_db() -> duckdb.DuckDBPyConnection:
    db = duckdb.connect()
    db.execute("CREATE TABLE __f0 AS SELECT i AS id, ['north', 'south'][1 + i % 2] AS region FROM range(70) t(i)")
    db.execute("CREATE TABLE __f1 AS SELECT CASE WHEN i % 11 = 0 THEN NULL ELSE (i * 7) % 60 END AS person_id, "
               "CAST(i % 9 AS DOUBLE) AS amount FROM range(300) t(i)")
    db.execute("CREATE TABLE __f2 AS SELECT (i * 5) % 12 AS person_id, CAST(i % 4 AS DOUBLE) AS amount FROM range(30) t(i)")
    db.execute("CREATE TABLE __f3 AS SELECT CASE WHEN i = 3 THEN NULL ELSE i * 3 END AS person_id FROM range(20) t(i)")
    return db


def reduced(db: duckdb.DuckDBPyConnection, semijoin: SemiJoin) -> None:
    """Drop the probe's rows whose key is not among the keys, as the probe's silo would."""
    keys = semijoin.keys_sql or " UNION ".join(f'SELECT "{k.name}" FROM "{k.fragment}"' for k in semijoin.build)
    column = f'"{semijoin.probe.name}"'
    db.execute(f'DELETE FROM "{semijoin.probe.fragment}" WHERE {column} IS NULL OR '
               f"{column} NOT IN (SELECT k FROM ({keys}) AS keys(k) WHERE k IS NOT NULL)")


JOINS = [
    'SELECT p.id, o.amount FROM "__f0" AS p JOIN "__f1" AS o ON o.person_id = p.id',
    'SELECT p.id, o.amount FROM "__f0" AS p LEFT JOIN "__f1" AS o ON o.person_id = p.id',
    'SELECT p.id, s.t FROM "__f0" AS p JOIN (SELECT person_id, sum(amount) AS t FROM "__f1" GROUP BY person_id) AS s ON s.person_id = p.id',
    'SELECT p.id FROM "__f0" AS p JOIN (SELECT * FROM "__f1" UNION ALL SELECT * FROM "__f2") AS u ON u.person_id = p.id',
]


@pytest.mark.parametrize("residual", JOINS + MEMBERSHIPS, ids=[f"j{i}" for i in range(len(JOINS))] + [f"m{i}" for i in range(len(MEMBERSHIPS))])
def test_every_semijoin_found_leaves_the_result_as_it_was(residual):
    """Each semi-join applied alone (the probe's rows whose key is not among the keys dropped,
    null keys too) and the residual run again: the same rows."""
    expected = sorted(fragments_db().execute(residual).fetchall(), key=repr)
    for semijoin in find_semijoins(residual, FRAGMENTS):
        db = fragments_db()
        reduced(db, semijoin)
        assert sorted(db.execute(residual).fetchall(), key=repr) == expected, semijoin


def test_keys_from_a_subquery_are_not_judged_by_the_rows_it_reads():
    """A HAVING over 2M rows may keep a handful: its semi-join is tried on a large probe, where a
    plain fragment's keys as many as its rows would not be."""
    [exact] = [s for s in find_semijoins(ACROSS, FRAGMENTS) if s.keys_sql]
    estimates = {"__f0": (3_000_000, 60_000_000), "__f1": (2_000_000, 32_000_000), "__f2": (10_000, 200_000)}
    assert choose_semijoins([exact], estimates) == [exact]
    plain = SemiJoin(exact.probe, exact.build, exact.condition)
    assert choose_semijoins([plain], estimates) == []
