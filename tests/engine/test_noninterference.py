"""Non-interference: what leaves an agent is a function of the caller's masked view alone.

Two worlds hold the same public data in three real silos (embedded PostgreSQL, an S3-kind lake and a
Parquet lake). In the second, every value the policy protects for the analyst (purpose analytics,
region EU) is changed: denied columns to random values, generalized ones within their class (the
same age band, the same postcode prefix), pseudonymized ones by a bijection applied in every silo
(the same join structure), aggregate-only ones to random values. Hypothesis generates queries from
a grammar over these tables with filters, joins, ordering, subqueries, CASE, casts that can fail, set
operations and windows, and references to every kind of column in every clause. Each runs in both
worlds through the analyst's agents; the result (its pseudonyms renamed by the bijection), the error
code and text (without its random error id), EXPLAIN, the engine's estimate of rows and bytes, and
the ledger entries must be identical.

Pseudonyms are released values: the grammar uses them only by equality (joins, IN, GROUP BY,
COUNT DISTINCT, IS NULL), the only uses under which a renamed world is the same world. DP releases are
randomized by design and tested in test_dp.py and test_attacks.py.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import re
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow as pa
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fedlake.agent import InProcessAgentClient, build_agent, client_token
from fedlake.audit import open_ledger
from fedlake.catalog import load_catalog
from fedlake.errors import FedlakeError
from fedlake.policy.model import load_policy
from fedlake.policy.transforms import derive_key, pseudonym
from fedlake.silos import open_silo

MASTER = "non-interference-test-master-secret"
PEOPLE, LOANS, VISITS, PAYMENTS = 240, 400, 600, 500
SILOS = {
    "eu": ("postgres", "EU", {"embedded": "eu_pg"}),
    "us": ("s3", "US", {"path": "us_lake"}),
    "sg": ("parquet", "SG", {"path": "sg_lake"}),
}
CLASSES = {
    "eu": {"people": {"row_id": "public", "person_id": "pii.quasi", "name": "pii.direct", "email": "pii.direct",
                      "birth": "pii.quasi", "postcode": "pii.quasi", "region": "public", "income": "financial"},
           "loans": {"row_id": "public", "person_id": "pii.quasi", "principal": "financial", "status": "public"}},
    "us": {"visits": {"row_id": "public", "person_id": "pii.quasi", "channel": "public", "duration": "financial",
                      "note": "free_text", "day": "public"}},
    "sg": {"payments": {"row_id": "public", "person_id": "pii.quasi", "method": "public", "amount": "financial",
                        "card": "pii.direct"}},
}
POLICY = {
    "purposes": ["analytics"],
    "clients": {"analyst": {"token_env": "FEDLAKE_NI_ANALYST_TOKEN_UNSET", "region": "EU", "purposes": ["analytics"], "roles": ["query"]}},
    "subjects": {"people": "person_id", "loans": "person_id", "visits": "person_id", "payments": "person_id"},
    "join_domains": {"person": ["*.*.person_id"]},
    "generalize": {"birth": {"method": "age_band", "width": 10, "as_of": "2026-01-01"}, "postcode": {"method": "prefix", "length": 2}},
    "classifications": {
        "public": [{"action": "allow"}],
        "financial": [{"to": "same_region", "action": "allow"}, {"action": "aggregate"}],
        "pii.quasi": [{"action": "pseudonymize"}],
        "pii.direct": [{"action": "deny"}],
        "free_text": [{"action": "deny"}],
    },
    "overrides": {"*.people.birth": [{"action": "generalize"}], "*.people.postcode": [{"action": "generalize"}]},
    "dp": {"epsilon": 1.0, "delta": 1.0e-6, "budget": {"epsilon": 1.0e6, "delta": 0.5, "period": "day"},
           "max_rows_per_subject": 5, "bounds": {"*.*.duration": [0, 3600], "*.*.amount": [0, 1000]}},
}


def world(seed: int, changed: bool) -> dict[str, dict[str, pa.Table]]:
    """The demo tables; `changed` keeps every public and EU-allowed value and changes the rest."""
    rng = random.Random(seed)
    alt = random.Random(seed + 1)
    ids = [f"P{i:05d}" for i in range(PEOPLE)]
    renamed = dict(zip(ids, alt.sample([f"Z{n:06d}" for n in range(10 * PEOPLE)], PEOPLE)))
    person = (lambda v: renamed[v]) if changed else (lambda v: v)

    def words(r: random.Random, n: int) -> str:
        return " ".join(r.choice(["alpha", "bravo", "cash", "delta", "echo", "fox"]) for _ in range(n))

    def secret(draw):
        """The original value is always drawn (so the public draws stay aligned); the changed world
        replaces it with another draw."""
        value = draw(rng)
        return draw(alt) if changed else value

    births, postcodes = [], []
    for _ in ids:
        year, day = rng.randint(1940, 2004), rng.randint(2, 360)
        born = dt.date(year, 1, 1) + dt.timedelta(days=day)
        postcode = f"{rng.randint(10, 99)}{rng.randint(100, 999)}"
        if changed:  # the same age band (as of 2026-01-01, not on 1 January) and the same prefix
            low = (2025 - year) // 10 * 10
            born = dt.date(2025 - alt.randint(low, low + 9), 1, 1) + dt.timedelta(days=alt.randint(1, 360))
            postcode = postcode[:2] + f"{alt.randint(100, 999)}"
        births.append(born)
        postcodes.append(postcode)
    people = pa.table({
        "row_id": pa.array(range(PEOPLE), pa.int64()),
        "person_id": [person(v) for v in ids],
        "name": [secret(lambda r: f"{words(r, 2)} {r.randint(0, 999)}") for _ in ids],
        "email": [secret(lambda r: f"{r.randint(0, 10**6)}@example.org") for _ in ids],
        "birth": pa.array(births, pa.date32()),
        "postcode": postcodes,
        "region": [rng.choice(["north", "south", "east", None]) for _ in ids],
        "income": [round(rng.uniform(10_000, 90_000), 2) for _ in ids],
    })
    loans = pa.table({
        "row_id": pa.array(range(LOANS), pa.int64()),
        "person_id": [person(rng.choice(ids)) for _ in range(LOANS)],
        "principal": [round(rng.uniform(1_000, 50_000), 2) for _ in range(LOANS)],
        "status": [rng.choice(["open", "paid", "late"]) for _ in range(LOANS)],
    })
    visit_people = [rng.choice(ids + [None]) for _ in range(VISITS)]
    visits = pa.table({
        "row_id": pa.array(range(VISITS), pa.int64()),
        "person_id": [None if v is None else person(v) for v in visit_people],
        "channel": [rng.choice(["web", "app", "store"]) for _ in range(VISITS)],
        "duration": pa.array([secret(lambda r: r.randint(1, 3600)) for _ in range(VISITS)], pa.int64()),
        "note": [secret(lambda r: words(r, 3)) for _ in range(VISITS)],
        "day": pa.array([dt.date(2025, 1, 1) + dt.timedelta(days=rng.randint(0, 364)) for _ in range(VISITS)], pa.date32()),
    })
    payments = pa.table({
        "row_id": pa.array(range(PAYMENTS), pa.int64()),
        "person_id": [person(rng.choice(ids)) for _ in range(PAYMENTS)],
        "method": [rng.choice(["card", "bank", "wallet"]) for _ in range(PAYMENTS)],
        "amount": [secret(lambda r: round(r.uniform(1, 1000), 2)) for _ in range(PAYMENTS)],
        "card": [secret(lambda r: f"4{r.randint(10**14, 10**15 - 1)}") for _ in range(PAYMENTS)],
    })
    return {"eu": {"people": people, "loans": loans}, "us": {"visits": visits}, "sg": {"payments": payments}}


@contextmanager
def master_secret():
    before = os.environ.get("FEDLAKE_PSEUDONYM_KEY")
    os.environ["FEDLAKE_PSEUDONYM_KEY"] = MASTER
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("FEDLAKE_PSEUDONYM_KEY")
        else:
            os.environ["FEDLAKE_PSEUDONYM_KEY"] = before


@dataclass
class World:
    clients: dict[str, InProcessAgentClient]
    ledger: object


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    built = []
    config = tmp_path_factory.mktemp("config")  # one configuration: rules quote its path
    (config / "silos.yaml").write_text(yaml.safe_dump({"governed_zone": {"region": "EU"}, "silos": {
        name: {"kind": kind, "region": region, "connection": {"local": connection}, "tables": CLASSES[name]}
        for name, (kind, region, connection) in SILOS.items()}}))
    (config / "policies.yaml").write_text(yaml.safe_dump(POLICY))
    catalog = load_catalog(config / "silos.yaml")
    policy = load_policy(config / "policies.yaml", catalog)
    with master_secret():
        for changed in (False, True):
            home = tmp_path_factory.mktemp("changed" if changed else "original")
            for silo, tables in world(17, changed).items():
                with open_silo(catalog.silo(silo), "local", home) as connector:
                    for name, table in tables.items():
                        connector.load(name, table.schema, table.to_batches(max_chunksize=128))
            ledger = open_ledger(str(home / "ledger.duckdb"))
            token = client_token(policy, "analyst", "local", home)
            clients = {s: InProcessAgentClient(build_agent(catalog, policy, s, "local", home, ledger=ledger), token)
                       for s in catalog.silos}
            built.append(World(clients, ledger))
    yield built
    for w in built:
        for c in w.clients.values():
            c.close()


def renaming() -> dict[str, str]:
    """Each original pseudonym -> the pseudonym of its changed value, under the analyst's key."""
    key = derive_key(MASTER.encode(), "analytics", "person")
    ids = [f"P{i:05d}" for i in range(PEOPLE)]
    alt = random.Random(18)
    renamed = dict(zip(ids, alt.sample([f"Z{n:06d}" for n in range(10 * PEOPLE)], PEOPLE)))
    return {pseudonym(v, key): pseudonym(renamed[v], key) for v in ids}


