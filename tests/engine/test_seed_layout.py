"""Seeding follows silos.yaml: a generated catalog of four regional silos (uk_lake in a region the
generator has never heard of) gets the same bank as the demo's three, restated in each region's
money and borders, and its truth is still the planted formula on what the silos hold."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from fedlake.catalog import parse_catalog
from fedlake.errors import ConfigError, FedlakeError
from fedlake.silos import open_silo
from fedlake.synth.default_model import compute_default_features, true_default_probability
from fedlake.synth.layout import plan_layout
from fedlake.synth.regional_catalog import regional_catalog
from tests.conftest import REPO
from tests.engine.test_cli import assert_one_line_error, fedlake


@pytest.fixture(scope="module")
def four(four_silo_deployment):
    catalog, home, report = four_silo_deployment.catalog, four_silo_deployment.home, four_silo_deployment.report
    tables = {}
    for name, spec in catalog.silos.items():
        with open_silo(spec, "local", home) as connector:
            tables[name] = {t: connector.execute(f"SELECT * FROM {t}").read_all() for t in spec.tables}
    return catalog, home, report, tables


def test_every_declared_silo_gets_its_share_of_the_same_bank(four, local_deployment):
    catalog, home, report, tables = four
    assert {s.region for s in catalog.silos.values()} == {"EU", "US", "SG", "UK"}
    assert (home / "policies.yaml").exists() and (home / "expectations").is_dir()
    for name, spec in catalog.silos.items():
        assert set(report.rows[name]) == set(spec.tables)
        assert report.rows[name]["customers"] > 0 and report.rows[name]["transactions"] > 0
    for table in ("customers", "accounts", "transactions", "aml_cases", "loans"):
        four_total = sum(rows.get(table, 0) for rows in report.rows.values())
        three_total = sum(rows.get(table, 0) for rows in local_deployment.report.rows.values())
        assert four_total == three_total, f"{table}: the same bank, placed otherwise"


def test_rows_in_a_new_region_are_in_its_money_and_borders(four):
    catalog, _, _, tables = four
    for name, spec in catalog.silos.items():
        region = catalog.money.region(spec.region)
        txns = tables[name]["transactions"]
        assert pc.unique(txns.column("currency")).to_pylist() == [region.currency]
        assert pc.unique(tables[name]["accounts"].column("currency")).to_pylist() == [region.currency]
    homes = set(pc.unique(tables["uk_lake"]["customers"].column("home_region")).to_pylist())
    assert "UK" in homes and homes <= {s.region for s in catalog.silos.values()}


def test_truth_is_the_planted_formula_on_what_the_silos_hold(four, local_deployment):
    catalog, home, _, tables = four
    domestic = {name: catalog.money.region(spec.region).domestic_countries for name, spec in catalog.silos.items()}
    features = compute_default_features(tables, catalog.money.rates_to_eur, domestic)
    recomputed = true_default_probability(features, tables["eu_core"]["loans"], tables["eu_core"]["customers"])
    truth = pq.read_table(home / "truth" / "loan_truth.parquet")
    expected = dict(zip(truth.column("loan_id").to_pylist(), truth.column("true_pd").to_pylist()))
    got = dict(zip(recomputed.column("loan_id").to_pylist(), recomputed.column("true_pd").to_pylist()))
    assert got.keys() == expected.keys() and max(abs(got[k] - expected[k]) for k in got) < 1e-9
    drawn_from = pq.read_table(local_deployment.home / "truth" / "loan_truth.parquet")
    drawn = dict(zip(drawn_from.column("loan_id").to_pylist(), drawn_from.column("true_pd").to_pylist()))
    assert max(abs(got[k] - drawn[k]) for k in got) < 1e-4, "restating keeps cross-border shares and EUR amounts"
    members = pq.read_table(home / "truth" / "aml_pattern_accounts.parquet")
    for name, spec in catalog.silos.items():
        accounts = set(tables[name]["accounts"].column("account_id").to_pylist())
        planted = {a for a, r in zip(members.column("account_id").to_pylist(), members.column("region").to_pylist()) if r == spec.region}
        assert planted <= accounts and set(tables[name]["aml_cases"].column("account_id").to_pylist()) <= planted


def _shipped():
    return json.loads(json.dumps(yaml.safe_load((REPO / "silos.yaml").read_text())))


@pytest.mark.parametrize(
    "mutate, says",
    [
        (lambda r: r["silos"].pop("sg_lake"), "needs 3 regional silos or more"),
        (lambda r: r["silos"]["us_lake"]["tables"].update(loans=r["silos"]["eu_core"]["tables"]["loans"]), "exactly one silo"),
        (lambda r: r["silos"]["sg_lake"]["tables"].pop("aml_cases"), "silos.sg_lake.tables: the demo bank writes aml_cases"),
        (lambda r: [r.pop("regions"), r.pop("exchange_rates_to_eur")], "regions: the demo bank needs"),
    ],
)
def test_a_catalog_the_bank_cannot_fill_is_one_line(mutate, says):
    raw = _shipped()
    mutate(raw)
    with pytest.raises(ConfigError) as error:
        plan_layout(parse_catalog(raw, "gen.yaml"))
    assert says in str(error.value) and str(error.value).startswith("gen.yaml: ")


def test_generated_catalogs_mix_kinds_and_stay_within_what_is_declared():
    kinds = [s["kind"] for s in regional_catalog(_shipped(), 12)["silos"].values()]
    assert sorted(kinds) == ["parquet"] * 4 + ["postgres"] * 4 + ["s3"] * 4
    with pytest.raises(FedlakeError, match="--silos must be between 3 and 16"):
        regional_catalog(_shipped(), 17)


def test_seed_silos_k_out_of_range_is_one_line_and_writes_nothing(tmp_path):
    result = fedlake(tmp_path, tmp_path, "seed", "--silos", "2", "--write-catalog", str(tmp_path / "k" / "silos.yaml"))
    assert_one_line_error(result, "--silos must be between 3 and 16, got 2")
    assert not (tmp_path / "k").exists()
