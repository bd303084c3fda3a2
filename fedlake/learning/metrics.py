"""Evaluation of scores against labels: AUC, PR-AUC, Brier, expected calibration error, curves.

Pure numpy. Two entry points: `evaluate` on scores and labels held in one place, and score
histograms that each silo computes on its own accounts and the coordinator merges, so pooled
metrics over all silos are known without any per-account score leaving a silo.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CALIBRATION_BINS = 10
CURVE_POINTS = 201
# Histogram bins are equal in logit space: with rare positives almost every score sits near 0,
# where equal-width probability bins would lump all accounts into one tie.
LOGIT_RANGE = 16.0
LOGIT_BINS = 320


def _groups_metrics(positives: np.ndarray, negatives: np.ndarray) -> dict[str, Any]:
    """AUC, average precision and the ROC curve from counts per tie group, highest score first."""
    total_pos, total_neg = float(positives.sum()), float(negatives.sum())
    result: dict[str, Any] = {"auc": None, "pr_auc": None, "roc": None}
    if total_pos == 0:
        return result
    tp = np.cumsum(positives)
    fp = np.cumsum(negatives)
    precision = tp / np.maximum(tp + fp, 1e-12)
    recall = tp / total_pos
    result["pr_auc"] = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
    if total_neg == 0:
        return result
    negatives_below = total_neg - fp  # negatives scored strictly lower than each group
    result["auc"] = float(np.sum(positives * (negatives_below + 0.5 * negatives)) / (total_pos * total_neg))
    fpr = np.concatenate([[0.0], fp / total_neg])
    tpr = np.concatenate([[0.0], tp / total_pos])
    if len(fpr) > CURVE_POINTS:
        keep = np.unique(np.linspace(0, len(fpr) - 1, CURVE_POINTS).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    result["roc"] = {"fpr": [round(float(v), 6) for v in fpr], "tpr": [round(float(v), 6) for v in tpr]}
    return result


def _calibration(count: np.ndarray, score_sum: np.ndarray, positives: np.ndarray, bins: int) -> tuple[float, list[dict[str, Any]]]:
    """ECE and the reliability table from per-bin counts, score sums and positives."""
    n = count.sum()
    table = []
    ece = 0.0
    for b in range(bins):
        lower, upper = b / bins, (b + 1) / bins
        if count[b] == 0:
            table.append({"lower": lower, "upper": upper, "count": 0, "mean_score": None, "observed_rate": None})
            continue
        mean_score = score_sum[b] / count[b]
        observed = positives[b] / count[b]
        ece += count[b] / n * abs(observed - mean_score)
        table.append({"lower": lower, "upper": upper, "count": int(count[b]), "mean_score": float(mean_score),
                      "observed_rate": float(observed)})
    return float(ece), table


def evaluate(scores: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Metrics of probabilities `scores` against 0/1 `labels`.

    auc: probability that a positive outscores a negative (ties count half); pr_auc: average
    precision (sum over thresholds of recall gained times precision); brier: mean squared error of
    the probabilities; ece: bin-count-weighted |observed rate - mean score| over `bins` equal-width
    bins. auc is None with a single class, pr_auc None without positives.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"evaluate: scores {scores.shape} and labels {labels.shape} must be 1-d and of the same length")
    if len(scores) == 0:
        raise ValueError("evaluate: no scores to evaluate")
    if ((scores < 0) | (scores > 1) | ~np.isfinite(scores)).any():
        raise ValueError("evaluate: scores must be probabilities in [0, 1]")
    order = np.argsort(-scores, kind="stable")
    distinct, start = np.unique(-scores[order], return_index=True)
    group = np.repeat(np.arange(len(distinct)), np.diff(np.append(start, len(scores))))
    positives = np.bincount(group, weights=labels[order], minlength=len(distinct))
    negatives = np.bincount(group, weights=1 - labels[order], minlength=len(distinct))
    which = np.minimum((scores * bins).astype(int), bins - 1)
    ece, table = _calibration(
        np.bincount(which, minlength=bins).astype(float), np.bincount(which, weights=scores, minlength=bins),
        np.bincount(which, weights=labels, minlength=bins), bins,
    )
    return {
        "n": int(len(scores)),
        "positives": int(labels.sum()),
        **_groups_metrics(positives, negatives),
        "brier": float(np.mean((scores - labels) ** 2)),
        "ece": ece,
        "calibration": table,
    }


def _logit_bin(scores: np.ndarray) -> np.ndarray:
    clipped = np.clip(scores, 1e-12, 1 - 1e-12)
    logit = np.log(clipped / (1 - clipped))
    width = 2 * LOGIT_RANGE / LOGIT_BINS
    return np.clip(((logit + LOGIT_RANGE) / width).astype(int), 0, LOGIT_BINS - 1)


def score_histogram(scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Counts of positives and negatives per logit bin, and score sums: aggregates that say how a
    model ranks and calibrates on a silo's accounts without naming any account."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    which = _logit_bin(scores)
    return {
        "positives": np.bincount(which, weights=labels, minlength=LOGIT_BINS).astype(int).tolist(),
        "negatives": np.bincount(which, weights=1 - labels, minlength=LOGIT_BINS).astype(int).tolist(),
        "score_sums": np.bincount(which, weights=scores, minlength=LOGIT_BINS).tolist(),
        "squared_error_sum": float(np.sum((scores - labels) ** 2)),
    }


def metrics_from_histograms(histograms: list[dict[str, Any]], bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Pooled metrics from several silos' score histograms. Scores within one logit bin (width 0.1)
    count as ties, so AUC and PR-AUC are those of the scores rounded to the bin."""
    if not histograms:
        raise ValueError("metrics_from_histograms: no histograms to merge")
    positives = np.sum([h["positives"] for h in histograms], axis=0).astype(float)
    negatives = np.sum([h["negatives"] for h in histograms], axis=0).astype(float)
    score_sums = np.sum([h["score_sums"] for h in histograms], axis=0)
    count = positives + negatives
    n = count.sum()
    if n == 0:
        raise ValueError("metrics_from_histograms: the histograms hold no scores")
    mean_score = np.divide(score_sums, count, out=np.zeros_like(score_sums), where=count > 0)
    which = np.minimum((mean_score * bins).astype(int), bins - 1)
    ece, table = _calibration(
        np.bincount(which, weights=count, minlength=bins), np.bincount(which, weights=score_sums, minlength=bins),
        np.bincount(which, weights=positives, minlength=bins), bins,
    )
    return {
        "n": int(n),
        "positives": int(positives.sum()),
        **_groups_metrics(positives[::-1], negatives[::-1]),
        "brier": float(sum(h["squared_error_sum"] for h in histograms) / n),
        "ece": ece,
        "calibration": table,
    }


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalar part of a metrics dict (no curves or tables), for logs and tables."""
    return {k: v for k, v in metrics.items() if k not in ("roc", "calibration")}
