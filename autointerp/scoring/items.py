"""Metrics from per-item judgements: the one place that turns judged items into a value and a CI, used when
scoring and again to recompute a metric from the store (`autointerp.judgements`) without calling the model.

Subsets pick items by group: `all`; `positives`; a negative subset (`random_negatives`, `hard_negatives`):
positives plus that kind of negative; `top_and_random`: the top activation quantile's positives plus random
negatives, the records Bills et al. 2023 score their headline on; `control`: the items of a control label
(groups `control_*`, which `all` leaves out: the output scorer's shuffled label on the same continuations). A quantile breakdown keeps the positives
(and their fuzzing decoys) of one activation quantile and every negative of the subset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autointerp.records import ItemJudgement
from autointerp.scoring import metrics

BINARY_METRICS = ("balanced_accuracy", "f1", "auroc")
PAIRED_METRICS = ("delta_cosine", "win_rate")
TOP = "top"
CONTROL_PREFIX = "control_"


@dataclass
class MetricValue:
    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int  # items that entered the metric (answered ones; for simulation, contexts with a prediction)


def _key(item: ItemJudgement) -> str | None:
    """The activation quantile the item's context came from ("0" lowest ..., "top" for top-activating
    positives); None for negatives."""
    if item.kind == "top":
        return TOP
    return str(item.quantile) if item.kind == "quantile" and item.quantile is not None else None


def quantile_keys(items: Sequence[ItemJudgement]) -> list[str]:
    """The quantiles present among the items, lowest first, "top" last."""
    keys = {_key(i) for i in items} - {None}
    return sorted(keys, key=lambda k: (k == TOP, int(k) if k != TOP else 0))


def subset_mask(items: Sequence[ItemJudgement], subset: str) -> np.ndarray:
    groups = np.array([i.group for i in items], dtype=object)
    control = np.array([i.group.startswith(CONTROL_PREFIX) for i in items], dtype=bool)
    if subset == "all":
        return ~control
    if subset == "control":
        return control
    if subset == "positives":
        return groups == "positives"
    if subset == "top_and_random":
        keys = quantile_keys(items)
        top = keys[-1] if keys else None
        return np.array([(i.group == "positives" and _key(i) == top) or i.group == "random_negatives" for i in items], dtype=bool)
    return (groups == "positives") | (groups == subset)


def quantile_mask(items: Sequence[ItemJudgement], key: str) -> np.ndarray:
    return np.array([_key(i) in (None, key) for i in items], dtype=bool)


def compute(
    metric: str, items: Sequence[ItemJudgement], n_resamples: int = metrics.N_RESAMPLES, seed: int = metrics.SEED
) -> MetricValue:
    """A metric over `items` with its bootstrap 95% CI. Binary metrics resample contexts (a fuzzing context's
    true and decoy highlighting stay together); ev_correlation resamples contexts within groups."""
    if metric == "ev_correlation":
        return _ev_correlation(items, n_resamples, seed)
    if metric in PAIRED_METRICS:
        return _paired(metric, items, n_resamples, seed)
    if metric == "auroc":
        used = [i for i in items if i.probability is not None and i.truth is not None]
        y, s = np.array([i.truth for i in used], dtype=int), np.array([i.probability for i in used], dtype=float)
        value, ci = metrics.auroc(y, s), metrics.bootstrap_auroc
    elif metric in ("balanced_accuracy", "f1"):
        used = [i for i in items if i.prediction is not None and i.truth is not None]
        y, s = np.array([i.truth for i in used], dtype=int), np.array([i.prediction for i in used], dtype=int)
        value = metrics.balanced_accuracy(y, s) if metric == "balanced_accuracy" else metrics.f1(y, s)
        ci = metrics.bootstrap_balanced_accuracy if metric == "balanced_accuracy" else metrics.bootstrap_f1
    else:
        raise ValueError(f"unknown metric {metric!r}")
    low, high = ci(y, s, n_resamples, seed, clusters=[i.context_id for i in used]) if value is not None else (None, None)
    return MetricValue(value, low, high, len(used))


def _ev_correlation(items: Sequence[ItemJudgement], n_resamples: int, seed: int) -> MetricValue:
    true, pred, groups = [], [], []
    for item in items:
        preds = item.predicted_activations or []
        ok = np.array([p is not None for p in preds], dtype=bool)
        if not ok.any():
            continue
        true.append(np.asarray(item.true_activations, dtype=float)[ok])
        pred.append(np.array([p for p in preds if p is not None], dtype=float))
        groups.append(item.group)
    value = metrics.pooled_pearson(true, pred)
    low, high = (
        metrics.bootstrap_pooled_pearson(true, pred, np.array(groups), n_resamples, seed) if value is not None else (None, None)
    )
    return MetricValue(value, low, high, len(true))


def paired_differences(items: Sequence[ItemJudgement]) -> dict[int, float]:
    """Per context: the truth-1 item's probability minus the truth-0 item's (the output scorer's steered minus
    unsteered cosine with the label, per prompt); contexts missing either side are left out."""
    sides: dict[int, dict[int, float]] = {}
    for i in items:
        if i.probability is not None and i.truth in (0, 1):
            sides.setdefault(i.context_id, {})[i.truth] = i.probability
    return {c: s[1] - s[0] for c, s in sides.items() if len(s) == 2}


def _paired(metric: str, items: Sequence[ItemJudgement], n_resamples: int, seed: int) -> MetricValue:
    """delta_cosine: the mean paired difference; win_rate: the share of pairs where truth 1 scores higher (ties
    half). The CI resamples pairs."""
    diffs = np.array(list(paired_differences(items).values()), dtype=float)
    if not len(diffs):
        return MetricValue(None, None, None, 0)
    values = diffs if metric == "delta_cosine" else (diffs > 0) + 0.5 * (diffs == 0)
    low, high = metrics.bootstrap_mean(values, n_resamples, seed)
    return MetricValue(float(values.mean()), low, high, len(values))


def by_quantile(
    metric: str, items: Sequence[ItemJudgement], n_resamples: int = metrics.N_RESAMPLES, seed: int = metrics.SEED
) -> dict[str, dict[str, float | int | None]]:
    """The metric per activation quantile of the positives (each against all the negatives in `items`)."""
    out = {}
    for key in quantile_keys(items):
        mask = quantile_mask(items, key)
        got = compute(metric, [i for i, m in zip(items, mask) if m], n_resamples, seed)
        out[key] = {"value": got.value, "ci_low": got.ci_low, "ci_high": got.ci_high, "n": got.n}
    return out
