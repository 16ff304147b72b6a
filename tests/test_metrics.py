"""Metrics against hand-computed values; bootstrap replicates against scikit-learn on materialised resamples."""

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from autointerp.scoring import metrics


def test_balanced_accuracy_by_hand():
    # recall of class 1: 2/3, recall of class 0: 1/2 -> (2/3 + 1/2) / 2 = 7/12
    assert metrics.balanced_accuracy([1, 1, 1, 0, 0], [1, 0, 1, 0, 1]) == pytest.approx(7 / 12)


def test_balanced_accuracy_needs_both_classes():
    assert metrics.balanced_accuracy([1, 1, 1], [1, 0, 1]) is None


def test_auroc_by_hand():
    # pairs (pos, neg): (.9,.5) right, (.9,.1) right, (.4,.5) wrong, (.4,.1) right -> 3/4
    assert metrics.auroc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1]) == pytest.approx(0.75)
    assert metrics.auroc([1, 0], [0.3, 0.3]) == pytest.approx(0.5)  # a tie counts half
    assert metrics.auroc([0, 0], [0.3, 0.4]) is None


def test_pearson_undefined_for_constant_input():
    assert metrics.pearson([1, 2, 3], [5, 5, 5]) is None
    assert metrics.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(np.corrcoef([1, 2, 3], [2, 4, 7])[0, 1])


def test_pooled_pearson_is_bills_ev_correlation():
    """Bills et al. 2023: correlation over all tokens of all contexts, flattened, written out by hand."""
    true = [[0.0, 0.0, 5.0], [0.0, 3.0], [1.0, 0.0, 0.0, 0.0]]
    pred = [[1.0, 0.0, 4.0], [0.0, 2.0], [0.0, 0.0, 1.0, 0.0]]
    x = [v for row in true for v in row]
    y = [v for row in pred for v in row]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    expected = cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    assert metrics.pooled_pearson(true, pred) == pytest.approx(expected)
    assert 0.9 < expected < 0.92  # strong but imperfect agreement on these hand arrays


def test_resample_counts_keep_strata_sizes():
    strata = np.array([0, 0, 0, 1, 1])
    counts = metrics.resample_counts(strata, n_resamples=50, seed=3)
    assert counts.shape == (50, 5)
    assert (counts[:, :3].sum(axis=1) == 3).all() and (counts[:, 3:].sum(axis=1) == 2).all()
    assert (metrics.resample_counts(strata, 50, seed=3) == counts).all()  # fixed seed, same resamples


def _materialise(counts_row, *arrays):
    return [np.repeat(np.asarray(a), counts_row, axis=0) for a in arrays]


def test_replicates_match_sklearn_on_materialised_resamples():
    rng = np.random.default_rng(1)
    y = np.array([1] * 12 + [0] * 9)
    score = np.round(rng.random(21) + 0.3 * y, 1)  # rounding makes ties
    pred = (score > 0.6).astype(int)
    counts = metrics.resample_counts(y, n_resamples=8, seed=5)
    auc = metrics.auroc_replicates(y, score, counts)
    bacc = metrics.balanced_accuracy_replicates(y, pred, counts)
    for b in range(len(counts)):
        yy, ss, pp = _materialise(counts[b], y, score, pred)
        assert auc[b] == pytest.approx(roc_auc_score(yy, ss))
        assert bacc[b] == pytest.approx(balanced_accuracy_score(yy, pp))


def test_pearson_replicates_match_flattened_resamples():
    rng = np.random.default_rng(2)
    true = [rng.random(rng.integers(3, 8)) for _ in range(10)]
    pred = [t + rng.normal(0, 0.5, len(t)) for t in true]
    counts = metrics.resample_counts(np.zeros(10), n_resamples=6, seed=0)
    reps = metrics.pooled_pearson_replicates(true, pred, counts)
    for b in range(len(counts)):
        tt = [t for t, c in zip(true, counts[b]) for _ in range(c)]
        pp = [p for p, c in zip(pred, counts[b]) for _ in range(c)]
        assert reps[b] == pytest.approx(metrics.pooled_pearson(tt, pp))


def test_pearson_replicates_nan_for_constant_predictions():
    counts = metrics.resample_counts(np.zeros(3), n_resamples=4, seed=0)
    reps = metrics.pooled_pearson_replicates([[0, 1], [2, 0], [1, 1]], [[3, 3], [3, 3], [3, 3]], counts)
    assert np.isnan(reps).all()
    assert metrics.bootstrap_pooled_pearson([[0, 1], [2, 0]], [[3, 3], [3, 3]]) == (None, None)