# -- the grammar ---------------------------------------------------------------------------------

TABLES = {
    "eu": {"people": CLASSES["eu"]["people"], "loans": CLASSES["eu"]["loans"]},
    "us": {"visits": CLASSES["us"]["visits"]},
    "sg": {"payments": CLASSES["sg"]["payments"]},
}
LITERALS = ["'north'", "'web'", "'card'", "'30-39'", "'12'", "1", "100", "'2025-06-01'", "NULL", "'P00001'"]


def columns_of(silo: str, table: str) -> dict[str, list[str]]:
    """A table's columns by what the analyst's masks do to them (EU: income and principal allowed)."""
    kinds: dict[str, list[str]] = {"public": [], "pseudonym": [], "general": [], "denied": [], "aggregate": []}
    for column, classification in TABLES[silo][table].items():
        if column in ("birth", "postcode"):
            kinds["general"].append(column)
        elif classification == "pii.quasi":
            kinds["pseudonym"].append(column)
        elif classification in ("pii.direct", "free_text"):
            kinds["denied"].append(column)
        elif classification == "financial":
            kinds["public" if silo == "eu" else "aggregate"].append(column)
        else:
            kinds["public"].append(column)
    return kinds


@st.composite
def predicates(draw, silo: str, table: str, alias: str) -> str:
    kinds = columns_of(silo, table)
    kind = draw(st.sampled_from([k for k, v in kinds.items() if v]))
    column = f"{alias}.{draw(st.sampled_from(kinds[kind]))}"
    if kind == "pseudonym":
        return draw(st.sampled_from([f"{column} IS NULL", f"{column} IS NOT NULL", f"{column} = 'P00007'",
                                     f"{column} IN (SELECT person_id FROM {table} WHERE row_id < 50)"]))
    literal = draw(st.sampled_from(LITERALS))
    form = draw(st.sampled_from(["{c} = {l}", "{c} > {l}", "{c} <> {l}", "{c} IS NULL", "{c} LIKE '3%'",
                                 "CAST({c} AS INTEGER) > 5", "length(CAST({c} AS VARCHAR)) > 4",
                                 "{c} IN (SELECT {c2} FROM {t} WHERE row_id % 7 = 0)", "coalesce({c}, {l}) = {l}"]))
    return form.format(c=column, l=literal, c2=column.split(".")[1], t=table)


