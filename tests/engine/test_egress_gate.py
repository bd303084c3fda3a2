"""The egress gate under masks: over 60 queries that try to get personal data, free text or
row-level financial data out of a silo, and queries that are allowed, as the coordinator for each
purpose. A request is refused naming the column and the rule or the construct; or it is answered over
the masked relations: pseudonyms are the keyed HMAC of the purpose and join domain, generalized
values are generalized, aggregate-only data leaves only as differentially private aggregates, and
what is allowed equals running the query in the silo. Through in-process agents (local) and
through the agent processes over TLS (prod)."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import pyarrow as pa
import pytest

from fedlake.agent import EgressDenied, FlightAgentClient, Forbidden, local_agent_client
from fedlake.policy.model import load_policy
from fedlake.policy.transforms import derive_key, pseudonym, pseudonym_key
from fedlake.silos import open_silo
from tests.conftest import PSEUDONYM_KEY, REPO, TOKENS

DENY, ALLOW, REWRITE, DP = "deny", "allow", "rewrite", "dp"


@dataclass(frozen=True)
class Case:
    silo: str
    sql: str
    purpose: str
    expect: str
    to: str = "EU"
    pseudonymized: tuple[tuple[str, str], ...] = ()  # (output column, join domain): keyed pseudonyms of the raw values


CASES = [
    # personal data that may not leave at all, however it is dressed up
    Case("us_lake", "SELECT full_name FROM customers", "analytics", DENY),
    Case("us_lake", "SELECT full_name AS innocuous FROM customers", "credit_scoring", DENY),
    Case("sg_lake", "SELECT upper(full_name) AS n FROM customers", "aml", DENY),
    Case("eu_core", "SELECT concat(full_name, '-', phone) AS x FROM customers", "credit_scoring", DENY),
    Case("eu_core", "SELECT CAST(phone AS VARCHAR) AS p FROM customers", "aml", DENY),
    Case("us_lake", "SELECT full_name || '' AS x FROM customers", "aml", DENY),
    Case("sg_lake", "SELECT national_id FROM customers", "analytics", DENY),
    Case("sg_lake", "SELECT count(DISTINCT national_id) AS n FROM customers", "analytics", DENY),
    Case("us_lake", "SELECT home_region, min(email) AS e FROM customers GROUP BY home_region", "analytics", DENY),
    Case("sg_lake", "SELECT md5(national_id) AS h FROM customers", "credit_scoring", DENY),
    Case("eu_core", "SELECT CASE WHEN income > 50000 THEN full_name END AS rich FROM customers", "credit_scoring", DENY),
    Case("eu_core", "SELECT a.account_id, (SELECT c.phone FROM customers c WHERE c.customer_id = a.customer_id) AS p FROM accounts a", "aml", DENY),
    Case("us_lake", "SELECT (SELECT max(full_name) FROM customers) AS x", "analytics", DENY),
    Case("sg_lake", "SELECT list(email) AS es FROM customers", "aml", DENY),
    Case("us_lake", "WITH x AS (SELECT full_name AS n FROM customers) SELECT n FROM x", "credit_scoring", DENY),
    Case("sg_lake", "SELECT customer_id FROM customers UNION ALL SELECT full_name FROM customers", "analytics", DENY),
    Case("eu_core", "SELECT n FROM (SELECT email AS n FROM customers UNION SELECT phone FROM customers) AS u", "aml", DENY),
    Case("us_lake", "SELECT customer_id FROM customers WHERE email LIKE 'a%'", "analytics", DENY),
    Case("us_lake", "SELECT * FROM customers", "analytics", DENY),  # the star includes aggregate-only income
    # free text never leaves its silo, and no destination but the caller's own may be asked for
    Case("us_lake", "SELECT memo FROM transactions", "aml", DENY, to="US"),
    Case("eu_core", "SELECT memo FROM transactions", "aml", DENY),
    Case("sg_lake", "SELECT substr(memo, 1, 5) AS m FROM transactions", "aml", DENY),
    Case("sg_lake", "WITH x AS (SELECT memo AS m FROM transactions) SELECT m FROM x", "aml", DENY),
    Case("us_lake", "SELECT m FROM (SELECT memo AS m FROM transactions) AS q", "aml", DENY),
    Case("eu_core", "SELECT merchant_category FROM transactions UNION SELECT memo FROM transactions", "aml", DENY),
    Case("sg_lake", "SELECT string_agg(memo, ',') AS all_memos FROM transactions", "aml", DENY),
    Case("us_lake", "SELECT lag(memo) OVER (ORDER BY ts) AS previous FROM transactions", "aml", DENY),
    Case("sg_lake", "SELECT count(memo) AS n FROM transactions", "analytics", DENY),
    Case("sg_lake", "SELECT txn_id FROM transactions WHERE memo LIKE '%cash%'", "aml", DENY),
    # row-level financial data crosses a border only for the purposes that need it; elsewhere only DP aggregates
    Case("us_lake", "SELECT amount FROM transactions", "analytics", DENY),
    Case("sg_lake", "SELECT txn_id, amount FROM transactions", "analytics", DENY),
    Case("us_lake", "SELECT income FROM customers", "analytics", DENY),
    Case("us_lake", "SELECT avg(income) OVER (PARTITION BY home_region) AS a FROM customers", "analytics", DENY),
    Case("sg_lake", "SELECT min(amount) AS smallest FROM transactions", "analytics", DENY),
    Case("eu_core", "SELECT defaulted FROM loans", "analytics", DENY),
    Case("us_lake", "SELECT s FROM (SELECT customer_id, sum(income) AS s FROM customers GROUP BY customer_id) AS per_customer", "analytics", DENY),
    Case("us_lake", "SELECT count(*) AS n FROM transactions WHERE amount > 9000", "analytics", DENY),
    Case("sg_lake", "SELECT merchant_category, count(*) AS n FROM transactions GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5", "analytics", DENY),
    Case("sg_lake", "SELECT currency, sum(amount) AS s FROM transactions GROUP BY currency HAVING sum(amount) > 0", "analytics", DENY),
    Case("us_lake", "SELECT sum(CASE WHEN home_region = 'US' THEN income END) AS s FROM customers", "analytics", DENY),
    # masked: keyed pseudonyms per purpose and join domain, generalized dates and postcodes; denied columns absent
    Case("us_lake", "SELECT national_id FROM customers", "credit_scoring", REWRITE, pseudonymized=(("national_id", "person"),)),
    Case("sg_lake", "SELECT national_id AS nid, income FROM customers", "credit_scoring", REWRITE, pseudonymized=(("nid", "person"),)),
    Case("eu_core", "SELECT email FROM customers", "aml", REWRITE, pseudonymized=(("email", "eu_core.customers.email"),)),
    Case("us_lake", "SELECT customer_id FROM accounts", "analytics", REWRITE, pseudonymized=(("customer_id", "customer"),)),
    Case("sg_lake", "SELECT c.national_id, a.account_id FROM customers c JOIN accounts a ON a.customer_id = c.customer_id", "credit_scoring",
         REWRITE, pseudonymized=(("national_id", "person"), ("account_id", "account"))),
    Case("us_lake", "WITH c AS (SELECT national_id FROM customers) SELECT national_id FROM c", "credit_scoring", REWRITE,
         pseudonymized=(("national_id", "person"),)),
    Case("eu_core", "SELECT national_id FROM customers UNION SELECT national_id FROM customers", "aml", REWRITE,
         pseudonymized=(("national_id", "person"),)),
    Case("us_lake", "SELECT account_id, count(*) AS n FROM transactions GROUP BY account_id", "credit_scoring", REWRITE,
         pseudonymized=(("account_id", "account"),)),
    Case("sg_lake", "SELECT date_of_birth, postcode FROM customers", "analytics", REWRITE),
    Case("eu_core", "SELECT loan_id, customer_id, defaulted FROM loans", "credit_scoring", REWRITE, pseudonymized=(("customer_id", "customer"),)),
    Case("eu_core", "SELECT account_id, amount FROM transactions WHERE amount > 5000", "aml", REWRITE, pseudonymized=(("account_id", "account"),)),
    Case("us_lake", "SELECT CAST(national_id AS VARCHAR) AS n FROM customers", "credit_scoring", REWRITE, pseudonymized=(("n", "person"),)),
    Case("sg_lake", "SELECT counterparty_account FROM transactions WHERE counterparty_account IS NOT NULL", "aml", REWRITE,
         pseudonymized=(("counterparty_account", "account"),)),
    Case("eu_core", "SELECT * FROM customers", "credit_scoring", REWRITE),
    Case("sg_lake", "SELECT c.* FROM customers c", "aml", REWRITE),
    Case("us_lake", "SELECT * FROM transactions", "aml", REWRITE),
    Case("us_lake", "SELECT max(national_id) AS m FROM customers", "credit_scoring", REWRITE),
    Case("sg_lake", "SELECT first_value(email) OVER (ORDER BY customer_id) AS e FROM customers", "aml", REWRITE),
    Case("us_lake", "SELECT max(date_of_birth) AS youngest FROM customers", "analytics", REWRITE),
    # aggregate-only data: differentially private COUNT, SUM and AVG over groups above a noisy threshold
    Case("us_lake", "SELECT home_region, avg(income) AS avg_income, count(*) AS n FROM customers GROUP BY home_region", "analytics", DP),
    Case("sg_lake", "SELECT channel, sum(amount) AS total FROM transactions GROUP BY channel", "analytics", DP),
    Case("sg_lake", "SELECT account_id, sum(amount) AS total FROM transactions GROUP BY account_id", "analytics", DP),
    Case("eu_core", "SELECT purpose, avg(CAST(defaulted AS INTEGER)) AS rate FROM loans GROUP BY purpose", "analytics", DP),
    Case("us_lake", "SELECT sum(income) AS s, count(*) AS n FROM customers", "analytics", DP),
    # allowed as they are: the same rows as in the silo
    Case("us_lake", "SELECT count(DISTINCT account_id) AS accounts FROM transactions", "analytics", ALLOW),
    Case("us_lake", "SELECT txn_id, ts, currency, channel FROM transactions", "aml", ALLOW),
    Case("sg_lake", "SELECT txn_id, amount, direction FROM transactions", "credit_scoring", ALLOW),
    Case("us_lake", "SELECT income, employment_years FROM customers", "credit_scoring", ALLOW),
    Case("eu_core", "SELECT loan_id, principal, rate, term_months, defaulted FROM loans", "credit_scoring", ALLOW),
    Case("eu_core", "SELECT date_trunc('month', ts) AS m, count(*) AS n FROM transactions GROUP BY 1", "analytics", ALLOW),
    Case("us_lake", "SELECT row_number() OVER (ORDER BY txn_id) AS rn, txn_id FROM transactions", "aml", ALLOW),
    Case("eu_core", "SELECT home_region, count(*) AS n FROM customers GROUP BY home_region", "analytics", ALLOW),
    Case("eu_core", "SELECT home_region, sum(income) AS s FROM customers GROUP BY home_region", "analytics", ALLOW),
]


@pytest.fixture(scope="module")
def policy(catalog):
    return load_policy(REPO / "policies.yaml", catalog)


@pytest.fixture(scope="module", params=["local", "prod"])
def setup(request, catalog, policy):
    deployment = request.getfixturevalue(f"{request.param}_deployment")
    if deployment.name == "local":
        clients = {s: local_agent_client(catalog, policy, s, deployment.home) for s in catalog.silos}
        master = pseudonym_key(deployment.home)
    else:
        clients = {
            s: FlightAgentClient(s, deployment.env_location(s), TOKENS["coordinator"], deployment.env["FEDLAKE_AGENT_CA"])
            for s in catalog.silos
        }
        master = PSEUDONYM_KEY.encode()
    silos = {s: open_silo(catalog.silo(s), deployment.name, deployment.home) for s in catalog.silos}
    yield deployment, clients, silos, master
    for c in (*clients.values(), *silos.values()):
        c.close()


def sensitive_values(silo, catalog) -> set:
    """Every raw value of the silo's personal-data columns, and every memo long enough to be telling."""
    values = set()
    for table, spec in catalog.silo(silo.name).tables.items():
        for column, classification in spec.columns.items():
            if classification.startswith("pii.") or classification == "free_text":
                for v in silo.execute(f'SELECT DISTINCT "{column}" AS v FROM "{table}"').read_all().column(0).to_pylist():
                    if v is not None and (classification != "free_text" or len(str(v)) >= 12):
                        values.add(v)
    return values


