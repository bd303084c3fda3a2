"""Evaluation of scores against labels: AUC, PR-AUC, Brier, expected calibration error, curves.

Pure numpy (OpenDP for the noise). Two entry points: `evaluate` on scores and labels held in one
place, and score histograms that each silo releases for its own accounts and the coordinator
merges, so pooled metrics over all silos are known without any per-account score leaving a silo:
a released bin holds at least a minimum count of accounts, optionally noised for DP.
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


def score_histogram(scores: np.ndarray, labels: np.ndarray) -> dict[str, list[float]]:
    """Per fine logit bin: positives, negatives, score sums and squared-error sums. This stays inside
    a silo: bins this fine hold single accounts, so only `release_histogram` of it may leave."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    which = _logit_bin(scores)
    return {
        "positives": np.bincount(which, weights=labels, minlength=LOGIT_BINS).tolist(),
        "negatives": np.bincount(which, weights=1 - labels, minlength=LOGIT_BINS).tolist(),
        "score_sums": np.bincount(which, weights=scores, minlength=LOGIT_BINS).tolist(),
        "squared_errors": np.bincount(which, weights=(scores - labels) ** 2, minlength=LOGIT_BINS).tolist(),
    }


# One account moves at most 1 in the counts (positives and negatives together), 1 in the score sums
# and 1 in the squared errors (scores and labels lie in [0, 1]): the L1 sensitivity of the whole
# fine histogram under adding or removing an account.
HISTOGRAM_SENSITIVITY = 3.0
# Noised, the fine bins are summed ten at a time first (logit width 1): noise is added per bin, and
# 320 noised bins would bury a few hundred accounts under the noise of the empty ones.
DP_BIN_WIDTH = 10


