"""A file-based model registry: every trained model is a numbered version, with a champion.

Layout under the registry root (the governed zone's models folder, <home>/governed/models):

    <name>/<version>/weights.npz        the weights (npz: loads without unpickling)
    <name>/<version>/model.json         spec, the weights' sha256, hyper-parameters, metrics (held-out,
                                        per region), data fingerprints, policy decisions, epsilon, training summary
    <name>/<version>/model_card.md      the card, with roc.png and calibration.png beside it
    <name>/champion.json                which version serves, and why it was promoted

A version is written to a temporary folder and renamed into place, so a reader never sees half of
one; the champion pointer is replaced atomically. A challenger is promoted only when it beats the
champion (or, without a champion, a floor) on held-out data.

A version is also addressed by the sha256 of its weights file: silo agents evaluate only versions
found here by that hash (never weights a client sends), so every model a silo ever scored its
accounts with is on record. A federated model is therefore registered before it is evaluated, and
its held-out metrics are recorded once, afterwards (record_evaluation); weights and spec never change.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from fedlake.errors import FedlakeError
from fedlake.learning import weights as wire
from fedlake.learning.models import ModelSpec
from fedlake.learning.weights import Weights

CARD = "model_card.md"
RECORD = "model.json"
WEIGHTS = "weights.npz"
CHAMPION = "champion.json"
PLOTS = ("roc.png", "calibration.png")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def weights_hash(raw: bytes) -> str:
    """The registry hash of a version: the sha256 of its weights file's bytes."""
    return hashlib.sha256(raw).hexdigest()


