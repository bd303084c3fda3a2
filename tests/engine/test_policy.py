"""policies.yaml: the shipped policy decides as documented, and a malformed one is refused at
load with the file and the key."""

from __future__ import annotations

import json

import pytest
import yaml

from fedlake.errors import ConfigError
from fedlake.policy.model import load_policy
from tests.conftest import REPO


def shipped() -> dict:
    return json.loads(json.dumps(yaml.safe_load((REPO / "policies.yaml").read_text())))


@pytest.fixture(scope="module")
def policy(catalog):
    return load_policy(REPO / "policies.yaml", catalog)


@pytest.mark.parametrize(
    "silo, table, column, to, purpose, action, rule",
    [
        ("eu_core", "customers", "national_id", "US", "credit_scoring", "pseudonymize", "classifications.pii.direct[0]"),
        ("eu_core", "customers", "national_id", "EU", "analytics", "deny", "classifications.pii.direct[1]"),
        ("us_lake", "transactions", "memo", "US", "aml", "deny", "classifications.free_text[0]"),
        ("sg_lake", "transactions", "amount", "SG", "analytics", "allow", "classifications.financial[0]"),
        ("sg_lake", "transactions", "amount", "EU", "analytics", "aggregate", "classifications.financial[2]"),
        ("sg_lake", "transactions", "amount", "EU", "aml", "allow", "classifications.financial[1]"),
        ("us_lake", "accounts", "account_id", "US", "aml", "pseudonymize", "classifications.pii.quasi[0]"),
        ("us_lake", "accounts", "account_id", "EU", "aml", "pseudonymize", "classifications.pii.quasi[0]"),
        ("eu_core", "customers", "date_of_birth", "EU", "analytics", "generalize", "overrides.*.customers.date_of_birth[0]"),
        ("sg_lake", "customers", "full_name", "SG", "aml", "deny", "overrides.*.customers.full_name[0]"),
        ("eu_core", "loans", "defaulted", "EU", "credit_scoring", "allow", "overrides.eu_core.loans.defaulted[0]"),
        ("eu_core", "loans", "defaulted", "EU", "analytics", "aggregate", "overrides.eu_core.loans.defaulted[1]"),
        ("eu_core", "loans", "purpose", "US", "analytics", "allow", "classifications.public[0]"),
    ],
)
def test_decisions_follow_overrides_then_classification(policy, silo, table, column, to, purpose, action, rule):
    decision = policy.decide(silo, table, column, to, purpose)
    assert decision.action == action
    assert decision.rule.endswith(rule)
    if action == "aggregate":  # leaves only as DP aggregates, within declared bounds
        assert policy.dp.bounds_for(silo, table, column) is not None
    if action == "generalize":
        assert decision.generalize["method"] == "age_band"


def test_an_undeclared_purpose_is_denied(policy):
    assert policy.decide("eu_core", "loans", "purpose", "EU", "marketing").action == "deny"


@pytest.mark.parametrize(
    "mutate, key, says",
    [
        (lambda r: r["classifications"]["public"][0].update(action="publish"), "classifications.public[0].action", "unknown action 'publish'"),
        (lambda r: r["classifications"].update({"pii.secret": [{"action": "deny"}]}), "classifications.pii.secret", "unknown classification"),
        (lambda r: r["classifications"]["financial"][1].update(purposes=["marketing"]), "classifications.financial[1].purposes[0]", "unknown purpose 'marketing'"),
        (lambda r: r["classifications"]["financial"][0].update(to=["MARS"]), "classifications.financial[0].to", "unknown region 'MARS'"),
        (lambda r: r["classifications"]["financial"][0].update(when="always"), "classifications.financial[0].when", "unknown rule field"),
        (lambda r: r["overrides"].update({"eu_vault.customers.email": [{"action": "deny"}]}), "overrides.eu_vault.customers.email", "unknown silo 'eu_vault'"),
        (lambda r: r["overrides"].update({"*.clients.email": [{"action": "deny"}]}), "overrides.*.clients.email", "unknown table 'clients'"),
        (lambda r: r["overrides"].update({"*.customers.shoe_size": [{"action": "deny"}]}), "overrides.*.customers.shoe_size", "unknown column 'shoe_size'"),
        (lambda r: r["overrides"].update({"customers.email": [{"action": "deny"}]}), "overrides.customers.email", "silo.table.column"),
        (lambda r: r["subjects"].update(clients="customer_id"), "subjects.clients", "unknown table"),
        (lambda r: r["subjects"].update(loans="borrower"), "subjects.loans", "unknown column 'borrower'"),
        (lambda r: r["clients"]["analyst"].update(purposes=["espionage"]), "clients.analyst.purposes[0]", "unknown purpose 'espionage'"),
        (lambda r: r.update(aggregate={"k": 10}), "aggregate", "declare `dp`"),
        (lambda r: r["dp"].update(epsilon=-1.0), "dp.epsilon", "must be > 0"),
        (lambda r: r["clients"]["analyst"].update(roles=["admin"]), "clients.analyst.roles[0]", "unknown role 'admin'"),
        (lambda r: r["clients"]["analyst"].update(region="MARS"), "clients.analyst.region", "expected the region"),
        (lambda r: r["join_domains"].update(person=["*.customers.shoe"]), "join_domains.person[0]", "unknown column 'shoe'"),
        (lambda r: r["generalize"].update(postcode={"method": "blur"}), "generalize.postcode", "age_band | prefix"),
        (lambda r: r.update(purpose=["x"]), "purpose", "unknown key"),
        (lambda r: r.update(purposes=[]), "purposes", "non-empty list"),
    ],
)
def test_malformed_policy_names_file_and_key(catalog, tmp_path, mutate, key, says):
    raw = shipped()
    mutate(raw)
    path = tmp_path / "policies.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_policy(path, catalog)
    assert (err.value.path, err.value.key) == (str(path), key)
    assert says in str(err.value)


def test_policy_that_does_not_parse_names_the_line(catalog, tmp_path):
    path = tmp_path / "policies.yaml"
    path.write_text("purposes: [aml\nclients: {}\n")
    with pytest.raises(ConfigError, match=r"policies.yaml: line \d+: not valid YAML"):
        load_policy(path, catalog)


def test_policy_explain_prints_each_output_column(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "fedlake.cli", "policy", "explain",
         "SELECT national_id AS nid, income, memo FROM us_lake.customers JOIN us_lake.accounts USING (customer_id) "
         "JOIN us_lake.transactions USING (account_id)", "--purpose", "credit_scoring", "--to", "EU"],
        cwd=REPO, capture_output=True, text=True, env={"FEDLAKE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    out = result.stdout
    assert "national_id            PSEUDONYMIZE" in out and "masks of us_lake.customers" in out
    assert "income                 ALLOW" in out
    assert "DENIED" in out and "column memo of us_lake.transactions is denied" in out and "classifications.free_text[0]" in out
