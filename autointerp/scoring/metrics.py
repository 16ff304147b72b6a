"""Metrics as plain functions of arrays, and bootstrap 95% confidence intervals that resample contexts.

Point estimates come from scikit-learn / numpy. Bootstrap replicates are computed exactly from resampling
counts (a resample is a vector of how often each unit was drawn), so a thousand replicates cost one matrix
product instead of a thousand scikit-learn calls; tests check each replicate against scikit-learn on the
materialised resample.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

N_RESAMPLES = 1000
CONFIDENCE = 0.95
SEED = 0

ArrayLike = np.ndarray | list


def balanced_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float | None:
    """Mean of per-class recall; None unless both classes are present."""
    y_true = np.asarray(y_true, dtype=int)
    if len(np.unique(y_true)) < 2:
        return None
    return float(balanced_accuracy_score(y_true, np.asarray(y_pred, dtype=int)))


def auroc(y_true: ArrayLike, y_score: ArrayLike) -> float | None:
    """Area under the ROC curve; None unless both classes are present."""
    y_true = np.asarray(y_true, dtype=int)
    if len(np.unique(y_true)) < 2:
        return None
    return float(roc_auc_score(y_true, np.asarray(y_score, dtype=float)))


def f1(y_true: ArrayLike, y_pred: ArrayLike) -> float | None:
    """F1 of class 1 (delphi's headline for detection and fuzzing); None unless both classes are present."""
    y_true = np.asarray(y_true, dtype=int)
    if len(np.unique(y_true)) < 2:
        return None
    return float(f1_score(y_true, np.asarray(y_pred, dtype=int), pos_label=1, zero_division=0.0))


def pearson(x: ArrayLike, y: ArrayLike) -> float | None:
    """Pearson correlation; None when either side is constant (the correlation is undefined)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def pooled_pearson(true_per_context: list[ArrayLike], pred_per_context: list[ArrayLike]) -> float | None:
    """Correlation over all tokens of all contexts flattened together (Bills et al. 2023's ev correlation)."""
    if not true_per_context:
        return None
    return pearson(np.concatenate(true_per_context), np.concatenate(pred_per_context))


def resample_counts(
    strata: ArrayLike, n_resamples: int = N_RESAMPLES, seed: int = SEED, clusters: ArrayLike | None = None
) -> np.ndarray:
    """[n_resamples, n_units] draw counts, resampling units with replacement within each stratum.

    With `clusters` (e.g. context ids), whole clusters are drawn and every unit of a drawn cluster comes with
    it: fuzzing's true and decoy highlighting of one context stay a pair. A cluster whose units lie in
    different strata is drawn in a stratum of its own kind ("mixed").
    """
    if clusters is not None:
        return _cluster_counts(np.asarray(strata), np.asarray(clusters), n_resamples, seed)
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_resamples, len(strata)), dtype=np.int64)
    for value in np.unique(strata):
        idx = np.flatnonzero(strata == value)
        counts[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=n_resamples)
    return counts


