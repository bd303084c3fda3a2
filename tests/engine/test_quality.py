"""Data quality in place: suites load and are validated against the catalog, run where the data is
(GE's SQL on PostgreSQL itself, and on a lake's own DuckDB), and only results leave, with
sample values only where the policy lets them out as they are."""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from fedlake.agent import Forbidden, InProcessAgentClient, build_agent, client_token
from fedlake.errors import ConfigError, FedlakeError
from fedlake.plugins import quality_plugin
from fedlake.policy.model import load_policy
from fedlake.quality import VALIDATE_ACTION, Expectation, Suite, load_suites, validate_in_place
from fedlake.silos import open_silo
from fedlake.synth.regional_catalog import write_regional_catalog
from fedlake.synth.seed import seed_demo_bank
from tests.conftest import REPO

NEGATIVE_AMOUNTS = 7
NULL_NATIONAL_IDS = 4


@pytest.fixture(scope="module")
def suites(catalog):
    return load_suites(REPO / "silos.yaml", catalog)


@pytest.fixture(scope="module")
def policy(catalog):
    return load_policy(REPO / "policies.yaml", catalog)


@pytest.fixture
def offline(monkeypatch):
    """Any connection beyond loopback or a Unix socket (analytics, a docs site, a version check) fails the test."""
    real_connect = socket.socket.connect

    def guarded(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            try:
                local = ipaddress.ip_address(host).is_loopback
            except ValueError:
                local = host == "localhost"
            if not local:
                raise AssertionError(f"network access to {address} during data-quality validation")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="module")
def defective_bank(catalog, tmp_path_factory):
    """A small bank with two planted defects: negative amounts in sg_lake.transactions and null
    national ids in eu_core.customers."""
    home = tmp_path_factory.mktemp("quality_bank")
    seed_demo_bank(catalog, "local", home, 0.01, 3)
    with open_silo(catalog.silo("sg_lake"), "local", home) as lake:
        replace_first_rows(lake, "transactions", "amount", NEGATIVE_AMOUNTS, lambda column: pc.negate(column))
    with open_silo(catalog.silo("eu_core"), "local", home) as core:
        replace_first_rows(core, "customers", "national_id", NULL_NATIONAL_IDS, lambda column: pa.nulls(len(column), pa.string()))
    return home


def replace_first_rows(connector, table, column, n, make):
    """Replace `column` in the first n rows (by the table's own order) with `make(column)`."""
    rows = connector.execute(f"SELECT * FROM {table}").read_all()
    index = rows.schema.get_field_index(column)
    original = rows.column(index).combine_chunks()
    first = pc.less(pa.array(range(rows.num_rows)), n)
    rows = rows.set_column(index, column, pc.if_else(first, make(original), original))
    connector.load(table, rows.schema, rows.to_batches())


def by_label(report):
    return {e["label"]: e for e in report["expectations"]}


# -- loading --------------------------------------------------------------------------------


def test_every_table_of_every_silo_has_its_suite(suites, catalog):
    for name, spec in catalog.silos.items():
        assert sorted(suites.tables(name)) == sorted(spec.tables)
    loans = suites.for_table("eu_core", "loans")
    assert loans.path.endswith("expectations/loans.json")
    labels = [e.label() for e in loans.expectations]
    assert "expect_column_values_to_be_between(rate)" in labels
    assert "expect_column_values_to_not_be_null(defaulted)" in labels
    assert suites.for_table("us_lake", "transactions") is suites.for_table("sg_lake", "transactions"), "one shared file"


def copy_deployment(tmp_path):
    shutil.copy(REPO / "silos.yaml", tmp_path / "silos.yaml")
    (tmp_path / "expectations").mkdir()
    return tmp_path


def write(path, body):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return path


def test_a_silo_override_replaces_the_shared_suite_for_that_silo_only(tmp_path):
    root = copy_deployment(tmp_path)
    shared = {"name": "transactions", "expectations": [{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "amount"}}]}
    local = {"name": "sg_transactions", "expectations": [
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "currency", "value_set": ["SGD"]}}]}
    write(root / "expectations" / "transactions.json", shared)
    write(root / "expectations" / "sg_lake" / "transactions.json", local)
    write(root / "expectations" / "README.md", "notes sit next to the suites")
    loaded = load_suites(root / "silos.yaml")
    assert loaded.for_table("sg_lake", "transactions").name == "sg_transactions"
    assert loaded.for_table("us_lake", "transactions").name == "transactions"
    assert loaded.for_table("eu_core", "transactions").name == "transactions"
    assert loaded.for_table("eu_core", "customers") is None


