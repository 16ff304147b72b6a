"""Pieces every scorer shares: choosing the split, seeding, and Score rows for binary judgements."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from autointerp.errors import AutointerpError
from autointerp.records import Example, FeatureExamples, Score, Split
from autointerp.scoring import metrics

T = TypeVar("T")
SCORABLE_SPLITS = ("test", "valid")
NEGATIVE_SUBSETS = ("random_negatives", "hard_negatives")


def scoring_split(examples: FeatureExamples, split: str) -> Split:
    """The test split for reported scores, valid for choosing candidates; never train (the explainer saw it)."""
    if split not in SCORABLE_SPLITS:
        raise AutointerpError(f"cannot score on split {split!r}: use 'test' (reported scores) or 'valid' (selection)")
    chosen = getattr(examples, split)
    if not chosen.positives:
        raise AutointerpError(f"feature {examples.feature} has no {split} positives to score; re-sample it with more")
    return chosen


def rng_for(examples: FeatureExamples, split: str, seed: int, purpose: str) -> np.random.Generator:
    """A generator fixed by (seed, feature, split, purpose): the same run gives the same batches and windows."""
    return np.random.default_rng([seed, examples.feature, SCORABLE_SPLITS.index(split), sum(map(ord, purpose))])


def group_of(example: Example) -> str:
    if example.is_positive:
        return "positives"
    return "random_negatives" if example.kind == "random_negative" else "hard_negatives"


def subset_mask(groups: Sequence[str], subset: str) -> np.ndarray:
    """`all`: everything; a negative subset: positives plus that kind of negative."""
    groups = np.asarray(groups)
    if subset == "all":
        return np.ones(len(groups), dtype=bool)
    return (groups == "positives") | (groups == subset)


async def gather_limited(factories: Sequence[Callable[[], Awaitable[T]]], concurrency: int) -> list[T]:
    semaphore = asyncio.Semaphore(max(1, concurrency))

    async def run(factory: Callable[[], Awaitable[T]]) -> T:
        async with semaphore:
            return await factory()

    return await asyncio.gather(*(run(f) for f in factories))


@dataclass
class Judgements:
    """Binary items (truth 1/0) with the model's answers: prediction None = unparsed; probability None = no logprobs."""

    truth: list[int]
    groups: list[str]
    predictions: list[int | None]
    probabilities: list[float | None] = field(default_factory=list)


def binary_scores(
    scorer: str,
    judgements: Judgements,
    subsets: Sequence[str],
    *,
    split: str,
    scorer_model: str | None,
    details: dict[str, Any],
    n_resamples: int,
    seed: int,
) -> list[Score]:
    """Balanced accuracy (and AUROC where probabilities exist) per subset; unparsed items leave n and are counted."""
    truth = np.asarray(judgements.truth, dtype=int)
    preds = judgements.predictions
    probs = judgements.probabilities or [None] * len(preds)
    scores = []
    for subset in subsets:
        mask = subset_mask(judgements.groups, subset)
        parsed = mask & np.array([p is not None for p in preds], dtype=bool)
        y = truth[parsed]
        yhat = np.array([p for p, ok in zip(preds, parsed) if ok], dtype=int)
        low, high = metrics.bootstrap_balanced_accuracy(y, yhat, n_resamples, seed) if len(y) else (None, None)
        scores.append(
            Score(
                scorer=scorer,
                metric="balanced_accuracy",
                value=metrics.balanced_accuracy(y, yhat) if len(y) else None,
                ci_low=low,
                ci_high=high,
                n=int(parsed.sum()),
                subset=subset,
                split=split,
                scorer_model=scorer_model,
                details=row_details(details, truth, mask, parsed, subset, split),
            )
        )
        has_prob = mask & np.array([p is not None for p in probs], dtype=bool)
        if has_prob.any():
            values = np.array([p if p is not None else np.nan for p in probs], dtype=float)
            scores.append(
                auroc_score(
                    scorer,
                    truth,
                    values,
                    has_prob,
                    subset,
                    split=split,
                    scorer_model=scorer_model,
                    details=row_details(details, truth, mask, has_prob, subset, split),
                    n_resamples=n_resamples,
                    seed=seed,
                )
            )
    return scores


def auroc_score(
    scorer: str,
    truth: np.ndarray,
    values: np.ndarray,
    mask: np.ndarray,
    subset: str,
    *,
    split: str,
    scorer_model: str | None,
    details: dict[str, Any],
    n_resamples: int,
    seed: int,
) -> Score:
    """AUROC of `values` separating truth 1 from 0 over the masked items, with a bootstrap CI."""
    y, s = truth[mask], values[mask]
    low, high = metrics.bootstrap_auroc(y, s, n_resamples, seed) if len(y) else (None, None)
    return Score(
        scorer=scorer,
        metric="auroc",
        value=metrics.auroc(y, s) if len(y) else None,
        ci_low=low,
        ci_high=high,
        n=int(mask.sum()),
        subset=subset,
        split=split,
        scorer_model=scorer_model,
        details=details,
    )


def row_details(
    details: dict[str, Any], truth: np.ndarray, mask: np.ndarray, used: np.ndarray, subset: str, split: str
) -> dict[str, Any]:
    row = {
        **details,
        "n_unparsed": int(mask.sum() - used.sum()),
        "n_positive": int((truth[used] == 1).sum()),
        "n_negative": int((truth[used] == 0).sum()),
    }
    if not (mask & (truth == 0)).any():
        row["note"] = f"no {subset.replace('_', ' ') if subset != 'all' else 'negatives'} in the {split} split"
    elif not (row["n_positive"] and row["n_negative"]):
        row["note"] = "the parsed answers cover only one class: metric undefined"
    return row