def _laplace(values: np.ndarray, epsilon: float) -> np.ndarray:
    """OpenDP's vector Laplace mechanism, scaled so that the fine histogram is epsilon-DP."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    domain = dp.vector_domain(dp.atom_domain(T=float, nan=False))
    mechanism = dp.m.make_laplace(domain, dp.l1_distance(T=float), scale=HISTOGRAM_SENSITIVITY / epsilon)
    if mechanism.map(HISTOGRAM_SENSITIVITY) > epsilon * (1 + 1e-9):
        raise RuntimeError(f"the Laplace mechanism does not meet epsilon {epsilon}")
    return np.asarray(mechanism(values.tolist()), dtype=np.float64)


def release_histogram(scores: np.ndarray, labels: np.ndarray, min_count: int, epsilon: float | None = None) -> dict[str, Any]:
    """The score histogram a silo may release: every released bin holds at least `min_count` rows.

    Fine bins are merged with their neighbours in score order (from the highest score down) until
    each group reaches min_count, so that a bin of one account never leaves on its own and the few
    high-scoring positives still rank above the rest; rows that cannot reach min_count even merged
    (a split smaller than min_count) are suppressed and counted only in aggregate. With `epsilon`,
    the fine histogram is first noised with OpenDP's Laplace mechanism and everything after
    (merging, suppression, clamping) is post-processing of the noised counts.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, got {min_count}")
    fine = score_histogram(scores, labels)
    keys = ("positives", "negatives", "score_sums", "squared_errors")
    table = np.array([fine[k] for k in keys], dtype=np.float64)
    width = 1
    if epsilon is not None:
        if epsilon <= 0:
            raise ValueError(f"epsilon must be positive, got {epsilon}")
        width = DP_BIN_WIDTH
        table = table.reshape(len(keys), LOGIT_BINS // width, width).sum(axis=2)
        table = _laplace(table.ravel(), epsilon).reshape(table.shape)
    counts = table[0] + table[1]
    groups: list[tuple[int, int]] = []
    upper, total = None, 0.0
    for b in range(table.shape[1] - 1, -1, -1):
        if upper is None:
            if epsilon is None and counts[b] == 0:
                continue
            upper = b + 1
        total += counts[b]
        if total >= min_count:
            groups.append((b, upper))
            upper, total = None, 0.0
    suppressed = 0.0
    if upper is not None:
        if groups:
            groups[-1] = (0 if epsilon is not None else _lowest_filled(counts, upper), groups[-1][1])
        else:
            suppressed = total
    sums = [table[:, lo:hi].sum(axis=1) for lo, hi in reversed(groups)]
    return {
        "bins": [[lo * width, hi * width] for lo, hi in reversed(groups)],
        "positives": [max(0, round(float(s[0]))) for s in sums],
        "negatives": [max(0, round(float(s[1]))) for s in sums],
        "score_sums": [max(0.0, float(s[2])) for s in sums],
        "squared_error_sum": max(0.0, float(sum(s[3] for s in sums))),
        "suppressed_rows": max(0, round(suppressed)),
        "min_count": min_count,
        "noise": {"mechanism": "laplace", "epsilon": epsilon, "sensitivity": HISTOGRAM_SENSITIVITY} if epsilon is not None else None,
    }


def _lowest_filled(counts: np.ndarray, below: int) -> int:
    filled = np.nonzero(counts[:below])[0]
    return int(filled[0]) if len(filled) else 0


def _as_released(histogram: dict[str, Any]) -> dict[str, Any]:
    """A fine histogram (score_histogram, as the bank's evaluator may hold one) in the released
    form, one bin per filled fine bin; a released histogram as it is."""
    if "bins" in histogram:
        return histogram
    filled = [b for b in range(LOGIT_BINS) if histogram["positives"][b] + histogram["negatives"][b] > 0]
    return {
        "bins": [[b, b + 1] for b in filled],
        **{k: [histogram[k][b] for b in filled] for k in ("positives", "negatives", "score_sums")},
        "squared_error_sum": float(sum(histogram["squared_errors"])),
        "suppressed_rows": 0,
    }


def _bin_probability(edge: int) -> float:
    if edge <= 0:
        return 0.0
    if edge >= LOGIT_BINS:
        return 1.0
    return float(1 / (1 + np.exp(-(-LOGIT_RANGE + edge * 2 * LOGIT_RANGE / LOGIT_BINS))))


def metrics_from_histograms(histograms: list[dict[str, Any]], bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Pooled metrics from released histograms (one or several silos'). Each released bin is one tie
    group placed at its mean score (kept within its own score range, so a silo's bins keep their
    order): AUC and PR-AUC are those of the scores coarsened to the released bins, and the rows a
    silo suppressed are counted in suppressed_rows, not in n."""
    if not histograms:
        raise ValueError("metrics_from_histograms: no histograms to merge")
    histograms = [_as_released(h) for h in histograms]
    keys, positives, negatives, score_sums = [], [], [], []
    for h in histograms:
        for (lo, hi), p, q, s in zip(h["bins"], h["positives"], h["negatives"], h["score_sums"]):
            count = p + q
            mean = s / count if count > 0 else 0.0
            keys.append(min(max(mean, _bin_probability(lo)), _bin_probability(hi)))
            positives.append(p)
            negatives.append(q)
            score_sums.append(s)
    suppressed = int(sum(h.get("suppressed_rows", 0) for h in histograms))
    positives_a, negatives_a = np.array(positives, dtype=float), np.array(negatives, dtype=float)
    count = positives_a + negatives_a
    n = count.sum()
    if n == 0:
        return {"n": 0, "positives": 0, "auc": None, "pr_auc": None, "roc": None, "brier": None, "ece": None,
                "calibration": [], "suppressed_rows": suppressed}
    distinct, group = np.unique(-np.array(keys), return_inverse=True)
    group_pos = np.bincount(group, weights=positives_a, minlength=len(distinct))
    group_neg = np.bincount(group, weights=negatives_a, minlength=len(distinct))
    sums = np.array(score_sums, dtype=float)
    mean_score = np.divide(sums, count, out=np.zeros_like(sums), where=count > 0)
    which = np.minimum((mean_score * bins).astype(int), bins - 1)
    ece, table = _calibration(
        np.bincount(which, weights=count, minlength=bins), np.bincount(which, weights=sums, minlength=bins),
        np.bincount(which, weights=positives_a, minlength=bins), bins,
    )
    return {
        "n": int(n),
        "positives": int(positives_a.sum()),
        **_groups_metrics(group_pos, group_neg),
        "brier": float(sum(h["squared_error_sum"] for h in histograms) / n),
        "ece": ece,
        "calibration": table,
        "suppressed_rows": suppressed,
    }


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalar part of a metrics dict (no curves or tables), for logs and tables."""
    return {k: v for k, v in metrics.items() if k not in ("roc", "calibration")}
