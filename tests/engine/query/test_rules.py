"""Golden cases for the planner's rules: fixtures/<rule>.sql holds, for each case, a query and the
fragments and residual after the rules up to and including that one. Adding a case is adding a
query and running `UPDATE_GOLDEN=1 pytest tests/engine/query/test_rules.py`, which rewrites the
expected parts of every fixture file from what the planner does now: review them with `git diff`.

Every case is also run: its fragments in DuckDB over small tables in one schema per silo, the
residual over their results, and the answer compared with the query run over the same tables
co-located. A golden file that records a wrong cut fails here even when it matches."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from fedlake.query.cut import PlanningError, cut_query, plan_query
from fedlake.query.rules import RULES
from fedlake.query.statistics import TableStatistics

FIXTURES = Path(__file__).parent / "fixtures"
RULE_NAMES = [rule.__name__ for rule in RULES]


def h(seed: int, modulo: int) -> str:
    """A deterministic pseudo-random integer in [0, modulo) per row `i`, as DuckDB SQL."""
    return f"CAST(hash(i, {seed}) % {modulo} AS BIGINT)"


TABLES = {
    "eu": {
        "people": f"SELECT i AS id, 'person ' || (i % 250) AS name, "
                  f"CASE WHEN i % 17 = 0 THEN NULL ELSE ['north', 'south', 'east', 'west'][1 + {h(1, 4)}] END AS region, "
                  f"DATE '1950-01-01' + to_days({h(2, 20000)}) AS born, "
                  f"CASE WHEN i % 13 = 0 THEN NULL ELSE round(({h(3, 10000)}) / 100.0, 2) END AS score FROM range(300) t(i)",
        "orders": f"SELECT i AS order_id, {h(4, 320)} AS person_id, 'SKU' || lpad(CAST({h(5, 70)} AS VARCHAR), 3, '0') AS sku, "
                  f"CASE WHEN i % 19 = 0 THEN NULL ELSE round(({h(6, 20000)}) / 100.0, 2) END AS amount, "
                  f"TIMESTAMP '2025-01-01' + to_minutes({h(7, 525600)}) AS placed_at, "
                  f"['open', 'shipped', 'shipped', 'shipped', 'cancelled'][1 + {h(8, 5)}] AS status FROM range(1500) t(i)",
    },
    "us": {
        "visits": f"SELECT i AS visit_id, CASE WHEN i % 23 = 0 THEN NULL ELSE {h(9, 350)} END AS person_id, "
                  f"TIMESTAMP '2025-01-01' + to_seconds({h(10, 31536000)}) AS ts, "
                  f"CAST(1 + {h(11, 3600)} AS BIGINT) AS duration, ['web', 'app', 'store'][1 + {h(12, 3)}] AS channel FROM range(2000) t(i)",
        "products": f"SELECT 'SKU' || lpad(CAST(i AS VARCHAR), 3, '0') AS sku, ['books', 'games', 'tools', 'food'][1 + {h(13, 4)}] AS category, "
                    f"round(1 + ({h(14, 19900)}) / 100.0, 2) AS price FROM range(60) t(i)",
    },
    "sg": {
        "payments": f"SELECT i AS payment_id, {h(15, 1600)} AS order_id, round(({h(16, 20000)}) / 100.0, 2) AS amount, "
                    f"TIMESTAMP '2025-01-01' + to_hours({h(17, 8760)}) AS paid_at, "
                    f"CASE WHEN i % 21 = 0 THEN NULL ELSE ['card', 'bank', 'wallet'][1 + {h(18, 3)}] END AS method, "
                    f"'memo ' || repeat('x', {h(19, 200)}) AS memo FROM range(1200) t(i)",
        "refunds": f"SELECT i AS refund_id, {h(20, 1200)} AS payment_id, round(1 + ({h(21, 4900)}) / 100.0, 2) AS amount, "
                   f"['damaged', 'late', 'other'][1 + {h(22, 3)}] AS reason FROM range(150) t(i)",
    },
}


@pytest.fixture(scope="module")
def colocated():
    """The tables, one schema per silo, in one DuckDB."""
    db = duckdb.connect()
    for silo, tables in TABLES.items():
        db.execute(f"CREATE SCHEMA {silo}")
        for table, sql in tables.items():
            db.execute(f"CREATE TABLE {silo}.{table} AS {sql}")
    yield db
    db.close()


def _schema() -> dict[str, dict[str, dict[str, str]]]:
    """{silo: {table: {column: type}}}, as the agents describe their tables."""
    db = duckdb.connect()
    try:
        return {
            silo: {table: {row[0]: row[1] for row in db.execute(f"DESCRIBE {sql}").fetchall()} for table, sql in tables.items()}
            for silo, tables in TABLES.items()
        }
    finally:
        db.close()


SCHEMA = _schema()


@dataclass
class Case:
    comments: list[str]  # `-- ...` lines: what the case shows
    meta: list[str]  # `# statistics: silo.table rows=N column=n ...` lines
    sql: str
    expected: str


def read_cases(path: Path) -> list[Case]:
    cases = []
    for block in re.split(r"\n\s*\n", path.read_text().strip()):
        lines = block.splitlines()
        comments = [line for line in lines if line.startswith("--")]
        meta = [line for line in lines if line.startswith("#")]
        rest = [line for line in lines if not line.startswith(("--", "#"))]
        end = next(i for i, line in enumerate(rest) if line.rstrip().endswith(";"))
        cases.append(Case(comments, meta, "\n".join(rest[: end + 1]).rstrip().rstrip(";"), "\n".join(rest[end + 1:])))
    return cases


def write_cases(path: Path, cases: list[Case]) -> None:
    blocks = ["\n".join([*c.comments, *c.meta, c.sql + ";", c.expected]) for c in cases]
    path.write_text("\n\n".join(blocks) + "\n")


def statistics_of(meta: list[str]) -> dict[str, dict[str, TableStatistics]]:
    statistics: dict[str, dict[str, TableStatistics]] = {}
    for line in meta:
        key, _, value = line.lstrip("#").partition(":")
        if key.strip() != "statistics":
            raise ValueError(f"unknown fixture meta '{key.strip()}' in: {line}")
        name, *counts = value.split()
        silo, table = name.split(".")
        numbers = {k: int(v) for k, v in (c.split("=") for c in counts)}
        statistics.setdefault(silo, {})[table] = TableStatistics(numbers.pop("rows"), numbers)
    return statistics


def render(case: Case, rule: str) -> str:
    """The fragments and the residual after the rules up to and including `rule`."""
    try:
        planning = plan_query(case.sql, SCHEMA, statistics=statistics_of(case.meta), through=rule)
    except PlanningError as exc:
        return f"error: {exc}"
    lines = []
    for f in planning.fragments:
        what = [f"fragment {f.name} at {f.silo}: {f.kind} of {', '.join(f.tables)}"]
        what += [f"filters {' AND '.join(f.filters)}"] if f.filters else []
        what += [f"partial {f.partial}"] if f.partial else []
        lines.append("; ".join(what))
        lines.append(f"  {f.sql}")
        lines += [f"  note: {note}" for note in f.notes]
    lines.append("residual" if planning.fragments else "query")
    lines.append(f"  {planning.tree.sql('duckdb')}")
    return "\n".join(lines)


def regenerate() -> None:
    for rule in RULE_NAMES:
        path = FIXTURES / f"{rule}.sql"
        cases = read_cases(path)
        for case in cases:
            case.expected = render(case, rule)
        write_cases(path, cases)


if os.environ.get("UPDATE_GOLDEN") == "1":
    regenerate()

CASES = [(rule, case) for rule in RULE_NAMES for case in read_cases(FIXTURES / f"{rule}.sql")]
IDS = [f"{rule}-{i}" for rule in RULE_NAMES for i, _ in enumerate(read_cases(FIXTURES / f"{rule}.sql"))]


def test_every_rule_has_a_fixture_file_with_cases():
    assert {path.stem for path in FIXTURES.glob("*.sql")} == set(RULE_NAMES)
    assert all(sum(r == rule for r, _ in CASES) >= 3 for rule in RULE_NAMES)


@pytest.mark.parametrize(("rule", "case"), CASES, ids=IDS)
def test_rule_gives_the_golden_fragments_and_residual(rule, case):
    assert render(case, rule) == case.expected, "\n".join(case.comments)


def rows(table) -> list[tuple]:
    def cell(v):
        return round(float(v), 6) if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    return sorted((tuple(cell(v) for v in row) for row in table.fetchall()), key=repr)


@pytest.mark.parametrize(("rule", "case"), CASES, ids=IDS)
def test_the_cut_returns_what_the_query_returns(colocated, rule, case):
    """The fragments run in their silos' schemas, the residual over their results."""
    if case.expected.startswith("error: "):
        with pytest.raises(PlanningError):
            cut_query(case.sql, SCHEMA, statistics=statistics_of(case.meta))
        return
    cut = cut_query(case.sql, SCHEMA, statistics=statistics_of(case.meta))
    db = colocated.cursor()
    try:
        db.execute("CREATE SCHEMA IF NOT EXISTS fragments")
        for f in cut.fragments:
            db.execute(f"SET search_path = '{f.silo}'")
            db.execute(f'CREATE OR REPLACE TABLE fragments."{f.name}" AS {f.sql}')
        db.execute("SET search_path = 'fragments'")
        got = rows(db.execute(cut.residual))
        db.execute("SET search_path = 'main'")
        assert got == rows(db.execute(case.sql))
    finally:
        db.execute("DROP SCHEMA fragments CASCADE")
        db.close()