@st.composite
def projections(draw, silo: str, table: str, alias: str) -> list[str]:
    kinds = columns_of(silo, table)
    order = "t.row_id" if alias == "t" else f"t.row_id, {alias}.row_id"  # a total order: ties would follow the engine's hashing
    chosen = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from([k for k, v in kinds.items() if v]))
        column = f"{alias}.{draw(st.sampled_from(kinds[kind]))}"
        if kind == "pseudonym":
            chosen.append(column)
        else:
            chosen.append(draw(st.sampled_from([
                column, f"upper(CAST({column} AS VARCHAR))", f"CAST({column} AS INTEGER)", f"TRY_CAST({column} AS INTEGER)",
                f"CASE WHEN {column} IS NULL THEN 'none' ELSE CAST({column} AS VARCHAR) END",
                f"row_number() OVER (PARTITION BY {column} ORDER BY {order})",
            ])))
    return [f"{p} AS c{i}" for i, p in enumerate(chosen)]


@st.composite
def queries(draw) -> tuple[str, str, bool]:
    """(silo, SQL, ordered): one agent's request."""
    silo = draw(st.sampled_from(sorted(TABLES)))
    table = draw(st.sampled_from(sorted(TABLES[silo])))
    shape = draw(st.sampled_from(["rows", "grouped", "join", "union", "subquery"]))
    where = f" WHERE {draw(predicates(silo, table, 't'))}" if draw(st.booleans()) else ""
    kinds = columns_of(silo, table)
    if shape == "rows":
        limit = draw(st.booleans())
        sql = f"SELECT t.row_id AS id, {', '.join(draw(projections(silo, table, 't')))} FROM {table} AS t{where}"
        return silo, sql + (" ORDER BY t.row_id LIMIT 25" if limit else ""), limit
    if shape == "grouped":
        key = draw(st.sampled_from(kinds["public"] + kinds["general"] + kinds["pseudonym"] + kinds["denied"]))
        extra = draw(st.sampled_from(["count(*) AS n", "count(DISTINCT t.person_id) AS people", "max(t.row_id) AS top",
                                      f"min(t.{key}) AS lowest", "count(t.person_id) AS known"]))
        having = " HAVING count(*) > 2" if draw(st.booleans()) else ""
        return silo, f"SELECT t.{key} AS k, {extra} FROM {table} AS t{where} GROUP BY t.{key}{having}", False
    if shape == "join" and silo == "eu":
        other = "loans" if table == "people" else "people"
        on = draw(st.sampled_from(["t.person_id = o.person_id", "t.row_id = o.row_id"]))
        projected = draw(projections(silo, other, "o"))
        return silo, f"SELECT t.row_id AS id, {', '.join(projected)} FROM {table} AS t JOIN {other} AS o ON {on}{where}", False
    if shape == "union":
        first, second = draw(projections(silo, table, "t")), draw(projections(silo, table, "t"))
        op = draw(st.sampled_from(["UNION ALL", "UNION", "EXCEPT"]))
        return silo, f"SELECT {first[0]} FROM {table} AS t{where} {op} SELECT {second[0]} FROM {table} AS t", False
    inner = draw(predicates(silo, table, "s"))
    return silo, (f"SELECT t.row_id AS id FROM {table} AS t WHERE t.person_id IN "
                  f"(SELECT s.person_id FROM {table} AS s WHERE {inner}){where.replace(' WHERE', ' AND')}"), False


