"""Where the planner may send a small side's keys into another fragment, and where it must not."""

from __future__ import annotations

from fedlake.query.semijoin import Column, choose_semijoins, find_semijoins

FRAGMENTS = {"__f0": ["id", "region"], "__f1": ["person_id", "amount"], "__f2": ["person_id", "amount"]}


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