def test_currencies_and_regions_come_from_silos_yaml_so_a_fourth_silo_passes(tmp_path):
    """The shipped suites name no currency or region: they take them from silos.yaml when loaded."""
    shipped = {e["kwargs"].get("column"): e["kwargs"].get("value_set")
               for name in ("accounts", "transactions", "customers")
               for e in json.loads((REPO / "expectations" / f"{name}.json").read_text())["expectations"]}
    assert shipped["currency"] == {"$PARAMETER": "currencies"} and shipped["home_region"] == {"$PARAMETER": "regions"}

    four = load_suites(write_regional_catalog(REPO / "silos.yaml", 4, tmp_path / "silos.yaml"))
    for silo in ("sg_lake", "uk_lake"):
        accounts, customers = four.for_table(silo, "accounts"), four.for_table(silo, "customers")
        assert value_set(accounts, "currency") == ["EUR", "GBP", "SGD", "USD"]
        assert value_set(customers, "home_region") == ["EU", "SG", "UK", "US"]
    three = load_suites(REPO / "silos.yaml")
    assert value_set(three.for_table("us_lake", "transactions"), "currency") == ["EUR", "SGD", "USD"]


def test_a_suite_parameter_without_regions_in_silos_yaml_is_an_error(tmp_path):
    (tmp_path / "silos.yaml").write_text(yaml.safe_dump({"governed_zone": {"region": "EU"}, "silos": {"lake": {
        "kind": "parquet", "region": "EU", "connection": {"local": {"path": "lake"}},
        "tables": {"accounts": {"currency": "public"}}}}}))
    path = write(tmp_path / "expectations" / "accounts.json", {"name": "a", "expectations": [
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "currency", "value_set": {"$PARAMETER": "currencies"}}}]})
    with pytest.raises(ConfigError) as raised:
        load_suites(tmp_path / "silos.yaml")
    assert str(raised.value) == (f"{path}: expectations[0].kwargs.value_set: suite parameter 'currencies' comes from "
                                 f"{tmp_path / 'silos.yaml'}, which declares no regions")


def value_set(suite, column):
    return next(e.kwargs["value_set"] for e in suite.expectations if e.kwargs.get("column") == column and "value_set" in e.kwargs)


GOOD = {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "amount"}}


@pytest.mark.parametrize(
    "file, body, key, message",
    [
        ("transactions.json", {"name": "t", "expectations": [GOOD, {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "amount_eur"}}]},
         "expectations[1].kwargs.column", "unknown column 'amount_eur'"),
        ("transactionz.json", {"name": "t", "expectations": [GOOD]}, "<file>", "a suite for unknown table 'transactionz'"),
        ("sg_lake/loans.json", {"name": "l", "expectations": [{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "rate"}}]},
         "<file>", "unknown table 'loans': no such table in silo sg_lake"),
        ("mars_lake/transactions.json", {"name": "t", "expectations": [GOOD]}, "<folder>", "no silo named 'mars_lake'"),
        ("transactions.json", {"name": "t", "expectations": [{"type": "expect_column_values_to_be_positive", "kwargs": {"column": "amount"}}]},
         "expectations[0].type", "no expectation 'expect_column_values_to_be_positive'"),
        ("transactions.json", {"name": "t", "expectations": [{"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "currency"}}]},
         "expectations[0].kwargs.value_set", "field required"),
        ("transactions.json", {"name": "t", "expectations": [{"type": "expect_compound_columns_to_be_unique", "kwargs": {"column_list": ["txn_id", "tx"]}}]},
         "expectations[0].kwargs.column_list", "unknown column 'tx'"),
        ("transactions.json", {"name": "t", "expectations": [{**GOOD, "kwarg": {}}]}, "expectations[0].kwarg", "unknown key"),
        ("transactions.json", {"expectations": [GOOD]}, "name", "non-empty name"),
        ("transactions.json", {"name": "t", "expectations": []}, "expectations", "non-empty list"),
        ("transactions.json", '{"name": "t",\n "expectations": [}', "line 2", "not valid JSON"),
        ("transactions.json", {"name": "t", "expectations": [
            {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "currency", "value_set": {"$PARAMETER": "currency"}}}]},
         "expectations[0].kwargs.value_set", "unknown suite parameter 'currency' (known: currencies, regions)"),
    ],
    ids=["unknown-column", "unknown-table", "table-not-in-that-silo", "unknown-silo", "unknown-type", "bad-kwargs",
         "unknown-column-in-list", "unknown-key", "no-name", "no-expectations", "bad-json", "unknown-parameter"],
)
def test_a_malformed_suite_is_an_error_naming_file_and_key(tmp_path, file, body, key, message):
    root = copy_deployment(tmp_path)
    path = write(root / "expectations" / file, body)
    with pytest.raises(ConfigError) as raised:
        load_suites(root / "silos.yaml")
    error = raised.value
    assert error.path == str(path if key != "<folder>" else path.parent)
    assert error.key == key
    assert message in str(error)
    assert str(error).startswith(f"{error.path}: {key}: ")