@pytest.fixture(scope="module")
def secrets(setup, catalog):
    _, _, silos, _ = setup
    return {name: sensitive_values(silo, catalog) for name, silo in silos.items()}


def normalized(table: pa.Table) -> list[tuple]:
    def cell(v):
        if isinstance(v, float):
            return round(v, 6)
        if isinstance(v, dt.datetime) and v.tzinfo is not None:
            return v.replace(tzinfo=None)
        return v

    return sorted((tuple(cell(v) for v in row.values()) for row in table.to_pylist()), key=repr)


def test_there_are_at_least_60_adversarial_and_allowed_queries():
    assert len(CASES) >= 60
    assert {c.expect for c in CASES} == {DENY, ALLOW, REWRITE, DP}


@pytest.mark.parametrize("case", CASES, ids=[f"{i:02d}-{c.expect}-{c.silo}" for i, c in enumerate(CASES)])
def test_gate(setup, secrets, policy, case):
    deployment, clients, silos, master = setup
    client, silo = clients[case.silo], silos[case.silo]
    before = client.egress()

    if case.expect == DENY:
        with pytest.raises((EgressDenied, Forbidden)) as denied:
            client.query(case.sql, case.purpose, case.to).read_all()
        message = str(denied.value)
        assert "rule" in message or "subset" in message or "destination comes from the identity" in message
        assert client.egress() == before, "a refused query must send nothing"
        return

    arrived = client.query(case.sql, case.purpose, case.to).read_all()
    rows, nbytes = client.egress()
    assert rows - before[0] == arrived.num_rows, "the agent's egress counter counts every row that arrived"
    # bytes are counted as Arrow buffers on the agent's side; over Flight the client's buffers may be laid out differently
    assert nbytes - before[1] == pytest.approx(arrived.nbytes, rel=0.05, abs=2048)
    leaked = {v for column in arrived.columns for v in column.to_pylist()} & secrets[case.silo]
    assert not leaked, f"raw personal data or free text arrived at the client: {sorted(map(str, leaked))[:5]}"

    if case.expect == ALLOW:
        assert normalized(arrived) == normalized(silo.execute(case.sql).read_all())
    elif case.expect == REWRITE:
        masked = mask_actions(policy, case)
        assert not any(masked.get(c) == "deny" for c in arrived.column_names), "a denied column is absent"
        if "*" not in case.sql:
            assert arrived.num_rows == silo.execute(case.sql).read_all().num_rows
        for name, domain in case.pseudonymized:
            direct = silo.execute(case.sql).read_all()
            key = derive_key(master, case.purpose, domain)
            expected = sorted((pseudonym(v, key) for v in direct.column(name).to_pylist()), key=repr)
            assert sorted(arrived.column(name).to_pylist(), key=repr) == expected
        if "date_of_birth" in arrived.column_names:
            assert all(v is None or (len(v.split("-")) == 2 and int(v.split("-")[1]) - int(v.split("-")[0]) == 9)
                       for v in arrived.column("date_of_birth").to_pylist())
        if "postcode" in arrived.column_names:
            assert {len(v) for v in arrived.column("postcode").to_pylist() if v} == {2}
    elif case.expect == DP:
        assert_released_with_differential_privacy(silo, case, arrived)