def _noisy_classifier(n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = np.array([1, 0] * (n // 2))
    return y, y + rng.normal(0, 0.8, len(y))


@pytest.mark.parametrize("n", [20, 400])
def test_ci_contains_point_estimate(n):
    y, s = _noisy_classifier(n, 0)
    low, high = metrics.bootstrap_auroc(y, s)
    assert low <= metrics.auroc(y, s) <= high
    pred = (s > 0.5).astype(int)
    low, high = metrics.bootstrap_balanced_accuracy(y, pred)
    assert low <= metrics.balanced_accuracy(y, pred) <= high


def test_ci_narrows_with_n():
    widths = []
    for n in (20, 80, 400):
        y, s = _noisy_classifier(n, 1)
        low, high = metrics.bootstrap_auroc(y, s)
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.12


def test_ci_is_reproducible():
    y, s = _noisy_classifier(40, 4)
    assert metrics.bootstrap_auroc(y, s, seed=7) == metrics.bootstrap_auroc(y, s, seed=7)
    assert metrics.bootstrap_auroc(y, s, seed=7) != metrics.bootstrap_auroc(y, s, seed=8)


def test_f1_matches_sklearn_and_needs_both_classes():
    y, pred = [1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 0, 0]
    # TP 2, FP 1, FN 1 -> 2*2 / (4 + 1 + 1)
    assert metrics.f1(y, pred) == pytest.approx(4 / 6) == pytest.approx(f1_score(y, pred))
    assert metrics.f1([1, 0], [0, 0]) == 0.0  # nothing predicted positive: F1 0, as sklearn with zero_division=0
    assert metrics.f1([1, 1], [1, 0]) is None


def test_f1_replicates_match_sklearn_on_materialised_resamples():
    rng = np.random.default_rng(3)
    y = np.array([1] * 10 + [0] * 7)
    pred = (rng.random(17) + 0.3 * y > 0.6).astype(int)
    counts = metrics.resample_counts(y, n_resamples=10, seed=2)
    reps = metrics.f1_replicates(y, pred, counts)
    for b in range(len(counts)):
        yy, pp = _materialise(counts[b], y, pred)
        assert reps[b] == pytest.approx(f1_score(yy, pp, zero_division=0.0))
    low, high = metrics.bootstrap_f1(y, pred)
    assert low <= metrics.f1(y, pred) <= high


def test_cluster_resampling_keeps_a_contexts_items_together():
    """Fuzzing: the true and the decoy highlighting of one context are drawn together, never apart."""
    contexts = np.array([10, 10, 11, 11, 12, 12, 13, 13])
    truth = np.array([1, 0] * 4)
    counts = metrics.resample_counts(truth, n_resamples=200, seed=1, clusters=contexts)
    assert (counts[:, 0::2] == counts[:, 1::2]).all()
    assert (counts.sum(axis=1) == 8).all() and counts[:, 0].std() > 0
    # clusters of one class keep the class strata: every resample keeps 2 positives and 3 negatives
    single = metrics.resample_counts([1, 1, 0, 0, 0], n_resamples=50, seed=0, clusters=[1, 2, 3, 4, 5])
    assert (single[:, :2].sum(axis=1) == 2).all() and (single[:, 2:].sum(axis=1) == 3).all()
    pred = np.array([1, 0, 1, 1, 0, 0, 1, 0])
    reps = metrics.balanced_accuracy_replicates(truth, pred, counts[:20])
    for b in range(20):
        yy, pp = _materialise(counts[b], truth, pred)
        assert reps[b] == pytest.approx(balanced_accuracy_score(yy, pp))


@pytest.mark.parametrize("seed", range(40))
def test_point_estimates_equal_sklearn_on_random_inputs_with_ties(seed):
    """The numpy metrics against scikit-learn (the reference): sizes from 2, unbalanced classes, many ties."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    y = rng.integers(0, 2, n)
    y[rng.integers(n)] = 1 - y[0] if n > 1 else y[0]  # usually both classes; sometimes still one
    score = np.round(rng.random(n) + 0.4 * y, int(rng.integers(0, 3)))  # 0-2 decimals: ties, often many
    pred = rng.integers(0, 2, n) if seed % 3 else np.zeros(n, dtype=int)
    if len(np.unique(y)) < 2:
        assert metrics.auroc(y, score) is None and metrics.balanced_accuracy(y, pred) is None and metrics.f1(y, pred) is None
        return
    assert metrics.auroc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert metrics.balanced_accuracy(y, pred) == balanced_accuracy_score(y, pred)
    assert metrics.f1(y, pred) == f1_score(y, pred, zero_division=0.0)


def test_auroc_refuses_nan_scores_as_sklearn_does():
    with pytest.raises(ValueError):
        metrics.auroc([1, 0, 1], [0.2, float("nan"), 0.4])


def test_resample_counts_are_drawn_once_and_shared_read_only():
    a = metrics.resample_counts([1, 1, 0, 0, 0], n_resamples=30, seed=4, clusters=[7, 7, 8, 9, 9])
    b = metrics.resample_counts(np.array([1, 1, 0, 0, 0]), n_resamples=30, seed=4, clusters=np.array([7, 7, 8, 9, 9]))
    assert a is b and not a.flags.writeable
    assert metrics.resample_counts([1, 1, 0, 0, 0], n_resamples=30, seed=5, clusters=[7, 7, 8, 9, 9]) is not a
    # object arrays are keyed by value: equal strings from different objects share, different ones do not
    s1 = metrics.resample_counts(np.array(["x" + "", "y"], dtype=object), 10, 0)
    assert metrics.resample_counts(np.array(["".join("x"), "y"], dtype=object), 10, 0) is s1
    assert metrics.resample_counts(np.array(["x", "z"], dtype=object), 10, 0) is not s1
