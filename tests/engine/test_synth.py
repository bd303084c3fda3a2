"""The demo bank generator: deterministic, shaped like silos.yaml, and its planted truth holds."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from fedlake.synth import bank, default_model, memos, vocabulary
from fedlake.synth.laundering import DEFAULT_KNOBS

SILOS_YAML = Path(__file__).resolve().parents[2] / "silos.yaml"
SILO_OF_REGION = {"EU": "eu_core", "US": "us_lake", "SG": "sg_lake"}


def collect(blocks) -> tuple[dict[str, dict[str, pa.Table]], dict[str, pa.Table]]:
    """Concatenate streamed blocks, as a seeding run would load them into the silos."""
    blocks = list(blocks)
    silos = {
        region: {t: pa.concat_tables([b.silo_tables[region][t] for b in blocks]) for t in tables}
        for region, tables in bank.REGION_TABLES.items()
    }
    truth = {t: pa.concat_tables([b.truth[t] for b in blocks]) for t in bank.TRUTH_TABLES}
    return silos, truth


@pytest.fixture(scope="module")
def demo():
    """The scale-1 demo bank (one block)."""
    return collect(bank.generate(1.0, seed=2025))


@pytest.fixture(scope="module")
def blocked():
    """A smaller bank streamed in several blocks, to check that blocks stitch together."""
    return collect(bank.generate(0.3, seed=5, block_customers=1_500))


def test_same_seed_same_bank_other_seed_other_bank():
    first = collect(bank.generate(0.05, seed=11, block_customers=300))
    second = collect(bank.generate(0.05, seed=11, block_customers=300))
    other = collect(bank.generate(0.05, seed=12, block_customers=300))
    for region, tables in bank.REGION_TABLES.items():
        for table in tables:
            assert first[0][region][table].equals(second[0][region][table]), (region, table)
    for table in bank.TRUTH_TABLES:
        assert first[1][table].equals(second[1][table]), table
    assert not first[0]["EU"]["transactions"].equals(other[0]["EU"]["transactions"])
    assert not first[0]["US"]["customers"].equals(other[0]["US"]["customers"])


def test_tables_have_exactly_the_columns_of_silos_yaml(blocked):
    declared = yaml.safe_load(SILOS_YAML.read_text())["silos"]
    silos, truth = blocked
    schemas = bank.schemas()
    for region, silo in SILO_OF_REGION.items():
        tables = declared[silo]["tables"]
        assert set(tables) == set(bank.REGION_TABLES[region])
        for table in bank.REGION_TABLES[region]:
            assert schemas[table].names == list(tables[table]), (silo, table)
            assert silos[region][table].schema == schemas[table], (region, table)
    for table in bank.TRUTH_TABLES:
        assert truth[table].schema == schemas[table]


def test_scale_one_has_the_documented_size(demo):
    silos, truth = demo
    n_txn = sum(silos[r]["transactions"].num_rows for r in bank.REGIONS)
    assert 170_000 <= n_txn <= 230_000
    assert 9_000 <= silos["EU"]["loans"].num_rows <= 11_000
    assert truth["loan_truth"].num_rows == silos["EU"]["loans"].num_rows
    people = pa.concat_arrays([silos[r]["customers"].column("national_id").combine_chunks() for r in bank.REGIONS])
    assert pc.count_distinct(people).as_py() == bank.customer_count(1.0)


def test_values_look_like_a_bank(demo):
    silos, _ = demo
    for region in bank.REGIONS:
        txns = silos[region]["transactions"]
        assert pc.min(txns["amount"]).as_py() > 0
        assert pc.all(pc.equal(txns["amount"], pc.round(txns["amount"], 2))).as_py()
        assert pc.count_distinct(txns["txn_id"]).as_py() == txns.num_rows
        assert set(pc.unique(txns["currency"]).to_pylist()) == {vocabulary.REGION_CURRENCY[region]}
        assert set(pc.unique(txns["direction"]).to_pylist()) == {"debit", "credit"}
        assert set(pc.unique(txns["channel"]).to_pylist()) <= set(vocabulary.CHANNELS)
        low, high = pc.min_max(txns["ts"]).values()
        assert low.as_py().year == 2025 and high.as_py().year == 2025
        cash = pc.is_in(txns["channel"], pa.array(["cash", "atm"]))
        assert pc.all(pc.equal(pc.is_null(txns["counterparty_account"]), cash)).as_py()
        assert txns["memo"].null_count == 0
        accounts = silos[region]["accounts"]
        assert pc.all(pc.is_in(txns["account_id"], accounts["account_id"])).as_py()
        assert pc.all(pc.is_in(accounts["customer_id"], silos[region]["customers"]["customer_id"])).as_py()
    loans = silos["EU"]["loans"]
    assert pc.all(pc.is_in(loans["term_months"], pa.array([12, 24, 36, 48, 60]))).as_py()
    assert pc.min(loans["issued_at"]).as_py().year == 2026
    us = silos["US"]["customers"].filter(pc.equal(silos["US"]["customers"]["home_region"], "US"))
    assert pc.all(pc.match_substring_regex(us["national_id"], r"^\d{3}-\d{2}-\d{4}$")).as_py()
    sg = silos["SG"]["customers"].filter(pc.equal(silos["SG"]["customers"]["home_region"], "SG"))
    assert pc.all(pc.match_substring_regex(sg["national_id"], r"^S\d{7}[A-Z]$")).as_py()


def test_a_person_has_one_national_id_but_unlinkable_local_ids(demo):
    silos, _ = demo
    eu, us = silos["EU"]["customers"], silos["US"]["customers"]
    both = eu.join(us, "national_id", join_type="inner", left_suffix="_eu", right_suffix="_us")
    assert both.num_rows > 1_000
    eu_number = pc.utf8_slice_codeunits(both["customer_id_eu"], 4)
    us_number = pc.utf8_slice_codeunits(both["customer_id_us"], 4)
    assert not pc.any(pc.equal(eu_number, us_number)).as_py()
    # The same person's income and employment are the same in every silo.
    assert both["income_eu"].equals(both["income_us"])
    assert both["employment_years_eu"].equals(both["employment_years_us"])
    ranks_eu = np.argsort(np.argsort(eu_number.to_numpy(zero_copy_only=False)))
    ranks_us = np.argsort(np.argsort(us_number.to_numpy(zero_copy_only=False)))
    assert abs(np.corrcoef(ranks_eu, ranks_us)[0, 1]) < 0.1


def test_default_rate_matches_the_planted_probabilities(demo):
    silos, truth = demo
    defaulted = silos["EU"]["loans"].column("defaulted").to_numpy(zero_copy_only=False)
    loan_truth = truth["loan_truth"]
    assert loan_truth.column("loan_id").equals(silos["EU"]["loans"].column("loan_id"))
    true_pd = loan_truth.column("true_pd").to_numpy()
    assert 0.10 <= defaulted.mean() <= 0.15
    tolerance = 4 * np.sqrt(np.sum(true_pd * (1 - true_pd))) / len(true_pd)
    assert abs(defaulted.mean() - true_pd.mean()) < tolerance


def test_true_pd_is_reproducible_from_the_silos_alone(blocked):
    silos, truth = blocked
    # Read back in another row order, as a silo may return them.
    shuffled = {
        region: {t: silos[region][t].take(np.random.default_rng(0).permutation(silos[region][t].num_rows))
                 for t in ("customers", "accounts", "transactions")}
        for region in bank.REGIONS
    }
    features = default_model.compute_default_features(shuffled)
    recomputed = default_model.true_default_probability(features, silos["EU"]["loans"], shuffled["EU"]["customers"])
    expected = truth["loan_truth"]
    assert recomputed.column("loan_id").equals(expected.column("loan_id"))
    assert recomputed.column("national_id").equals(expected.column("national_id"))
    np.testing.assert_allclose(recomputed.column("true_pd").to_numpy(), expected.column("true_pd").to_numpy(),
                               rtol=0, atol=1e-9)
    for name in default_model.FEATURES:
        np.testing.assert_allclose(recomputed.column(name).to_numpy(), expected.column(name).to_numpy(), atol=1e-9)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U)."""
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="stable")] = np.arange(1, len(scores) + 1)
    positives = labels.sum()
    negatives = len(labels) - positives
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 400, learning_rate: float = 0.5):
    """Plain gradient-descent logistic regression on standardized features."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-12

    def design(rows: np.ndarray) -> np.ndarray:
        return np.column_stack([np.ones(len(rows)), (rows - mean) / std])

    d = design(x)
    w = np.zeros(d.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-d @ w))
        w -= learning_rate * d.T @ (p - y) / len(y)
    return lambda rows: design(rows) @ w


def test_a_model_that_sees_only_the_eu_silo_does_measurably_worse(demo):
    silos, truth = demo
    loans = silos["EU"]["loans"]
    y = loans.column("defaulted").to_numpy(zero_copy_only=False)

    def loan_features(visible: dict) -> np.ndarray:
        person = default_model.compute_default_features(visible)
        rows = default_model.true_default_probability(person, loans, silos["EU"]["customers"])
        return np.column_stack([rows.column(name).to_numpy().astype(np.float64) for name in default_model.FEATURES])

    federated = loan_features(silos)
    eu_only = loan_features({"EU": silos["EU"]})
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[: len(y) // 2], order[len(y) // 2:]
    auc_federated = auc(fit_logistic(federated[train], y[train])(federated[test]), y[test])
    auc_eu_only = auc(fit_logistic(eu_only[train], y[train])(eu_only[test]), y[test])
    auc_oracle = auc(truth["loan_truth"].column("true_pd").to_numpy()[test], y[test])
    assert auc_federated > auc_oracle - 0.02
    assert auc_federated - auc_eu_only > 0.06, (auc_federated, auc_eu_only)


def pattern_view(silos, truth, kind: str):
    """Each planted pattern of a kind with its transactions (EUR amount added), across silos."""
    patterns = truth["aml_patterns"].filter(pc.equal(truth["aml_patterns"]["kind"], kind))
    links = truth["aml_pattern_transactions"]
    parts = []
    for region in bank.REGIONS:
        mine = links.filter(pc.equal(links["region"], region))
        txns = silos[region]["transactions"].join(mine, "txn_id", join_type="inner")
        fx = default_model.FX_TO_EUR[vocabulary.REGION_CURRENCY[region]]
        parts.append(txns.append_column("amount_eur", pc.multiply(txns["amount"], fx)))
    rows = pa.concat_tables(parts).sort_by("ts").to_pylist()
    for pattern in patterns.to_pylist():
        yield pattern, [r for r in rows if r["pattern_id"] == pattern["pattern_id"]]


def test_patterns_are_planted_in_the_documented_numbers(demo):
    _, truth = demo
    counts = pc.value_counts(truth["aml_patterns"]["kind"]).to_pylist()
    assert {c["values"]: c["counts"] for c in counts} == bank.expected_pattern_counts(1.0)
    assert bank.expected_pattern_counts(0.001) == {"structuring": 3, "pass_through": 3, "cross_border_cycle": 3}


def test_structuring_stays_under_the_reporting_threshold(demo):
    silos, truth = demo
    for pattern, txns in pattern_view(silos, truth, "structuring"):
        assert 6 <= len(txns) <= 12
        assert all(9_000 <= t["amount"] < 10_000 for t in txns)
        assert all(t["direction"] == "credit" and t["channel"] == "cash" for t in txns)
        assert (txns[-1]["ts"] - txns[0]["ts"]).days <= 10


def test_pass_through_forwards_most_of_the_money_within_two_days(demo):
    silos, truth = demo
    for pattern, txns in pattern_view(silos, truth, "pass_through"):
        inflow, outflows = txns[0], txns[1:]
        assert inflow["direction"] == "credit"
        assert inflow["counterparty_country"] not in default_model.REGION_COUNTRIES[inflow["region"]]
        assert all(t["direction"] == "debit" for t in outflows) and len(outflows) >= 2
        assert 0.92 <= sum(t["amount"] for t in outflows) / inflow["amount"] <= 0.99
        hours = [(t["ts"] - inflow["ts"]).total_seconds() / 3600 for t in outflows]
        assert all(1 <= h <= 48 for h in hours)


def test_cycles_go_round_several_accounts_in_several_regions(demo):
    silos, truth = demo
    accounts = truth["aml_pattern_accounts"]
    for pattern, txns in pattern_view(silos, truth, "cross_border_cycle"):
        ring = accounts.filter(pc.equal(accounts["pattern_id"], pattern["pattern_id"]))
        assert pattern["n_accounts"] == ring.num_rows >= 3
        assert len(set(ring["region"].to_pylist())) >= 2
        assert len(pattern["regions"].split(",")) >= 2
        debits = [t for t in txns if t["direction"] == "debit"]
        credits = {(t["account_id"], t["counterparty_account"]): t for t in txns if t["direction"] == "credit"}
        assert len(debits) == len(credits) == ring.num_rows
        for hop in debits:
            matching = credits[(hop["counterparty_account"], hop["account_id"])]
            assert abs(matching["amount_eur"] - hop["amount_eur"]) < 0.02
        assert debits[-1]["counterparty_account"] == debits[0]["account_id"]
        for before, after in zip(debits, debits[1:]):
            assert 0.969 <= after["amount_eur"] / before["amount_eur"] <= 0.991
            assert 1 <= (after["ts"] - before["ts"]).total_seconds() / 86_400 <= 3


def test_confirmed_cases_are_an_incomplete_subset_of_the_truth(demo):
    silos, truth = demo
    accounts = truth["aml_pattern_accounts"]
    n_cases = 0
    for region in bank.REGIONS:
        cases = silos[region]["aml_cases"]
        planted = accounts.filter(pc.equal(accounts["region"], region))
        assert pc.all(pc.is_in(cases["account_id"], planted["account_id"])).as_py()
        assert set(pc.unique(cases["status"]).to_pylist()) == {"confirmed"}
        n_cases += cases.num_rows
    assert 0.3 * accounts.num_rows <= n_cases <= 0.7 * accounts.num_rows


def test_memos_carry_only_a_weak_laundering_signal(demo):
    silos, truth = demo
    links = truth["aml_pattern_transactions"]
    stories = [re.escape(p) for phrases in memos.COVER_STORIES.values() for p in phrases]
    suspicious = "^(" + "|".join(stories) + ")( |$)"
    share = {}
    for laundering in (True, False):
        hits = total = 0
        for region in bank.REGIONS:
            txns = silos[region]["transactions"]
            in_pattern = pc.is_in(txns["txn_id"], links.filter(pc.equal(links["region"], region))["txn_id"])
            chosen = txns.filter(in_pattern if laundering else pc.invert(in_pattern))
            hits += pc.sum(pc.match_substring_regex(chosen["memo"], suspicious)).as_py() or 0
            total += chosen.num_rows
        share[laundering] = hits / total
    told = DEFAULT_KNOBS.cover_story_p * DEFAULT_KNOBS.cover_memo_p
    assert told / 2 <= share[True] <= told * 1.5
    assert 0.0005 <= share[False] <= 0.02
