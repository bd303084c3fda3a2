"""The credit-scoring model and its two baselines, trained and evaluated the same way.

customer_credit_features is compliant data already in the governed zone, so the credit model
trains centrally on it. Three scores are compared on the same held-out loans (a stable fifth,
chosen by a hash of loan_id):

- all_regions: the borrower's behaviour in every region (the cross-silo features);
- eu_only: the same network on what the loans' own silo sees alone (the home_* columns);
- oracle: the generator's true default probability, the best any model could do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

from fedlake.learning import weights as wire
from fedlake.learning.data import TabularData, credit_examples, held_out_mask
from fedlake.learning.metrics import evaluate
from fedlake.learning.models import CreditNet, ModelSpec
from fedlake.learning.train import TrainConfig, predict, train_local
from fedlake.learning.weights import Weights

LOAN_FEATURES = ("principal", "rate", "term_months", "income", "employment_years", "dti")
BEHAVIOUR = ("spending_volatility", "gambling_share", "cash_advance_share", "cross_border_share", "transactions")
ALL_REGION_FEATURES = (*LOAN_FEATURES, *BEHAVIOUR)
EU_ONLY_FEATURES = (*LOAN_FEATURES, *(f"home_{f}" for f in BEHAVIOUR))
DEFAULT_CONFIG = TrainConfig(epochs=40, lr=0.003, batch_size=256)


@dataclass
class CreditModel:
    spec: ModelSpec
    weights: Weights
    features: tuple[str, ...]
    config: TrainConfig
    metrics: dict[str, Any]  # held-out, with roc and calibration
    n_train: int
    fingerprint: str  # of the rows and columns it was trained and evaluated on


def fingerprint(table: pa.Table, columns: tuple[str, ...]) -> str:
    """A digest of the rows and columns used, so a model version names the data it saw."""
    digest = hashlib.sha256()
    for name in (*columns, "loan_id", "defaulted"):
        if name in table.column_names:
            digest.update(name.encode())
            digest.update(np.asarray(table.column(name).to_numpy(zero_copy_only=False)).astype(str).tobytes())
    return digest.hexdigest()


def split(table: pa.Table) -> np.ndarray:
    """The held-out mask over the table's loans (stable across runs and models)."""
    return held_out_mask(table.column("loan_id").to_pylist())


def train_credit(
    table: pa.Table,
    features: tuple[str, ...] = ALL_REGION_FEATURES,
    config: TrainConfig = DEFAULT_CONFIG,
    name: str = "credit_scoring_model",
    hidden: int = 32,
    seed: int = 0,
) -> CreditModel:
    """Train CreditNet on the training loans of `table` and evaluate it on the held-out ones.
    Rows are taken in loan_id order, so the same table gives the same model whatever order a
    federated query returned it in."""
    table = table.sort_by("loan_id")
    x, y = credit_examples(table, features)
    held_out = split(table)
    if held_out.all() or not held_out.any() or y[~held_out].min() == y[~held_out].max():
        raise ValueError(f"credit training needs loans of both outcomes in the training split; got {len(y)} loans, "
                         f"{int(y.sum())} defaulted: seed a larger bank")
    spec = ModelSpec(name, "credit", {"n_features": len(features), "hidden": hidden})
    model: CreditNet = spec.build(seed=seed)
    model.set_standardization(x[~held_out])
    train = TabularData(x[~held_out], y[~held_out])
    test = TabularData(x[held_out], y[held_out])
    train_local(model, train, replace(config, seed=seed))
    metrics = evaluate(predict(model, test), test.labels)
    return CreditModel(spec, wire.model_weights(model), tuple(features), config, metrics, len(train), fingerprint(table, features))


def oracle_metrics(table: pa.Table, loan_truth: pa.Table) -> dict[str, Any]:
    """The true default probability used as the score, on the same held-out loans."""
    truth = dict(zip(loan_truth.column("loan_id").to_pylist(), loan_truth.column("true_pd").to_pylist()))
    loans = table.column("loan_id").to_pylist()
    missing = [loan for loan in loans if loan not in truth]
    if missing:
        raise ValueError(f"loan_truth has no true_pd for {len(missing)} loan(s), e.g. {missing[:3]}: is it the truth of this bank?")
    held_out = split(table)
    scores = np.array([truth[loan] for loan in loans])[held_out]
    labels = np.asarray(table.column("defaulted").to_numpy(zero_copy_only=False), dtype=np.float64)
    return evaluate(scores, labels[held_out])


def credit_comparison(
    table: pa.Table, loan_truth: pa.Table | None = None, config: TrainConfig = DEFAULT_CONFIG, seed: int = 0
) -> tuple[CreditModel, dict[str, dict[str, Any]]]:
    """The all-region model and the comparison table: held-out metrics of all_regions, eu_only and
    (with the truth) oracle."""
    model = train_credit(table, ALL_REGION_FEATURES, config, seed=seed)
    eu_only = train_credit(table, EU_ONLY_FEATURES, config, name="credit_scoring_eu_only", seed=seed)
    table_of = {"all_regions": model.metrics, "eu_only": eu_only.metrics}
    if loan_truth is not None:
        table_of["oracle"] = oracle_metrics(table, loan_truth)
    return model, table_of
