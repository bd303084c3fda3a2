"""The insider's attacks, as the analyst (purpose analytics, region EU) would try them, against the
demo bank's three real silos: in-process and, for every query attack, over Flight+TLS as well.

Each attack is one request, grouped by the twelve ways the old gate leaked. Every one must be refused,
or answered with masked values only: no raw personal value, memo, raw identifier, exact date of birth
or full postcode, and no row-level income or amount of another region, in the result or in the error.
Some families say more: a probe with a real value finds nothing, a literal comes back as itself.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pytest

from fedlake.agent import FlightAgentClient, InProcessAgentClient, build_agent, client_token
from fedlake.agent.protocol import RunResidual
from fedlake.errors import FedlakeError
from fedlake.keyset import KeySet
from fedlake.plugins import serving_plugins
from fedlake.policy.model import load_policy
from fedlake.silos import open_silo
from tests.conftest import REPO, TOKENS

SILOS = ("eu_core", "us_lake", "sg_lake")
FOREIGN = ("us_lake", "sg_lake")  # financial data of these leaves for the EU analyst only aggregated
DIRECT = ("national_id", "full_name", "email", "phone")


@dataclass(frozen=True)
class Attack:
    family: str
    silo: str
    sql: str = ""
    action: str = ""
    body: dict[str, Any] = field(default_factory=dict, hash=False)
    destination: str = "EU"
    expect: str = "safe"  # safe: refused or masked | refused | empty: refused or no rows | literal: the literal back

    @property
    def id(self) -> str:
        return f"{self.family}-{self.silo}-{abs(hash((self.sql, self.action, str(self.body), self.destination))) % 10**6:06d}"


SAMPLED = ("national_id", "email", "customer_id", "date_of_birth", "postcode")


def _samples(home) -> dict[str, dict[str, str]]:
    """A few real values per silo, for the probes that name them (@column_i@ in an attack)."""
    from fedlake.catalog import load_catalog

    catalog = load_catalog(REPO / "silos.yaml")
    found = {}
    for silo in SILOS:
        with open_silo(catalog.silo(silo), "local", home) as connector:
            rows = connector.execute(f"SELECT {', '.join(SAMPLED)} FROM customers ORDER BY customer_id LIMIT 5").read_all().to_pylist()
        found[silo] = {f"@{k}_{i}@": str(r[k]) for i, r in enumerate(rows) for k in SAMPLED}
    return found


def attacks() -> list[Attack]:
    out: list[Attack] = []
    for s in SILOS:
        real = {k: [f"@{k}_{i}@" for i in range(5)] for k in SAMPLED}
        # 1. syntax the lineage could not see
        for column in (*DIRECT, "customer_id", "*"):
            out.append(Attack("syntax", s, f"SELECT COLUMNS('{column}') FROM customers", expect="refused"))
        out.append(Attack("syntax", s, "SELECT COLUMNS('memo') FROM transactions", expect="refused"))
        out += [Attack("syntax", s, f"SELECT #{i} FROM customers", expect="refused") for i in range(1, 12)]
        for sql in ("SELECT c FROM customers c", "SELECT to_json(c) FROM customers c", "SELECT [c] FROM customers c",
                    "SELECT struct_pack(x := c) FROM customers c", "SELECT t FROM transactions t",
                    "SELECT row_to_json(c) FROM customers c", "SELECT unnest([email]) FROM customers",
                    "SELECT list(email) FROM customers", "SELECT array_agg(memo) FROM transactions",
                    "SELECT string_agg(memo, ',') FROM transactions", "SELECT unnest([customer_id, national_id]) FROM customers",
                    "SELECT customer_id AS email FROM customers UNION ALL BY NAME SELECT email FROM customers",
                    "SELECT home_region FROM customers UNION BY NAME SELECT full_name AS home_region FROM customers",
                    "SELECT * FROM read_parquet('/etc/passwd')", "SELECT * FROM read_csv_auto('/etc/hosts')",
                    "SELECT * FROM postgres_query('silo', 'SELECT email FROM customers')",
                    "SELECT * FROM query('SELECT email FROM customers')", "SELECT * FROM main.customers",
                    "SELECT * FROM silo.public.customers", 'SELECT * FROM "__fl_m_customers"', "SELECT * FROM pg_catalog.pg_tables",
                    "SELECT pg_read_file('postgresql.conf')", "SELECT getenv('FEDLAKE_PSEUDONYM_KEY')",
                    "SELECT current_setting('data_directory')", "SELECT * EXCLUDE (email) FROM customers",
                    "SELECT * REPLACE (email AS customer_id) FROM customers", "SELECT email[1] FROM customers",
                    "SELECT * FROM customers USING SAMPLE 1", "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n FROM r",
                    "SELECT * FROM customers, LATERAL (SELECT email) x", "SELECT map([email], [1]) FROM customers",
                    "SELECT regexp_extract(memo, '[0-9]+') FROM transactions", "SELECT md5(national_id) FROM customers",
                    "SELECT hash(email) FROM customers", "SELECT {'e': email} FROM customers"):
            out.append(Attack("syntax", s, sql, expect="refused"))
        out.append(Attack("syntax", s, "SELECT c.* FROM customers c"))  # the masked view, nothing more
        # 2. predicates, joins, ordering, limits and subqueries see only masked values
        for sql in ("SELECT txn_id FROM transactions WHERE ascii(substr(memo, 1, 1)) = 65",
                    "SELECT count(*) AS n FROM customers WHERE email LIKE 'a%'", "SELECT count(*) AS n FROM customers WHERE full_name > 'M'",
                    "SELECT count(*) AS n FROM customers WHERE phone IS NULL",
                    "SELECT customer_id FROM customers LIMIT 5 OFFSET (SELECT count(*) FROM customers WHERE email LIKE 'a%')",
                    "SELECT customer_id FROM customers LIMIT (SELECT count(*) FROM customers WHERE email LIKE 'b%')",
                    "SELECT customer_id FROM customers QUALIFY row_number() OVER (ORDER BY email) = 1",
                    "SELECT customer_id FROM customers WHERE customer_id IN (SELECT customer_id FROM customers WHERE email = 'x')",
                    "SELECT count(*) AS n FROM customers c WHERE EXISTS (SELECT 1 FROM customers c2 WHERE c2.email < c.email)",
                    "SELECT a.account_id FROM accounts a JOIN customers c ON a.customer_id = c.customer_id AND c.email LIKE 'a%'",
                    "SELECT email, count(*) AS n FROM customers GROUP BY email", "SELECT home_region FROM customers GROUP BY home_region HAVING max(email) > 'm'",
                    "SELECT customer_id FROM customers ORDER BY email LIMIT 1", "SELECT count(*) AS n FROM transactions WHERE memo LIKE '%cash%'",
                    "SELECT customer_id FROM customers WHERE CASE WHEN email LIKE 'a%' THEN true ELSE false END",
                    "SELECT customer_id FROM customers WHERE length(national_id) = 11",
                    "SELECT customer_id FROM customers WHERE date_of_birth < '1970'", "SELECT customer_id, postcode FROM customers ORDER BY postcode LIMIT 3"):
            out.append(Attack("predicates", s, sql))
        if s in FOREIGN:
            for sql in ("SELECT customer_id FROM customers ORDER BY income DESC LIMIT 20", "SELECT count(*) AS n FROM customers WHERE income > 50000",
                        "SELECT customer_id FROM customers WHERE income BETWEEN 40000 AND 40100",
                        "SELECT txn_id FROM transactions WHERE amount = 9500", "SELECT customer_id FROM customers ORDER BY income LIMIT 1 OFFSET 10"):
                out.append(Attack("predicates", s, sql, expect="refused"))
        for nid, email, cid, born, postcode in zip(real["national_id"], real["email"], real["customer_id"], real["date_of_birth"], real["postcode"]):
            out.append(Attack("predicates", s, f"SELECT customer_id FROM customers WHERE national_id = '{nid}'"))
            out.append(Attack("predicates", s, f"SELECT customer_id FROM customers WHERE customer_id = '{cid}'", expect="empty"))
            out.append(Attack("predicates", s, f"SELECT count(*) AS n FROM customers WHERE postcode = '{postcode}' HAVING count(*) > 0", expect="empty"))
            out.append(Attack("predicates", s, f"SELECT customer_id FROM customers WHERE CAST(date_of_birth AS VARCHAR) = '{born}'", expect="empty"))
            out.append(Attack("predicates", s, f"SELECT count(*) AS n FROM customers WHERE email = '{email}'"))
        # 3. error text carries nothing, failures are ledgered
        for sql in ("SELECT CAST(email AS INTEGER) FROM customers", "SELECT CAST(customer_id AS INTEGER) FROM customers",
                    "SELECT home_region FROM customers GROUP BY home_region HAVING error(string_agg(national_id || ' ' || email, ';')) IS NULL",
                    "SELECT error(customer_id) FROM customers", "SELECT CAST(date_of_birth AS DATE) FROM customers",
                    "SELECT CAST(account_id AS BIGINT) FROM accounts", "SELECT 1 / (customer_id = 'x')::INT FROM customers"):
            out.append(Attack("errors", s, sql))
        out += [Attack("errors", s, f"SELECT CAST(postcode || customer_id AS INTEGER) AS p FROM customers LIMIT 5 OFFSET {n}")
                for n in range(0, 50, 5)]
        # 4. aggregates: no CASE, FILTER, windows or subqueries around aggregate-only data; DP where allowed
        if s in FOREIGN:
            token_like = "0123456789abcdef0123456789abcdef"
            for sql in ("SELECT sum(CASE WHEN customer_id = 'x' THEN income END) AS s FROM customers",
                        "SELECT sum(income) FILTER (WHERE customer_id = 'x') AS s FROM customers",
                        "SELECT avg(CASE WHEN home_region = 'US' THEN income ELSE 0 END) AS a FROM customers",
                        "SELECT sum(income * CAST(customer_id = 'x' AS INTEGER)) AS s FROM customers",
                        "SELECT count(DISTINCT income) AS n FROM customers", "SELECT max(income) AS m FROM customers",
                        "SELECT min(amount) AS m FROM transactions", "SELECT sum(income) OVER () AS s FROM customers",
                        "SELECT sum(income) AS s FROM (SELECT income FROM customers) q",
                        "WITH x AS (SELECT income FROM customers) SELECT sum(income) AS s FROM x",
                        "SELECT sum(amount) + 0 AS s FROM transactions", "SELECT home_region, sum(income) AS s FROM customers GROUP BY home_region HAVING sum(income) > 0",
                        "SELECT home_region, sum(income) AS s FROM customers GROUP BY home_region ORDER BY s DESC"):
                out.append(Attack("aggregates", s, sql, expect="refused"))
            for sql in (f"SELECT home_region, sum(income) AS s, count(*) AS n FROM customers WHERE customer_id <> '{token_like}' GROUP BY home_region",
                        "SELECT sum(income) AS s FROM customers GROUP BY customer_id",
                        "SELECT t.channel, sum(t.amount) AS s FROM transactions t JOIN accounts a ON a.account_id = t.account_id GROUP BY t.channel",
                        "SELECT avg(income) AS a FROM customers WHERE customer_id = (SELECT min(customer_id) FROM customers)"):
                out.append(Attack("aggregates", s, sql))
        else:
            for sql in ("SELECT defaulted FROM loans", "SELECT sum(CASE WHEN loan_id = 1 THEN CAST(defaulted AS INTEGER) END) AS d FROM loans",
                        "SELECT loan_id FROM loans WHERE defaulted", "SELECT purpose FROM loans GROUP BY purpose HAVING bool_or(defaulted)"):
                out.append(Attack("aggregates", s, sql, expect="refused"))
            out.append(Attack("aggregates", s, "SELECT purpose, avg(CAST(defaulted AS INTEGER)) AS rate FROM loans GROUP BY purpose"))
        # 5. raw placement and 7. coordination need the coordinate role
        for raw in (True, False):
            out.append(Attack("placement", s, action="residual", body={
                "id": "x", "purpose": "analytics", "destination": "EU", "sql": "SELECT * FROM __f0", "raw": raw,
                "local": [{"name": "__f0", "sql": "SELECT email FROM customers"}], "imports": [], "semijoins": []}, expect="refused"))
        out.append(Attack("coordination", s, action="prepare_transfer", body={
            "sql": "SELECT customer_id FROM customers", "purpose": "analytics", "destination": "US", "final": "EU", "receiver": "us_lake"}, expect="refused"))
        out.append(Attack("coordination", s, action="attach_keys", body={"ticket": "someone-elses-fragment", "column": "customer_id"}, expect="refused"))
        out.append(Attack("coordination", s, action="fetch", body={"ticket": "0" * 64}, expect="refused"))
        out.append(Attack("coordination", s, action="residual_report", body={"id": "x"}, expect="refused"))
        out.append(Attack("coordination", s, action="residual", body={
            "id": "y", "purpose": "analytics", "sql": "SELECT * FROM __f1", "local": [], "semijoins": [],
            "imports": [{"name": "__f1", "silo": "eu_core", "location": "grpc+tls://203.0.113.7:443", "ticket": "t", "schema": {}}]}, expect="refused"))
        out.append(Attack("coordination", s, action="pii_scan", body={"table": "customers"}, expect="refused"))
        out.append(Attack("coordination", s, action="validate", body={"table": "customers", "purpose": "analytics", "destination": "US"},
                          expect="refused"))
        # 6. the destination comes from the identity
        for region in ("US", "SG", "ANYWHERE"):
            out.append(Attack("destination", s, "SELECT customer_id, income FROM customers", destination=region, expect="refused"))
            out.append(Attack("destination", s, action="statistics", body={"table": "customers", "purpose": "analytics", "destination": region}, expect="refused"))
        out.append(Attack("destination", s, action="statistics", body={"table": "customers", "purpose": "analytics"}))
        # 8. materialize needs its role and never reads raw; 9. learning needs the train role
        for sql in ("SELECT * FROM customers", "SELECT email FROM customers"):
            out.append(Attack("materialize", s, action="materialize", body={"table": "mine", "sql": sql, "purpose": "analytics"}, expect="refused"))
        out.append(Attack("materialize", s, action="materialize", body={"table": "customers", "sql": "SELECT 1 AS x", "purpose": "analytics"}, expect="refused"))
        for action in ("train_round", "evaluate_round"):
            out.append(Attack("learning", s, action=action, body={"purpose": "analytics", "model": "0" * 64, "split": "test"}, expect="refused"))
        # 11. no pseudonym oracle: a literal leaves as itself
        for value in real["national_id"][:3] + real["customer_id"][:2]:
            out.append(Attack("oracle", s, f"SELECT customer_id FROM customers WHERE false UNION ALL SELECT '{value}'", expect="literal"))
        # 12. names are names, not paths; limits come before planning
        for name in ("../sg_lake/customers", "/etc/passwd", "customers; DROP TABLE customers", "_fl_stage_x"):
            for action in ("schema", "row_count"):
                out.append(Attack("limits", s, action=action, body={"table": name}, expect="refused"))
        out.append(Attack("limits", s, "SELECT count(*) AS n FROM customers WHERE " + " OR ".join(f"income = {i}" for i in range(4000)), expect="refused"))
        out.append(Attack("limits", s, "SELECT 1 AS x FROM customers WHERE " + "(" * 300 + "true" + ")" * 300, expect="refused"))
        out.append(Attack("limits", s, " UNION ALL ".join("SELECT customer_id FROM customers" for _ in range(2000))))
    return out


# -- what counts as a leak -----------------------------------------------------------------------

def _secrets(home) -> set:
    """Every value the analyst may not see as it is: personal data, memos, raw identifiers, exact
    dates of birth and full postcodes in every silo; row-level incomes and amounts outside the EU."""
    from fedlake.catalog import load_catalog

    catalog = load_catalog(REPO / "silos.yaml")
    found: set = set()
    for silo in SILOS:
        with open_silo(catalog.silo(silo), "local", home) as connector:
            for table, spec in catalog.silo(silo).tables.items():
                for column, classification in spec.columns.items():
                    protected = classification.startswith("pii.") or classification == "free_text"
                    money = classification == "financial" and silo in FOREIGN and column in ("income", "amount")
                    if not (protected or money):
                        continue
                    for v in connector.execute(f'SELECT DISTINCT "{column}" AS v FROM "{table}"').read_all().column(0).to_pylist():
                        short = 12 if classification == "free_text" else 6  # a one-word memo is no secret
                        if v is None or (isinstance(v, str) and len(v) < short) or (isinstance(v, float) and v == int(v)):
                            continue
                        found.add(v)
                        if isinstance(v, (dt.date, dt.datetime)):
                            found.add(v.isoformat())
    return found


def _leaks(values, secrets: set) -> list:
    return [v for v in values if v in secrets]


def _in_text(text: str, secrets: set) -> list:
    return [v for v in secrets if isinstance(v, str) and len(v) >= 8 and v in text]


@pytest.fixture(scope="module")
def analyst(local_deployment, catalog):
    policy = load_policy(REPO / "policies.yaml", catalog)
    token = client_token(policy, "analyst", "local", local_deployment.home)
    # served as `fedlake agent serve` serves them, so the validation and training attacks meet their role checks
    clients = {s: InProcessAgentClient(build_agent(catalog, policy, s, "local", local_deployment.home, plugins=serving_plugins()), token)
               for s in SILOS}
    yield clients
    for c in clients.values():
        c.close()


@pytest.fixture(scope="module")
def flight_analyst(prod_deployment):
    clients = {s: FlightAgentClient(s, prod_deployment.env_location(s), TOKENS["analyst"], prod_deployment.env["FEDLAKE_AGENT_CA"])
               for s in SILOS}
    yield clients
    for c in clients.values():
        c.close()


@pytest.fixture(scope="module")
def secrets(local_deployment):
    return _secrets(local_deployment.home)


@pytest.fixture(scope="module")
def samples(local_deployment):
    return _samples(local_deployment.home)


def _real(text: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        text = text.replace(placeholder, value.replace("'", "''"))
    return text


def run(clients, attack: Attack, secrets: set, samples: dict) -> str:
    """Carry out one attack; returns how it ended ("refused", "answered") after checking nothing leaked."""
    client = clients[attack.silo]
    sql = _real(attack.sql, samples[attack.silo])
    try:
        if attack.action == "residual":
            result = client.residual(RunResidual.from_fields(attack.body)).read_all().to_pylist()
            values, rows = list(_flatten(result)), None
        elif attack.action == "attach_keys":
            client.attach_keys(attack.body["ticket"], attack.body["column"], KeySet.of(pa.array(["x"]), "text"))
            values, rows = [], None
        elif attack.action == "fetch":
            table = client.fetch(attack.body["ticket"]).read_all()
            values, rows = [v for column in table.columns for v in column.to_pylist()], table.to_pylist()
        elif attack.action:
            result = client.action(attack.action, **attack.body)
            values = [result] if not isinstance(result, dict) else list(_flatten(result))
            rows = None
        else:
            table = client.query(sql, "analytics", attack.destination).read_all()
            values = [v for column in table.columns for v in column.to_pylist()]
            rows = table.to_pylist()
    except FedlakeError as exc:
        assert not _in_text(str(exc), secrets), f"the error carries protected values: {str(exc)[:300]}"
        return "refused"
    if attack.expect == "literal":
        literal = sql.rsplit("'", 2)[1]
        assert values == [literal], "a literal leaves as itself, never as the pseudonym of its value"
        return "answered"
    leaked = _leaks(values, secrets)
    assert not leaked, f"protected values arrived: {leaked[:5]}"
    assert attack.expect != "refused", f"expected a refusal, got {len(values)} values"
    if attack.expect == "empty":
        assert not rows, "a probe with a real value must find nothing: the predicate compares masked values"
    return "answered"


def _flatten(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _flatten(v)
    elif isinstance(value, list):
        for v in value:
            yield from _flatten(v)
    else:
        yield value


ATTACKS = attacks()
QUERY_ATTACKS = [a for a in ATTACKS if a.sql]


def test_the_suite_covers_every_family_with_over_400_attacks():
    families = {a.family for a in ATTACKS}
    assert len(ATTACKS) >= 400 and len(QUERY_ATTACKS) >= 100
    assert families == {"syntax", "predicates", "errors", "aggregates", "placement", "coordination", "destination",
                        "materialize", "learning", "oracle", "limits"}


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_in_process(analyst, secrets, samples, attack):
    started = time.perf_counter()
    run(analyst, attack, secrets, samples)
    if attack.family == "limits" and attack.sql:
        assert time.perf_counter() - started < 5, "limits are checked before planning costs explode"


@pytest.mark.parametrize("attack", QUERY_ATTACKS, ids=[a.id for a in QUERY_ATTACKS])
def test_over_flight_and_tls(flight_analyst, secrets, samples, attack):
    run(flight_analyst, attack, secrets, samples)


def test_every_attack_is_ledgered_and_the_ledger_verifies(local_deployment, catalog, secrets, samples, tmp_path):
    """Allowed, refused or failed, each request leaves an entry in the agent's signed chain, and the
    chain verifies with the agent's public key."""
    from fedlake.audit import open_ledger
    from fedlake.signing import public_keys, signing_key

    policy = load_policy(REPO / "policies.yaml", catalog)
    ledger = open_ledger(str(tmp_path / "audit.duckdb"), signer=signing_key(tmp_path, "sg_lake"))
    agent = build_agent(catalog, policy, "sg_lake", "local", local_deployment.home, ledger=ledger)
    clients = {"sg_lake": InProcessAgentClient(agent, client_token(policy, "analyst", "local", local_deployment.home))}
    outcomes = [run(clients, a, secrets, samples) for a in QUERY_ATTACKS if a.silo == "sg_lake"]
    entries = ledger.entries()
    assert len(entries) >= len(outcomes)
    assert {e["decision"] for e in entries} >= {"denied", "rewritten"}
    assert any(e["decision"] == "failed" and e["error"].split(":")[0] in ("INVALID_VALUE", "SILO_ENGINE") for e in entries)
    assert ledger.verify(public_keys(tmp_path), require_signatures=True).ok


@pytest.mark.parametrize("silo", SILOS)
def test_a_request_that_runs_too_long_is_interrupted_and_ledgered(analyst, monkeypatch, silo):
    """A three-way cross join of the transactions would run for hours: the engine is interrupted at
    the request limit, the caller gets a code and an id, and the failure is in the ledger."""
    import fedlake.silos.base

    monkeypatch.setattr(fedlake.silos.base, "REQUEST_SECONDS", 1.0)
    ledger = analyst[silo].agent.ledger
    before = ledger.last_seq()
    started = time.perf_counter()
    with pytest.raises(FedlakeError, match="code CANCELLED, error id [0-9a-f]+"):
        analyst[silo].query("SELECT max(a.txn_id || b.txn_id || c.txn_id) AS n FROM transactions a, transactions b, transactions c",
                            "analytics", "EU").read_all()
    assert time.perf_counter() - started < 10
    assert any(e["decision"] == "failed" and e["error"].startswith("CANCELLED:") for e in ledger.entries(after=before))