# -- running in place -----------------------------------------------------------------------


def test_every_suite_passes_on_the_seeded_local_deployment(local_deployment, suites, policy, offline):
    for name, spec in local_deployment.catalog.silos.items():
        with open_silo(spec, "local", local_deployment.home) as connector:
            for table in spec.tables:
                report = validate_in_place(connector, spec, table, suites.for_table(name, table), policy, "EU", "analytics")
                assert report["success"], (name, table, [e for e in report["expectations"] if not e["success"]])
                assert report["evaluated"] == len(suites.for_table(name, table).expectations)
                engine = "SQL on PostgreSQL" if spec.kind == "postgres" else "SQL on DuckDB"
                assert engine in report["engine"]
                json.dumps(report)


def test_every_suite_passes_on_the_prod_silos(prod_deployment, suites, policy, offline):
    """PostgreSQL over TCP validates itself; the S3 lake (moto) is validated by SQL on its own DuckDB."""
    for name, spec in prod_deployment.catalog.silos.items():
        with open_silo(spec, "prod", prod_deployment.home) as connector:
            for table in spec.tables:
                report = validate_in_place(connector, spec, table, suites.for_table(name, table), policy, "EU", "analytics")
                assert report["success"], (name, table, [e for e in report["expectations"] if not e["success"]])


def test_negative_amounts_fail_in_the_lake_and_amounts_stay_there(defective_bank, catalog, suites, policy, offline):
    spec = catalog.silo("sg_lake")
    with open_silo(spec, "local", defective_bank) as lake:
        report = validate_in_place(lake, spec, "transactions", suites.for_table("sg_lake", "transactions"), policy, "EU", "analytics")
    assert not report["success"]
    assert report["failed"] == ["expect_column_values_to_be_between(amount)"]
    amount = by_label(report)["expect_column_values_to_be_between(amount)"]
    assert amount["success"] is False and amount["column"] == "amount"
    assert amount["kwargs"] == {"column": "amount", "min_value": 0, "strict_min": True, "max_value": 10000000}
    assert amount["unexpected_count"] == NEGATIVE_AMOUNTS
    assert amount["unexpected_percent"] == pytest.approx(100 * NEGATIVE_AMOUNTS / amount["element_count"])
    # amount is financial: to the EU for analytics it leaves only aggregated, so no value is sent
    assert amount["unexpected_values"] is None
    assert "only as aggregate" in amount["values_withheld"] and "classifications.financial" in amount["values_withheld"]


def test_the_few_unexpected_values_leave_only_where_the_policy_allows(defective_bank, catalog, suites, policy):
    """The same defect, reported to the silo's own region, where financial values may go as they are."""
    spec = catalog.silo("sg_lake")
    with open_silo(spec, "local", defective_bank) as lake:
        report = validate_in_place(lake, spec, "transactions", suites.for_table("sg_lake", "transactions"), policy, "SG", "analytics")
    amount = by_label(report)["expect_column_values_to_be_between(amount)"]
    assert amount["values_withheld"] is None
    assert 1 <= len(amount["unexpected_values"]) <= 5 and all(v < 0 for v in amount["unexpected_values"])
    assert by_label(report)["expect_column_values_to_be_unique(txn_id)"]["unexpected_values"] == []


