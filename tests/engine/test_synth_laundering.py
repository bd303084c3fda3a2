"""The laundering knobs of the demo bank do what fedlake.synth.laundering says they do."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow.compute as pc
import pytest

from fedlake.silos import open_silo
from fedlake.synth import bank, memos
from fedlake.synth.laundering import DEFAULT_KNOBS, LaunderingKnobs
from tests.engine.test_synth import collect, pattern_view

SCALE, SEED = 1.0, 2025


@pytest.fixture(scope="module")
def demo():
    return collect(bank.generate(SCALE, seed=SEED))


def planted_regions(truth, kind: str) -> Counter:
    """Region of each planted account of a kind."""
    kinds = dict(zip(truth["aml_patterns"]["pattern_id"].to_pylist(), truth["aml_patterns"]["kind"].to_pylist()))
    members = truth["aml_pattern_accounts"]
    return Counter(r for p, r in zip(members["pattern_id"].to_pylist(), members["region"].to_pylist()) if kinds[p] == kind)


def test_prevalence_differs_by_region_as_the_knobs_say(demo):
    _, truth = demo
    for kind in ("structuring", "pass_through"):
        counts = planted_regions(truth, kind)
        expected = dict(zip(bank.REGIONS, DEFAULT_KNOBS.region_weights(kind, bank.REGIONS)))
        total = sum(counts.values())
        for region in bank.REGIONS:
            share = counts[region] / total
            assert abs(share - expected[region]) < 4 * np.sqrt(expected[region] * (1 - expected[region]) / total) + 0.02, (kind, region, share)
    # non-IID: the region that holds most structuring is not the one that holds most pass-through
    assert planted_regions(truth, "structuring").most_common(1)[0][0] == "US"
    assert planted_regions(truth, "pass_through").most_common(1)[0][0] == "SG"
    # and the knob moves them: all structuring in the EU when the EU alone has weight
    eu_only = LaunderingKnobs(region_prevalence={"structuring": {"EU": 1.0, "US": 0.0, "SG": 0.0}})
    _, moved = collect(bank.generate(0.2, seed=3, knobs=eu_only))
    assert set(planted_regions(moved, "structuring")) == {"EU"}


def test_rings_span_regions(demo):
    silos, truth = demo
    cycles = truth["aml_patterns"].filter(pc.equal(truth["aml_patterns"]["kind"], "cross_border_cycle"))
    assert cycles.num_rows == bank.expected_pattern_counts(SCALE)["cross_border_cycle"]
    assert all(len(regions.split(",")) >= 2 for regions in cycles["regions"].to_pylist())
    # each silo sees only its own hops, and every account of a ring sends to or receives from another region
    for _, txns in pattern_view(silos, truth, "cross_border_cycle"):
        abroad = {t["account_id"] for t in txns if t["counterparty_account"][:2] != t["region"]}
        assert abroad == {t["account_id"] for t in txns}


def test_labels_are_scarce_and_confirmed_at_each_regions_rate(demo):
    silos, truth = demo
    members = truth["aml_pattern_accounts"]
    for region in bank.REGIONS:
        planted = members.filter(pc.equal(members["region"], region))
        cases = silos[region]["aml_cases"]
        assert pc.all(pc.is_in(cases["account_id"], planted["account_id"])).as_py(), "only planted accounts are confirmed"
        p, n = DEFAULT_KNOBS.confirmation(region), planted.num_rows
        assert abs(cases.num_rows / n - p) < 4 * np.sqrt(p * (1 - p) / n), region
        assert cases.num_rows < n
    everyone = collect(bank.generate(0.1, seed=4, knobs=LaunderingKnobs(confirmation_p={"EU": 1.0, "US": 1.0, "SG": 1.0})))
    assert sum(everyone[0][r]["aml_cases"].num_rows for r in bank.REGIONS) == everyone[1]["aml_pattern_accounts"].num_rows


def near_threshold_cash_accounts(silos) -> set[str]:
    found: set[str] = set()
    for region in bank.REGIONS:
        txns = silos[region]["transactions"]
        near = txns.filter(pc.and_(pc.equal(txns["channel"], "cash"),
                                   pc.and_(pc.greater_equal(txns["amount"], 9_000), pc.less(txns["amount"], 10_000))))
        found |= set(near["account_id"].to_pylist())
    return found


def test_honest_look_alikes_make_the_numbers_ambiguous(demo):
    silos, truth = demo
    launderers = set(truth["aml_pattern_accounts"]["account_id"].to_pylist())
    near = near_threshold_cash_accounts(silos)
    honest = near - launderers
    assert len(honest) > len(near & launderers), "most accounts depositing cash just under the threshold are honest"
    _, plain_truth = plain = collect(bank.generate(0.3, seed=9, knobs=LaunderingKnobs(lookalikes_per_pattern=0)))
    assert near_threshold_cash_accounts(plain[0]) <= set(plain_truth["aml_pattern_accounts"]["account_id"].to_pylist())


def test_cover_stories_are_written_in_the_accounts_language(demo):
    silos, truth = demo
    links = truth["aml_pattern_transactions"]
    phrases = {language: tuple(stories) for language, stories in memos.COVER_STORIES.items()}
    seen = Counter()
    for region in bank.REGIONS:
        txns = silos[region]["transactions"]
        laundering = txns.filter(pc.is_in(txns["txn_id"], links.filter(pc.equal(links["region"], region))["txn_id"]))
        for memo in laundering["memo"].to_pylist():
            for language, stories in phrases.items():
                if any(memo == s or memo.startswith(s + " ") for s in stories):
                    seen[(region, language)] += 1
    assert seen[("US", "en_us")] and seen[("SG", "en_sg")]
    assert {language for region, language in seen if region == "EU"} >= {"de", "fr"}, "the EU writes in its countries' languages"
    assert not [key for key in seen if key[0] in ("US", "SG") and key[1] not in ("en_us", "en_sg")]


def test_the_ground_truth_stays_outside_the_silos(local_deployment):
    truth_dir = local_deployment.report.truth_dir
    assert {p.stem for p in truth_dir.glob("*.parquet")} == set(bank.TRUTH_TABLES)
    for name, spec in local_deployment.catalog.silos.items():
        assert not set(spec.tables) & set(bank.TRUTH_TABLES), name
        with open_silo(spec, "local", local_deployment.home) as connector:
            columns = set(connector.execute("SELECT * FROM transactions LIMIT 0").read_all().column_names)
            columns |= set(connector.execute("SELECT * FROM aml_cases LIMIT 0").read_all().column_names)
        assert not columns & {"pattern_id", "kind"}, "no silo table says which rows are laundering"