# -- running and comparing -----------------------------------------------------------------------

def outcome(w: World, silo: str, sql: str, ordered: bool, rename: dict[str, str] | None) -> dict:
    """Everything that leaves for one request: the result or the error, EXPLAIN, the ledger entry."""
    client = w.clients[silo]
    before = w.ledger.last_seq()
    left: dict = {}
    try:
        # planned once, as the coordinator plans: the estimate and decisions, then the rows by its ticket
        planned = client.estimate(sql, "analytics", "EU")
        left["estimate"] = (planned.rows, planned.bytes, planned.schema, planned.decision)
        table = client.fetch(planned.ticket).read_all()
        rows = [tuple((rename or {}).get(v, v) if isinstance(v, str) else v for v in row.values()) for row in table.to_pylist()]
        left["result"] = (table.schema, rows if ordered else sorted(rows, key=repr))
    except FedlakeError as exc:
        left["error"] = (type(exc).__name__, re.sub(r"error id [0-9a-f]+", "error id ?", str(exc)))
    left["explain"] = client.explain(sql, "analytics", "EU")
    entries = w.ledger.entries(after=before)
    left["ledger"] = [(e["operation"], e["decision"], e["destination"], e["columns"], e["rows"], e["error"].split(":")[0])
                      for e in entries]
    return left


@settings(max_examples=250, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(query=queries())
def test_what_leaves_does_not_depend_on_protected_values(worlds, query):
    silo, sql, ordered = query
    original, changed = worlds
    left = outcome(original, silo, sql, ordered, RENAME)
    event("answered" if "result" in left else f"refused or failed: {left['error'][0]}")
    assert left == outcome(changed, silo, sql, ordered, None), sql


RENAME = renaming()


def test_the_worlds_differ_where_the_policy_protects_and_nowhere_else():
    """The property above is not vacuous: every protected column really changed (and the renaming
    covers every person), every public and allowed one is the same."""
    original, changed = world(17, False), world(17, True)
    for silo, tables in original.items():
        for name, table in tables.items():
            kinds = columns_of(silo, name)
            for column in table.column_names:
                same = table.column(column).equals(changed[silo][name].column(column))
                protected = column in kinds["denied"] + kinds["general"] + kinds["pseudonym"] + kinds["aggregate"]
                assert same != protected, f"{silo}.{name}.{column}"
    assert len(RENAME) == PEOPLE and len(set(RENAME.values())) == PEOPLE


def test_the_grammar_reaches_answers_refusals_and_failures(worlds):
    """The generated requests are answered, refused and failed in the silo, so the property is
    checked on all three."""
    kinds = set()
    for sql, silo in [("SELECT t.row_id AS id, t.postcode AS p FROM people AS t", "eu"),
                      ("SELECT t.email AS e FROM people AS t", "eu"),
                      ("SELECT CAST(t.person_id AS INTEGER) AS x FROM visits AS t", "us")]:
        left = outcome(worlds[0], silo, sql, False, RENAME)
        kinds.add("result" if "result" in left else left["error"][0])
    assert kinds == {"result", "EgressDenied", "AgentFailure"}