class RegistryError(FedlakeError):
    """A model or version that is not there, or a record that cannot be used."""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    path: Path
    record: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record["metrics"]

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.record["spec"])

    @property
    def card_path(self) -> Path:
        return self.path / CARD

    @property
    def sha256(self) -> str:
        """The registry hash (recorded at registration; computed for versions registered before)."""
        return self.record.get("weights_sha256") or weights_hash((self.path / WEIGHTS).read_bytes())

    def weights(self) -> Weights:
        return wire.load(self.path / WEIGHTS)

    def verified_weights(self) -> Weights:
        """The weights, read once and checked against the recorded hash: a weights file replaced
        behind the registry's back is refused rather than scored."""
        raw = (self.path / WEIGHTS).read_bytes()
        if weights_hash(raw) != self.sha256:
            raise RegistryError(f"{self.path / WEIGHTS} does not match its recorded sha256 {self.sha256}: refusing to load it")
        return wire.from_bytes(raw)

    def load_model(self, verified: bool = False) -> nn.Module:
        return wire.load_into(self.spec.build(), self.verified_weights() if verified else self.weights())

    def card(self, inline_images: bool = False) -> str:
        """The model card; with inline_images the plots are embedded as data URIs, for viewers
        (such as the Dagster UI) that cannot follow a relative link to a file."""
        text = self.card_path.read_text()
        if inline_images:
            for plot in PLOTS:
                if (self.path / plot).exists():
                    encoded = base64.b64encode((self.path / plot).read_bytes()).decode()
                    text = text.replace(f"({plot})", f"(data:image/png;base64,{encoded})")
        return text


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    name: str
    version: int
    metric: str
    challenger: float | None
    champion_version: int | None
    champion: float | None
    floor: float
    reason: str


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _plots(folder: Path, metrics: dict[str, Any]) -> list[str]:
    """ROC and reliability diagrams from the held-out metrics (curves and calibration table)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    made = []
    roc = metrics.get("roc")
    if roc:
        fig = Figure(figsize=(4, 4), dpi=100)
        ax = fig.subplots()
        ax.plot(roc["fpr"], roc["tpr"], label=f"model (AUC {_fmt(metrics.get('auc'))})")
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, held-out", xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(folder / "roc.png")
        made.append("roc.png")
    table = [b for b in metrics.get("calibration") or [] if b.get("count")]
    if table:
        fig = Figure(figsize=(4, 4), dpi=100)
        ax = fig.subplots()
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
        ax.plot([b["mean_score"] for b in table], [b["observed_rate"] for b in table], marker="o",
                label=f"model (ECE {_fmt(metrics.get('ece'))})")
        ax.set(xlabel="mean predicted probability", ylabel="observed rate", title="Calibration, held-out", xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="upper left")
        fig.tight_layout()
        fig.savefig(folder / "calibration.png")
        made.append("calibration.png")
    return made


def _card(name: str, version: int, record: dict[str, Any], plots: list[str]) -> str:
    m = record["metrics"]
    lines = [
        f"# {name} v{version}",
        "",
        record.get("description") or "",
        "",
        f"- created: {record['created_at']}",
        f"- model: `{record['spec']['kind']}` {json.dumps(record['spec']['params'], sort_keys=True)}",
        f"- training: {json.dumps(record.get('hyper_parameters') or {}, sort_keys=True)}",
        "",
        "## Held-out metrics",
        "",
        "| n | positives | AUC | PR-AUC | Brier | ECE |",
        "|---|---|---|---|---|---|",
        f"| {_fmt(m.get('n'))} | {_fmt(m.get('positives'))} | {_fmt(m.get('auc'))} | {_fmt(m.get('pr_auc'))} | {_fmt(m.get('brier'))} | {_fmt(m.get('ece'))} |",
    ]
    per_region = record.get("per_region") or {}
    if per_region:
        lines += ["", "## Per region", "", "| region | n | positives | AUC | PR-AUC | Brier | ECE |", "|---|---|---|---|---|---|---|"]
        for region, r in sorted(per_region.items()):
            lines.append(f"| {region} | {_fmt(r.get('n'))} | {_fmt(r.get('positives'))} | {_fmt(r.get('auc'))} | "
                         f"{_fmt(r.get('pr_auc'))} | {_fmt(r.get('brier'))} | {_fmt(r.get('ece'))} |")
    comparisons = record.get("comparisons") or {}
    if comparisons:
        lines += ["", "## Against baselines (same held-out data)", "", "| model | AUC | PR-AUC | Brier |", "|---|---|---|---|"]
        for label, c in comparisons.items():
            lines.append(f"| {label} | {_fmt(c.get('auc'))} | {_fmt(c.get('pr_auc'))} | {_fmt(c.get('brier'))} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p[:-4]}]({p})" for p in plots]
    lines += ["", "## Data", ""]
    lines += [f"- {source}: `{fp}`" for source, fp in sorted((record.get("fingerprints") or {}).items())] or ["- (not recorded)"]
    epsilon = record.get("epsilon") or {}
    lines += ["", "## Privacy", ""]
    if any(v is not None for v in epsilon.values()):
        delta = record.get("delta") or {}
        lines += [f"- {silo}: epsilon {_fmt(e)} (delta {_fmt(delta.get(silo))})" if e is not None else f"- {silo}: no DP"
                  for silo, e in sorted(epsilon.items())]
    else:
        lines.append("- trained without differential privacy")
    decisions = record.get("policy_decisions") or []
    lines += ["", "## Policy decisions", ""]
    lines += [f"- {json.dumps(d, sort_keys=True)}" for d in decisions] or ["- (none recorded)"]
    return "\n".join(lines) + "\n"


class ModelRegistry:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _folder(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise RegistryError(f"invalid model name {name!r}: use a plain folder name such as 'aml_model'")
        return self.root / name

    def register(
        self,
        name: str,
        spec: ModelSpec,
        weights: Weights,
        *,
        metrics: dict[str, Any] | None = None,
        hyper_parameters: dict[str, Any] | None = None,
        per_region: dict[str, dict[str, Any]] | None = None,
        fingerprints: dict[str, str] | None = None,
        policy_decisions: list[dict[str, Any]] | None = None,
        epsilon: dict[str, float | None] | None = None,
        delta: dict[str, float] | None = None,
        comparisons: dict[str, dict[str, Any]] | None = None,
        training: dict[str, Any] | None = None,
        description: str = "",
    ) -> ModelVersion:
        """Record a new version. `metrics` are held-out metrics as metrics.evaluate returns them
        (with roc and calibration, which the card plots); a federated model has none yet: it is
        registered so that the silos may evaluate it, and record_evaluation adds them."""
        wire.load_into(spec.build(), weights)
        folder = self._folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        raw = wire.to_bytes(weights)
        metrics = metrics or {}
        record = {
            "name": name, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "spec": spec.to_dict(), "weights_sha256": weights_hash(raw), "hyper_parameters": hyper_parameters or {}, "metrics": metrics,
            "per_region": per_region or {}, "fingerprints": fingerprints or {}, "policy_decisions": policy_decisions or [],
            "epsilon": epsilon or {}, "delta": delta or {}, "comparisons": comparisons or {}, "training": training or {},
            "description": description,
        }
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=".staging-"))
        try:
            wire.write_atomic(staging / WEIGHTS, raw)
            plots = _plots(staging, metrics)
            while True:
                version = max((v.version for v in self.versions(name)), default=0) + 1
                record["version"] = version
                (staging / RECORD).write_text(json.dumps(record, indent=1, default=str))
                (staging / CARD).write_text(_card(name, version, record, plots))
                try:
                    os.rename(staging, folder / str(version))
                    break
                except OSError:
                    if not (folder / str(version)).exists():
                        raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self.version(name, version)

    def record_evaluation(self, name: str, version: int, metrics: dict[str, Any],
                          per_region: dict[str, dict[str, Any]] | None = None) -> ModelVersion:
        """Add the held-out metrics of a version registered without them (the federated evaluation
        runs on registered versions only); a version's metrics are recorded once."""
        current = self.version(name, version)
        if current.record.get("metrics"):
            raise RegistryError(f"model {name!r} v{version} already has its held-out metrics: register a new version instead")
        record = {**current.record, "metrics": metrics, "per_region": per_region or current.record.get("per_region") or {}}
        plots = _plots(current.path, metrics)
        wire.write_atomic(current.path / CARD, _card(name, int(version), record, plots).encode())
        wire.write_atomic(current.path / RECORD, json.dumps(record, indent=1, default=str).encode())
        return self.version(name, version)

    def by_hash(self, sha256: str) -> ModelVersion:
        """The registered version whose weights hash is `sha256`, over every model name."""
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise RegistryError(f"{sha256!r} is not a registry hash (64 lowercase hex digits, the sha256 of a version's weights)")
        names = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")) if self.root.exists() else []
        for name in names:
            for version in self.versions(name):
                if version.sha256 == sha256:
                    return version
        raise RegistryError(f"no registered model version has weights sha256 {sha256} in {self.root}")

    def versions(self, name: str) -> list[ModelVersion]:
        folder = self._folder(name)
        if not folder.exists():
            return []
        found = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and (p / RECORD).exists())
        return [self.version(name, v) for v in found]

    def version(self, name: str, version: int) -> ModelVersion:
        path = self._folder(name) / str(int(version))
        if not (path / RECORD).exists():
            known = [v.version for v in self.versions(name)] if self._folder(name).exists() else []
            raise RegistryError(f"model {name!r} has no version {version} under {self.root} (versions: {known or 'none'})")
        return ModelVersion(name, int(version), path, json.loads((path / RECORD).read_text()))

    def latest(self, name: str) -> ModelVersion | None:
        versions = self.versions(name)
        return versions[-1] if versions else None

    def champion(self, name: str) -> ModelVersion | None:
        pointer = self._folder(name) / CHAMPION
        if not pointer.exists():
            return None
        return self.version(name, json.loads(pointer.read_text())["version"])

    def promote(
        self,
        name: str,
        version: int,
        metric: str = "auc",
        floor: float = 0.5,
        min_gain: float = 0.0,
        held_out: Callable[[nn.Module], float] | None = None,
    ) -> Promotion:
        """Make `version` the champion if its held-out `metric` (higher is better) beats the
        champion's by more than min_gain, or, without a champion, is at least `floor`.

        With `held_out`, both models are scored now by that function on the same held-out data (a
        fair comparison when the data moved on since the champion was trained); otherwise each
        version's recorded held-out metric is compared."""
        challenger = self.version(name, version)
        champion = self.champion(name)

        def score(v: ModelVersion) -> float | None:
            value = held_out(v.load_model()) if held_out else v.metrics.get(metric)
            return None if value is None else float(value)

        mine = score(challenger)
        theirs = score(champion) if champion else None
        if champion and champion.version == challenger.version:
            return Promotion(False, name, version, metric, mine, champion.version, theirs, floor, f"v{version} is already the champion")
        if mine is None:
            ok, reason = False, f"v{version} has no held-out {metric} (a single class in its held-out data?): not promoted"
        elif mine < floor:
            ok, reason = False, f"v{version} held-out {metric} {mine:.4f} is under the floor {floor:.4f}: not promoted"
        elif champion is None or theirs is None:
            ok, reason = True, f"v{version} held-out {metric} {mine:.4f} meets the floor {floor:.4f} and there is no champion"
        elif mine > theirs + min_gain:
            ok, reason = True, f"v{version} held-out {metric} {mine:.4f} beats champion v{champion.version} ({theirs:.4f})"
        else:
            ok, reason = False, (f"v{version} held-out {metric} {mine:.4f} does not beat champion v{champion.version} "
                                 f"({theirs:.4f}{f' + {min_gain}' if min_gain else ''}): champion kept")
        if ok:
            pointer = self._folder(name) / CHAMPION
            fd, tmp = tempfile.mkstemp(dir=pointer.parent, prefix=".champion.", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump({"version": version, "metric": metric, "score": mine, "reason": reason,
                           "promoted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}, f)
            os.replace(tmp, pointer)
        return Promotion(ok, name, version, metric, mine, champion.version if champion else None, theirs, floor, reason)
