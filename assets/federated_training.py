"""What every federated model asset does the same way: the AML tables it reads in each silo, the
model spec (a bad encoder name is one line in the run, not a traceback), the checkpoint folder a
restarted training resumes from, and the policy decision it records (only weights leave)."""

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import dagster as dg

from fedlake.learning.models import aml_spec
from fedlake.relation import RelationHandle

AML_TABLES = ("transactions", "accounts", "aml_cases")


def aml_model_spec(name: str, encoder: str):
    try:
        return aml_spec(name, encoder)
    except ValueError as exc:
        raise dg.Failure(description=str(exc)) from None


def checkpoint_dir(registry_root: Path, model: str, config: dg.Config, inputs: Mapping[str, RelationHandle]) -> Path:
    """The same data and settings give the same folder, so a restarted training resumes from its last round."""
    key = hashlib.sha256(json.dumps([config.model_dump(), sorted((h.qualified_name, h.rows) for h in inputs.values())]).encode())
    return registry_root / "_checkpoints" / model / key.hexdigest()[:16]


def weights_only(silos: Iterable[str]) -> list[dict]:
    return [{"silo": s, "output": "model_weights", "action": "allow", "rule": "training: only weights leave"} for s in silos]
