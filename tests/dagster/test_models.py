"""Models in Dagster: each training is a registered version with its card, promoted by a blocking
check only where it beats the champion or the floor; drift of the credit features asks for
retraining."""

from __future__ import annotations

import dagster as dg
import pyarrow.compute as pc
import pytest

from fedlake.learning.data import fingerprint_versions
from fedlake.learning.registry import ModelRegistry
from fedlake.silos import open_governed_zone
from fedlake.silos.delta import DeltaLake
from fedlake.synth.seed import seed_demo_bank
from platform_defs.definitions import EVERYTHING_JOB, build_definitions
from tests.conftest import REPO

CREDIT = dg.AssetKey(["models", "credit_scoring_model"])
AML = dg.AssetKey(["models", "aml_model"])


@pytest.fixture(scope="module")
def bank(catalog, tmp_path_factory):
    home = tmp_path_factory.mktemp("model_bank")
    seed_demo_bank(catalog, "local", home, 0.3, 11)
    defs = build_definitions(REPO / "silos.yaml", "local", home)
    governed = [dg.AssetKey(["governed", "customer_credit_features"])]
    assert defs.resolve_job_def(EVERYTHING_JOB).execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), asset_selection=governed
    ).success
    return home, defs


def train(defs, key, run_config=None):
    return defs.resolve_job_def(EVERYTHING_JOB).execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), asset_selection=[key], run_config=run_config or {}, raise_on_error=False
    )


def checks_of(result):
    return {e.event_specific_data.check_name: e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def test_credit_model_is_registered_with_card_and_baselines_and_promoted(bank):
    home, defs = bank
    result = train(defs, CREDIT)
    assert result.success
    [m] = result.asset_materializations_for_node("models__credit_scoring_model")
    meta = {k: v.value for k, v in m.metadata.items()}
    assert meta["auc"] > meta["eu_only_auc"], "cross-silo features must beat what the EU silo alone sees"
    assert meta["oracle_auc"] >= meta["auc"] - 0.05
    assert "![" in meta["model_card"] and "data:image/png;base64," in meta["model_card"]
    registry = ModelRegistry(home / "governed" / "models")
    version = registry.latest("credit_scoring_model")
    assert version.card_path.exists() and len(list(version.path.glob("*.png"))) >= 2, "the card has its ROC and calibration plots"
    assert version.record["training"]["drift_profile"]["edges"]["dti"]
    assert checks_of(result)["promote_if_better"].passed and registry.champion("credit_scoring_model").version == version.version
    # the version names the Delta version of the governed features it was trained on
    features = DeltaLake(str(home / "governed" / "zone")).snapshot("customer_credit_features")
    assert fingerprint_versions(version.record["fingerprints"]["governed.customer_credit_features"]) == {
        "customer_credit_features": features.version
    }


def test_a_worse_challenger_is_not_promoted(bank):
    home, defs = bank
    assert train(defs, CREDIT).success
    registry = ModelRegistry(home / "governed" / "models")
    champion = registry.champion("credit_scoring_model")
    weak = {"ops": {"models__credit_scoring_model": {"config": {"epochs": 1, "lr": 0.00001, "batch_size": 4096, "hidden": 2, "seed": 5}}}}
    result = train(defs, CREDIT, weak)
    check = checks_of(result)["promote_if_better"]
    assert not check.passed and "not promoted" in check.description
    assert registry.champion("credit_scoring_model").version == champion.version


def test_aml_model_trains_federatedly_and_only_weights_leave(bank):
    home, defs = bank
    from fedlake.audit import open_ledger

    ledger = open_ledger(str(home / "governed" / "audit.duckdb"))
    before = len(ledger.entries())
    config = {"ops": {"models__aml_model": {"config": {"rounds": 2, "local_epochs": 1}}}}
    result = train(defs, AML, config)
    assert result.success
    [m] = result.asset_materializations_for_node("models__aml_model")
    assert m.metadata["rounds"].value == 2
    assert m.metadata["secure_aggregation_rounds"].value == 2, "the coordinator saw only the sum of each round's updates"
    entries = ledger.entries()[before:]
    training = [e for e in entries if e["operation"] in ("train_round", "evaluate_round")]
    assert {e["silo"] for e in training} == {"eu_core", "us_lake", "sg_lake"}
    assert all(e["rows"] == 0 for e in training), "no row leaves a silo during training"
    assert not [e for e in entries if e["operation"] == "query"], "training sends no query fragments"
    # the version names the Delta versions each lake trained on; retraining on another version's data needs it to exist
    fingerprints = ModelRegistry(home / "governed" / "models").latest("aml_model").record["fingerprints"]
    assert {silo for silo, fp in fingerprints.items() if fingerprint_versions(fp)} == {"us_lake", "sg_lake"}
    failed = train(defs, AML, {"ops": {"models__aml_model": {"config": {"data_of_version": 99}}}})
    [failure] = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failed.success is False and "data_of_version: model 'aml_model' has no version 99" in failure.step_failure_data.error.message


def test_drift_in_the_credit_features_requests_retraining(bank, catalog):
    home, defs = bank
    assert train(defs, CREDIT).success
    sensor = defs.resolve_sensor_def("credit_scoring_model_drift")
    instance = dg.DagsterInstance.ephemeral()
    with dg.build_sensor_context(instance=instance, resources=defs.resources, definitions=defs) as context:
        quiet = sensor.evaluate_tick(context)
    assert quiet.run_requests == [] and "no drift" in quiet.skip_message

    with open_governed_zone(catalog, "local", home) as zone:
        table = zone.execute("SELECT * FROM customer_credit_features").read_all()
        shifted = table.set_column(table.schema.get_field_index("dti"), "dti", pc.multiply(table.column("dti"), 3.0))
        zone.load("customer_credit_features", shifted.schema, shifted.to_batches())
    with dg.build_sensor_context(instance=instance, resources=defs.resources, definitions=defs) as context:
        drifted = sensor.evaluate_tick(context)
    [request] = drifted.run_requests
    assert "dti" in request.tags["reason"]


def test_each_region_has_its_own_memo_screening_model_trained_in_its_silo_alone(bank):
    home, defs = bank
    from fedlake.audit import open_ledger

    regional = {k for k in defs.resolve_asset_graph().get_all_asset_keys() if k.path[-1].startswith("memo_screen_")}
    assert {k.path[-1] for k in regional} == {"memo_screen_eu", "memo_screen_us", "memo_screen_sg"}
    key = dg.AssetKey(["models", "memo_screen_sg"])
    assert {d.path[0] for d in defs.resolve_assets_def(key).dependency_keys} == {"sg_lake"}
    ledger = open_ledger(str(home / "governed" / "audit.duckdb"))
    before = len(ledger.entries())
    result = train(defs, key, {"ops": {"models__memo_screen_sg": {"config": {"rounds": 1}}}})
    assert result.success
    [m] = result.asset_materializations_for_node("models__memo_screen_sg")
    assert m.metadata["silo"].value == "sg_lake" and m.metadata["version"].value == 1
    assert ModelRegistry(home / "governed" / "models").latest("memo_screen_sg").spec.name == "memo_screen_sg"
    trained = {(e["silo"], e["operation"]) for e in ledger.entries()[before:] if e["operation"] in ("train_round", "evaluate_round")}
    assert trained == {("sg_lake", "train_round"), ("sg_lake", "evaluate_round")}
