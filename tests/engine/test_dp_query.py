"""Aggregate-only data through the agent: the bounded SQL it runs in the silo, the budget it charges
in the ledger before anything runs, and what an analyst learns by differencing two releases."""

from __future__ import annotations

import statistics

import pyarrow as pa
import pytest
import yaml

from fedlake.agent import EgressDenied, InProcessAgentClient, build_agent, client_token
from fedlake.audit import BudgetExceeded, open_ledger
from fedlake.catalog import load_catalog
from fedlake.policy.model import load_policy
from fedlake.silos import open_silo

PEOPLE = 400


def people() -> pa.Table:
    """One outlier (person 0 earns 250,000, over the bound), everyone else 20,000..59,000; each
    person has several rows, so contribution bounding matters."""
    ids, incomes, regions = [], [], []
    for person in range(PEOPLE):
        for visit in range(1 + person % 4):
            ids.append(f"P{person:04d}")
            incomes.append(250_000.0 if person == 0 else 20_000.0 + 1_000 * (person % 40))
            regions.append("north" if person % 2 else "south")
    return pa.table({"person_id": ids, "income": incomes, "region": regions})


def agent_for(tmp_path, budget: float, max_rows: int = 2):
    (tmp_path / "silos.yaml").write_text(yaml.safe_dump({"governed_zone": {"region": "EU"}, "silos": {
        "us": {"kind": "parquet", "region": "US", "connection": {"local": {"path": "us"}},
               "tables": {"people": {"person_id": "pii.quasi", "income": "financial", "region": "public"}}},
        "eu": {"kind": "parquet", "region": "EU", "connection": {"local": {"path": "eu"}}, "tables": {"notes": {"x": "public"}}}}}))
    (tmp_path / "policies.yaml").write_text(yaml.safe_dump({
        "purposes": ["analytics"],
        "clients": {"analyst": {"token_env": "FEDLAKE_DP_TEST_TOKEN_UNSET", "region": "EU", "purposes": ["analytics"]}},
        "subjects": {"people": "person_id"},
        "classifications": {"public": [{"action": "allow"}], "pii.quasi": [{"action": "pseudonymize"}],
                            "financial": [{"to": "same_region", "action": "allow"}, {"action": "aggregate"}]},
        "dp": {"epsilon": 1.0, "delta": 1.0e-6, "budget": {"epsilon": budget, "delta": 1.0e-3, "period": "day"},
               "max_rows_per_subject": max_rows, "bounds": {"*.people.income": [0, 100000]}},
    }))
    catalog = load_catalog(tmp_path / "silos.yaml")
    policy = load_policy(tmp_path / "policies.yaml", catalog)
    with open_silo(catalog.silo("us"), "local", tmp_path) as connector:
        connector.load("people", people().schema, people().to_batches())
    ledger = open_ledger(str(tmp_path / "ledger.duckdb"))
    agent = build_agent(catalog, policy, "us", "local", tmp_path, ledger=ledger)
    return InProcessAgentClient(agent, client_token(policy, "analyst", "local", tmp_path)), ledger


def test_the_silo_bounds_rows_per_subject_and_clamps_before_anything_leaves(tmp_path):
    """The statement the agent runs keeps at most max_rows rows per person and clamps income to its
    bounds; EXPLAIN says so and shows no key material."""
    client, _ = agent_for(tmp_path, budget=100.0)
    explained = client.explain("SELECT region, sum(income) AS s FROM people GROUP BY region", "analytics", "EU")
    sql = explained.sql_in_silo
    assert explained.dp and "ROW_NUMBER() OVER (PARTITION BY" in sql and "<= 2" in sql
    assert "LEAST(GREATEST(CAST" in sql and "100000" in sql and "PARTITION BY \"__fl_subject\"" in sql
    released = client.query("SELECT region, count(*) AS n, avg(income) AS a FROM people GROUP BY region", "analytics", "EU").read_all()
    rows = {r["region"]: r for r in released.to_pylist()}
    # bounded: each person counts at most twice, 1.75 rows per person on average rather than 2.5
    assert set(rows) == {"north", "south"}
    assert sum(r["n"] for r in rows.values()) < 2.1 * PEOPLE
    assert all(0 <= r["a"] <= 100_000 for r in rows.values())


def test_the_budget_is_charged_in_the_ledger_and_a_request_over_it_is_refused(tmp_path):
    client, ledger = agent_for(tmp_path, budget=3.0)
    for _ in range(3):
        client.query("SELECT sum(income) AS s FROM people", "analytics", "EU").read_all()
    with pytest.raises(BudgetExceeded, match="spent epsilon 3 \\+ requested 1 > limit 3"):
        client.query("SELECT sum(income) AS s FROM people", "analytics", "EU").read_all()
    charged = [e for e in ledger.entries() if e["operation"] == "dp_charge"]
    assert [e["decision"] for e in charged] == ["dp", "dp", "dp", "over_budget"]
    assert sum(e["epsilon"] for e in charged) == pytest.approx(3.0)
    assert ledger.spent("analyst", "analytics", "us", "2000-01-01T00:00:00+00:00") == pytest.approx((3.0, 3.0e-6))
    # refused requests spend nothing: a query outside the DP shape is refused before any charge
    with pytest.raises(EgressDenied, match="may leave only through differentially private"):
        client.query("SELECT max(income) AS m FROM people", "analytics", "EU").read_all()
    with pytest.raises(EgressDenied, match="ROLLUP, CUBE and GROUPING SETS are not bounded"):
        client.query("SELECT region, sum(income) AS s FROM people GROUP BY ROLLUP (region)", "analytics", "EU").read_all()
    assert len([e for e in ledger.entries() if e["operation"] == "dp_charge"]) == 4


def test_differencing_two_releases_does_not_reveal_one_persons_income(tmp_path):
    """Everyone's total, then everyone's but one person's: the difference is that person's (clamped)
    income plus noise of the scale OpenDP calibrated, not the income itself."""
    client, _ = agent_for(tmp_path, budget=1000.0, max_rows=1)
    victim = client.query("SELECT person_id FROM people WHERE region = 'south' LIMIT 1", "analytics", "EU").read_all()
    token = victim.column(0)[0].as_py()  # person 0, the outlier: 250,000, clamped to the bound
    truth = 100_000.0
    errors = []
    for _ in range(30):
        everyone = client.query("SELECT sum(income) AS s FROM people", "analytics", "EU").read_all().column(0)[0].as_py()
        but_one = client.query(f"SELECT sum(income) AS s FROM people WHERE person_id <> '{token}'", "analytics", "EU").read_all().column(0)[0].as_py()
        errors.append(abs((everyone - but_one) - truth))
    # Laplace noise on each sum, scale max_rows * bound / epsilon share = 1 * 100000 / 1.0: the difference is far from exact
    assert statistics.median(errors) > 10_000
    assert sum(e < 1_000 for e in errors) <= 3