def mask_actions(policy, case: Case) -> dict[str, str]:
    """What the policy does, for this case, to each declared column of the silo's tables."""
    spec = policy.catalog.silo(case.silo)
    return {c: policy.decide(case.silo, t, c, case.to, case.purpose).action for t, table in spec.tables.items() for c in table.columns}


def assert_released_with_differential_privacy(silo, case: Case, arrived: pa.Table) -> None:
    """Groups are among the silo's own, fewer where small ones fall under the noisy threshold;
    counts are whole and not negative, averages stay within the declared bounds, and the values are
    not the exact ones."""
    direct = silo.execute(case.sql).read_all()
    keys = [c for c in arrived.column_names if c in ("home_region", "channel", "account_id", "purpose")]
    exact = {tuple(r[k] for k in keys): r for r in direct.to_pylist()}
    assert arrived.num_rows <= direct.num_rows
    if "account_id" not in keys:
        assert {tuple(r[k] for k in keys) for r in arrived.to_pylist()} <= set(exact)
    else:
        assert arrived.num_rows < direct.num_rows / 10, "per-account groups hold one subject each: almost none pass"
    for row in arrived.to_pylist():
        for name, value in row.items():
            if name == "n":
                assert isinstance(value, int) and value >= 0
            if name == "rate":
                assert 0.0 <= value <= 1.0
            if name in ("avg_income", "total", "s") and keys:
                assert value != exact[tuple(row[k] for k in keys)][name]


def test_purpose_limitation_per_client(setup, catalog, policy):
    """The analyst may declare analytics only; asking for credit_scoring is refused before any planning."""
    deployment, _, _, _ = setup
    if deployment.name == "local":
        from fedlake.agent import InProcessAgentClient, build_agent, client_token

        analyst = InProcessAgentClient(build_agent(catalog, policy, "us_lake", "local", deployment.home),
                                       client_token(policy, "analyst", "local", deployment.home))
    else:
        analyst = FlightAgentClient("us_lake", deployment.env_location("us_lake"), TOKENS["analyst"], deployment.env["FEDLAKE_AGENT_CA"])
    with pytest.raises(Forbidden, match="may not declare purpose 'credit_scoring'"):
        analyst.query("SELECT income FROM customers", "credit_scoring", "EU").read_all()
    n = analyst.query("SELECT count(*) AS n FROM customers", "analytics", "EU").read_all().column("n")[0].as_py()
    assert n > 0 and not math.isnan(n)
    analyst.close()
