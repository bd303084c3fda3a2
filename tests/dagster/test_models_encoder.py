"""The AML model asset's text encoder is chosen in its config: the n-gram baseline by default,
all-MiniLM-L6-v2 with LoRA adapters on request (a short fine-tune on a sample here), and an
unknown choice fails the run with one line naming the choices."""

from __future__ import annotations

import dagster as dg
import pytest

from fedlake.learning.registry import ModelRegistry
from fedlake.synth.seed import seed_demo_bank
from platform_defs.definitions import EVERYTHING_JOB, build_definitions
from tests.conftest import REPO, TEST_SCALE, TEST_SEED

AML = dg.AssetKey(["models", "aml_model"])


@pytest.fixture(scope="module")
def small_bank(catalog, tmp_path_factory):
    home = tmp_path_factory.mktemp("encoder_bank")
    seed_demo_bank(catalog, "local", home, TEST_SCALE, TEST_SEED)
    return home, build_definitions(REPO / "silos.yaml", "local", home)


def train_aml(defs, config):
    return defs.resolve_job_def(EVERYTHING_JOB).execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), asset_selection=[AML], raise_on_error=False,
        run_config={"ops": {"models__aml_model": {"config": config}}},
    )


def test_the_aml_asset_fine_tunes_minilm_with_lora_when_its_config_says_so(small_bank):
    home, defs = small_bank
    result = train_aml(defs, {"encoder": "minilm-lora", "rounds": 1, "local_epochs": 1, "lr": 0.003, "batch_size": 16, "max_samples": 32})
    # A round on 32 accounts may stay under the promotion floor (a blocking check): the asset
    # itself must have trained, registered and evaluated the version.
    [materialization] = result.asset_materializations_for_node("models__aml_model")
    assert materialization.metadata["rounds"].value == 1
    version = ModelRegistry(home / "governed" / "models").latest("aml_model")
    assert version.spec.kind == "aml_minilm" and version.record["hyper_parameters"]["encoder"] == "minilm-lora"
    stored = version.verified_weights()
    assert stored and all("lora_" in k or k.startswith(("text.", "numeric.", "head.")) for k in stored), sorted(stored)
    assert sum(v.nbytes for v in stored.values()) < 1_000_000, "the registry stores adapters and head, not the encoder"


def test_an_unknown_encoder_fails_the_run_in_one_line(small_bank):
    _, defs = small_bank
    result = train_aml(defs, {"encoder": "gpt-17"})
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message
    assert "unknown AML text encoder 'gpt-17' (choose one of: ngram, minilm-lora)" in message
