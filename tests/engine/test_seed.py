"""Seeding writes the demo bank into the silos and its truth outside them; read back from the
silos, the data reproduces the planted default model exactly. Run on both deployments."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from fedlake.errors import FedlakeError
from fedlake.silos import open_silo
from fedlake.synth import bank
from fedlake.synth.default_model import compute_default_features, true_default_probability
from fedlake.synth.seed import seed_demo_bank, silo_by_region


def read_back(deployment):
    """Every region's tables as their silo returns them (the owner's view, for checking)."""
    tables = {}
    for region, silo in silo_by_region(deployment.catalog).items():
        with open_silo(deployment.catalog.silo(silo), deployment.name, deployment.home) as connector:
            tables[region] = {t: connector.execute(f"SELECT * FROM {t}").read_all() for t in bank.REGION_TABLES[region]}
    return tables


def test_every_declared_table_is_seeded_with_its_declared_columns(deployment):
    for silo, spec in deployment.catalog.silos.items():
        with open_silo(spec, deployment.name, deployment.home) as connector:
            assert set(connector.list_tables()) >= set(spec.tables)
            for table, declared in spec.tables.items():
                assert connector.schema(table).names == list(declared.columns)
                rows = connector.row_count(table)
                assert rows == deployment.report.rows[silo][table]
                assert rows > 0 or table == "aml_cases"  # a tiny bank's investigators may have confirmed nothing yet


def test_silo_data_reproduces_the_planted_default_model(deployment):
    tables = read_back(deployment)
    truth = pq.read_table(deployment.home / "truth" / "loan_truth.parquet")
    recomputed = true_default_probability(
        compute_default_features(tables), tables["EU"]["loans"], tables["EU"]["customers"]
    )
    expected = dict(zip(truth.column("loan_id").to_pylist(), truth.column("true_pd").to_pylist()))
    got = dict(zip(recomputed.column("loan_id").to_pylist(), recomputed.column("true_pd").to_pylist()))
    assert got.keys() == expected.keys()
    assert max(abs(got[k] - expected[k]) for k in got) < 1e-9

    loans = tables["EU"]["loans"]
    defaulted = np.asarray(loans.column("defaulted").to_pylist(), dtype=float)
    mean_pd = float(np.mean(list(expected.values())))
    tolerance = 4 * math.sqrt(mean_pd * (1 - mean_pd) / len(defaulted))
    assert abs(defaulted.mean() - mean_pd) < tolerance


def test_planted_patterns_and_cases_are_consistent_with_the_silos(deployment):
    tables = read_back(deployment)
    patterns = pq.read_table(deployment.home / "truth" / "aml_patterns.parquet")
    members = pq.read_table(deployment.home / "truth" / "aml_pattern_accounts.parquet")
    kinds = pc.value_counts(patterns.column("kind")).to_pylist()
    assert {k["values"] for k in kinds} == {"structuring", "pass_through", "cross_border_cycle"}
    for region, region_tables in tables.items():
        accounts = set(region_tables["accounts"].column("account_id").to_pylist())
        planted = {
            a for a, r in zip(members.column("account_id").to_pylist(), members.column("region").to_pylist()) if r == region
        }
        assert planted <= accounts
        cased = set(region_tables["aml_cases"].column("account_id").to_pylist())
        assert cased <= planted, "investigators only confirm planted patterns"
        assert pc.min(region_tables["transactions"].column("amount")).as_py() > 0


def test_truth_lives_outside_every_silo(local_deployment):
    for spec in local_deployment.catalog.silos.values():
        with open_silo(spec, "local", local_deployment.home) as connector:
            assert not set(connector.list_tables()) & set(bank.TRUTH_TABLES)
    assert sorted(p.stem for p in (local_deployment.home / "truth").glob("*.parquet")) == sorted(bank.TRUTH_TABLES)


def test_a_catalog_with_too_few_silos_for_the_bank_cannot_be_seeded(catalog, tmp_path):
    from dataclasses import replace

    without_sg = replace(catalog, silos={k: v for k, v in catalog.silos.items() if v.region != "SG"})
    with pytest.raises(FedlakeError, match="needs 3 regional silos or more: the lender and one for each of its US and SG"):
        seed_demo_bank(without_sg, "local", tmp_path, 0.01, 1)