def _cluster_counts(strata: np.ndarray, clusters: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    ids, inverse = np.unique(clusters, return_inverse=True)
    kinds = []
    for c in range(len(ids)):
        values = {str(v) for v in strata[inverse == c]}
        kinds.append(values.pop() if len(values) == 1 else "mixed")
    return resample_counts(np.array(kinds), n_resamples, seed)[:, inverse]


def percentile_interval(replicates: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float | None, float | None]:
    """Percentile interval of the finite replicates; None when most replicates are undefined."""
    finite = replicates[np.isfinite(replicates)]
    if len(finite) < max(2, len(replicates) // 2):
        return None, None
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def balanced_accuracy_replicates(y_true: ArrayLike, y_pred: ArrayLike, counts: np.ndarray) -> np.ndarray:
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    correct = (y_true == y_pred).astype(float)
    recalls = []
    for cls in (0, 1):
        mask = y_true == cls
        drawn = counts[:, mask].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(np.where(drawn > 0, counts[:, mask] @ correct[mask] / np.maximum(drawn, 1), np.nan))
    return (recalls[0] + recalls[1]) / 2


def f1_replicates(y_true: ArrayLike, y_pred: ArrayLike, counts: np.ndarray) -> np.ndarray:
    """F1 of class 1 per resample: 2TP / (2TP + FP + FN) from count-weighted confusion cells."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    tp = counts @ ((y_true == 1) & (y_pred == 1)).astype(float)
    fp = counts @ ((y_true == 0) & (y_pred == 1)).astype(float)
    fn = counts @ ((y_true == 1) & (y_pred == 0)).astype(float)
    both = (counts @ (y_true == 1).astype(float) > 0) & (counts @ (y_true == 0).astype(float) > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1e-300), 0.0)
    return np.where(both, value, np.nan)


def auroc_replicates(y_true: ArrayLike, y_score: ArrayLike, counts: np.ndarray) -> np.ndarray:
    """AUROC of each resample: the count-weighted share of (positive, negative) pairs ranked right, ties half."""
    y_true, y_score = np.asarray(y_true, dtype=int), np.asarray(y_score, dtype=float)
    pos, neg = y_true == 1, y_true == 0
    sp, sn = y_score[pos], y_score[neg]
    wins = (sp[:, None] > sn[None, :]) + 0.5 * (sp[:, None] == sn[None, :])
    cp, cn = counts[:, pos].astype(float), counts[:, neg].astype(float)
    pairs = cp.sum(axis=1) * cn.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, np.einsum("bi,ij,bj->b", cp, wins, cn) / pairs, np.nan)


def pooled_pearson_replicates(
    true_per_context: list[ArrayLike], pred_per_context: list[ArrayLike], counts: np.ndarray
) -> np.ndarray:
    """Pooled Pearson of each resample of contexts, from per-context sums (n, Σx, Σy, Σx², Σy², Σxy)."""
    sums = np.array(
        [
            [len(x), np.sum(x), np.sum(y), np.sum(np.square(x)), np.sum(np.square(y)), np.dot(x, y)]
            for x, y in (
                (np.asarray(t, dtype=float), np.asarray(p, dtype=float))
                for t, p in zip(true_per_context, pred_per_context)
            )
        ]
    )
    n, sx, sy, sxx, syy, sxy = (counts @ sums).T
    var_x, var_y = n * sxx - sx**2, n * syy - sy**2
    ok = (var_x > 1e-9 * n * sxx) & (var_y > 1e-9 * n * syy)  # a constant side leaves only rounding error
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, (n * sxy - sx * sy) / np.sqrt(np.where(ok, var_x * var_y, 1.0)), np.nan)


def bootstrap_balanced_accuracy(
    y_true: ArrayLike, y_pred: ArrayLike, n_resamples: int = N_RESAMPLES, seed: int = SEED, clusters: ArrayLike | None = None
) -> tuple[float | None, float | None]:
    """95% CI, resampling items within each class (so every resample holds both classes), or whole
    `clusters` (contexts) when items come in groups."""
    counts = resample_counts(y_true, n_resamples, seed, clusters)
    return percentile_interval(balanced_accuracy_replicates(y_true, y_pred, counts))


def bootstrap_f1(
    y_true: ArrayLike, y_pred: ArrayLike, n_resamples: int = N_RESAMPLES, seed: int = SEED, clusters: ArrayLike | None = None
) -> tuple[float | None, float | None]:
    counts = resample_counts(y_true, n_resamples, seed, clusters)
    return percentile_interval(f1_replicates(y_true, y_pred, counts))


def bootstrap_auroc(
    y_true: ArrayLike, y_score: ArrayLike, n_resamples: int = N_RESAMPLES, seed: int = SEED, clusters: ArrayLike | None = None
) -> tuple[float | None, float | None]:
    counts = resample_counts(y_true, n_resamples, seed, clusters)
    return percentile_interval(auroc_replicates(y_true, y_score, counts))


def bootstrap_mean(
    values: ArrayLike, n_resamples: int = N_RESAMPLES, seed: int = SEED
) -> tuple[float | None, float | None]:
    """95% CI of a mean, resampling the values (None with fewer than two)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return None, None
    counts = resample_counts(np.zeros(len(x)), n_resamples, seed)
    return percentile_interval(counts @ x / len(x))


def bootstrap_pooled_pearson(
    true_per_context: list[ArrayLike],
    pred_per_context: list[ArrayLike],
    strata: ArrayLike | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> tuple[float | None, float | None]:
    """95% CI resampling whole contexts (within `strata`, e.g. positive / negative, when given)."""
    if not true_per_context:
        return None, None
    strata = np.zeros(len(true_per_context)) if strata is None else strata
    counts = resample_counts(strata, n_resamples, seed)
    return percentile_interval(pooled_pearson_replicates(true_per_context, pred_per_context, counts))