def test_two_expectations_with_one_label_are_told_apart_by_their_place(defective_bank, catalog, policy):
    """Same type, same column: the result names the failed one by its place in the suite file."""
    spec = catalog.silo("sg_lake")
    between = "expect_column_values_to_be_between"
    suite = Suite("twice", "transactions", "expectations/sg_lake/transactions.json", (
        Expectation(between, {"column": "amount", "max_value": 10_000_000}),
        Expectation(between, {"column": "amount", "min_value": 0, "strict_min": True}),
        Expectation("expect_column_values_to_not_be_null", {"column": "amount"}),
    ))
    with open_silo(spec, "local", defective_bank) as lake:
        report = validate_in_place(lake, spec, "transactions", suite, policy, "EU", "analytics")
    assert [e["label"] for e in report["expectations"]] == [
        f"{between}(amount) [expectations[0]]", f"{between}(amount) [expectations[1]]", "expect_column_values_to_not_be_null(amount)",
    ]
    assert report["failed"] == [f"{between}(amount) [expectations[1]]"]
    assert by_label(report)[f"{between}(amount) [expectations[1]]"]["unexpected_count"] == NEGATIVE_AMOUNTS


def test_null_national_ids_fail_in_postgres_with_the_values_withheld(defective_bank, catalog, suites, policy, offline):
    spec = catalog.silo("eu_core")
    with open_silo(spec, "local", defective_bank) as core:
        report = validate_in_place(core, spec, "customers", suites.for_table("eu_core", "customers"), policy, "EU", "analytics")
    assert "SQL on PostgreSQL" in report["engine"]
    assert report["failed"] == ["expect_column_values_to_not_be_null(national_id)"]
    national_id = by_label(report)["expect_column_values_to_not_be_null(national_id)"]
    assert national_id["unexpected_count"] == NULL_NATIONAL_IDS
    assert national_id["unexpected_values"] is None
    assert "pii.direct" in national_id["values_withheld"] and "deny" in national_id["values_withheld"]
    email = by_label(report)["expect_column_values_to_match_regex(email)"]
    assert email["success"] and email["unexpected_values"] is None, "pii columns never send values, even when they pass"


# -- the agent action -----------------------------------------------------------------------


@pytest.fixture
def agent_client(defective_bank, catalog, policy, suites):
    def make(silo, identity="coordinator"):
        agent = build_agent(catalog, policy, silo, "local", defective_bank, plugins=(quality_plugin(suites),))
        return InProcessAgentClient(agent, client_token(policy, identity, "local", defective_bank))

    return make


def test_the_agent_validates_in_place_and_ledgers_what_left(agent_client):
    client = agent_client("eu_core")
    entries_before = len(client.agent.ledger.entries())
    egress_before = client.egress()
    report = client.action(VALIDATE_ACTION, table="customers", purpose="analytics", destination="EU")
    assert not report["success"] and report["failed"] == ["expect_column_values_to_not_be_null(national_id)"]
    assert client.egress() == egress_before, "no row leaves through the agent: only the results"
    entries = client.agent.ledger.entries()
    assert len(entries) == entries_before + 1
    entry = entries[-1]
    assert entry["operation"] == VALIDATE_ACTION and entry["silo"] == "eu_core" and entry["purpose"] == "analytics"
    columns = {c["output"]: c["values"] for c in json.loads(entry["columns"])}
    assert columns["national_id"] == "withheld" and columns["home_region"] == "allowed"
    assert client.agent.ledger.verify().ok


def test_the_agent_refuses_what_the_caller_may_not_ask(agent_client):
    analyst = agent_client("sg_lake", identity="analyst")
    with pytest.raises(Forbidden, match="lacks the role 'coordinate'"):
        analyst.action(VALIDATE_ACTION, table="transactions", purpose="analytics", destination="EU")
    coordinator = agent_client("sg_lake")
    with pytest.raises(Forbidden, match="receives its results in EU, not US"):
        coordinator.action(VALIDATE_ACTION, table="customers", purpose="analytics", destination="US")
    with pytest.raises(FedlakeError, match="no expectation suite for table 'loans'"):
        coordinator.action(VALIDATE_ACTION, table="loans", purpose="analytics")
    with pytest.raises(FedlakeError, match="needs table"):
        coordinator.action(VALIDATE_ACTION, purpose="analytics")
