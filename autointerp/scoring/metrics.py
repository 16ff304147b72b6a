"""Metrics as plain functions of arrays, and bootstrap 95% confidence intervals that resample contexts.

Point estimates are numpy (no per-call input validation: a scoring job computes a hundred of them per
feature); tests check them against scikit-learn, the reference, on random inputs with ties. Bootstrap
replicates are computed exactly from resampling counts (a resample is a vector of how often each unit was
drawn), so a thousand replicates cost one matrix product; tests check each replicate against scikit-learn
on the materialised resample. Counts for the same strata and seed are drawn once and reused (`resample_counts`
is memoised), since every metric of a subset resamples the same contexts.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

N_RESAMPLES = 1000
CONFIDENCE = 0.95
SEED = 0

ArrayLike = np.ndarray | list


def _binary_truth(y_true: ArrayLike) -> np.ndarray | None:
    """y_true as ints, or None unless both classes are present."""
    y_true = np.asarray(y_true, dtype=int)
    if len(y_true) == 0 or y_true.min() == y_true.max():
        return None
    return y_true


def balanced_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float | None:
    """Mean of per-class recall; None unless both classes are present."""
    y_true = _binary_truth(y_true)
    if y_true is None:
        return None
    y_pred = np.asarray(y_pred, dtype=int)
    classes = np.unique(y_true)
    recalls = [np.count_nonzero(y_pred[y_true == c] == c) / np.count_nonzero(y_true == c) for c in classes]
    return float(np.mean(recalls))


def auroc(y_true: ArrayLike, y_score: ArrayLike) -> float | None:
    """Area under the ROC curve (the Mann-Whitney U over average ranks: ties count half); y_true in {0, 1};
    None unless both classes are present."""
    y_true = _binary_truth(y_true)
    if y_true is None:
        return None
    y_score = np.asarray(y_score, dtype=float)
    if not np.isfinite(y_score).all():
        raise ValueError("auroc: scores contain NaN or infinity")
    pos = y_true == 1
    n_pos = int(np.count_nonzero(pos))
    n_neg = len(y_true) - n_pos
    return float((_average_ranks(y_score)[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (scipy's rankdata(method="average"))."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


def f1(y_true: ArrayLike, y_pred: ArrayLike) -> float | None:
    """F1 of class 1 (delphi's headline for detection and fuzzing), 2TP / (2TP + FP + FN), 0 when nothing is
    predicted or true positive; None unless both classes are present."""
    y_true = _binary_truth(y_true)
    if y_true is None:
        return None
    y_pred = np.asarray(y_pred, dtype=int)
    tp = int(np.count_nonzero((y_true == 1) & (y_pred == 1)))
    denominator = int(np.count_nonzero(y_true == 1)) + int(np.count_nonzero(y_pred == 1))
    return 2 * tp / denominator if denominator else 0.0


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


_COUNTS_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()
_COUNTS_CACHE_SIZE = 32


def resample_counts(
    strata: ArrayLike, n_resamples: int = N_RESAMPLES, seed: int = SEED, clusters: ArrayLike | None = None
) -> np.ndarray:
    """[n_resamples, n_units] draw counts, resampling units with replacement within each stratum.

    With `clusters` (e.g. context ids), whole clusters are drawn and every unit of a drawn cluster comes with
    it: fuzzing's true and decoy highlighting of one context stay a pair. A cluster whose units lie in
    different strata is drawn in a stratum of its own kind ("mixed"). The result is read-only and shared by
    every caller asking for the same resamples.
    """
    strata = _hashable(np.asarray(strata))
    clusters = None if clusters is None else _hashable(np.asarray(clusters))
    cluster_key = None if clusters is None else (clusters.dtype.str, clusters.tobytes())
    key = (strata.dtype.str, strata.tobytes(), cluster_key, n_resamples, seed)
    counts = _COUNTS_CACHE.get(key)
    if counts is None:
        if clusters is None:
            counts = _draw(strata, n_resamples, seed)
        else:
            counts = _cluster_counts(strata, clusters, n_resamples, seed)
        counts.flags.writeable = False
        _COUNTS_CACHE[key] = counts
        if len(_COUNTS_CACHE) > _COUNTS_CACHE_SIZE:
            _COUNTS_CACHE.popitem(last=False)
    else:
        _COUNTS_CACHE.move_to_end(key)
    return counts


def _hashable(a: np.ndarray) -> np.ndarray:
    """Object arrays as strings, so that their bytes (the cache key) are their values, not pointers."""
    return a.astype(str) if a.dtype == object else a


def _draw(strata: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Uniform draws with replacement within each stratum, tallied per resample (one bincount per stratum)."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_resamples, len(strata)), dtype=np.int64)
    rows = np.arange(n_resamples)[:, None]
    for value in np.unique(strata):
        idx = np.flatnonzero(strata == value)
        k = len(idx)
        drawn = rng.integers(0, k, size=(n_resamples, k)) + k * rows
        counts[:, idx] = np.bincount(drawn.ravel(), minlength=n_resamples * k).reshape(n_resamples, k)
    return counts


def _cluster_counts(strata: np.ndarray, clusters: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    ids, first, inverse = np.unique(clusters, return_index=True, return_inverse=True)
    pure = np.array([(strata[inverse == c] == strata[first[c]]).all() for c in range(len(ids))])
    kinds = np.where(pure, strata[first].astype(str), "mixed")
    return _draw(kinds, n_resamples, seed)[:, inverse]


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
