"""Pieces every scorer shares: choosing the split, seeding, and Score rows from judged items."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from autointerp.errors import AutointerpError
from autointerp.records import Example, FeatureExamples, ItemJudgement, Score, Split
from autointerp.scoring import items
from autointerp.stage_clock import stage

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


def judged_item(scorer: str, index: int, example: Example, group: str | None = None, **answer: Any) -> ItemJudgement:
    """An item about `example` (its context, kind and quantile) with the scorer's answer."""
    return ItemJudgement(
        scorer=scorer,
        item=index,
        context_id=example.context_id,
        group=group or group_of(example),
        kind=example.kind,
        quantile=example.quantile,
        **answer,
    )


async def gather_limited(factories: Sequence[Callable[[], Awaitable[T]]], concurrency: int) -> list[T]:
    semaphore = asyncio.Semaphore(max(1, concurrency))

    async def run(factory: Callable[[], Awaitable[T]]) -> T:
        async with semaphore:
            return await factory()

    return await asyncio.gather(*(run(f) for f in factories))


def item_scores(
    scorer: str,
    judged: list[ItemJudgement],
    subsets: Sequence[str],
    metric_names: Sequence[str],
    *,
    split: str,
    scorer_model: str | None,
    details: dict[str, Any],
    n_resamples: int,
    seed: int,
) -> list[Score]:
    """One Score per subset and metric, with its breakdown by activation quantile in details["by_quantile"].

    Unanswered items leave n and are counted (n_unparsed); AUROC rows appear only where items carry a
    probability. Every row holds the same `items` list.
    """
    with stage("metrics"):
        scores = []
        for subset in subsets:
            mask = items.subset_mask(judged, subset)
            chosen = [j for j, m in zip(judged, mask) if m]
            for metric in metric_names:
                if metric == "auroc" and not any(j.probability is not None for j in chosen):
                    continue
                got = items.compute(metric, chosen, n_resamples, seed)
                row = {**details, **_counts(chosen, metric, subset, split)}
                row["by_quantile"] = items.by_quantile(metric, chosen, n_resamples, seed)
                scores.append(
                    Score(
                        scorer=scorer,
                        metric=metric,
                        value=got.value,
                        ci_low=got.ci_low,
                        ci_high=got.ci_high,
                        n=got.n,
                        subset=subset,
                        split=split,
                        scorer_model=scorer_model,
                        details=row,
                        items=judged,
                    )
                )
        return scores


def _counts(chosen: list[ItemJudgement], metric: str, subset: str, split: str) -> dict[str, Any]:
    answered = [j.probability is not None if metric == "auroc" else j.prediction is not None for j in chosen]
    used = [j for j, ok in zip(chosen, answered) if ok]
    row: dict[str, Any] = {
        "n_unparsed": len(chosen) - len(used),
        "n_positive": sum(j.truth == 1 for j in used),
        "n_negative": sum(j.truth == 0 for j in used),
    }
    if not any(j.truth == 0 for j in chosen):
        row["note"] = f"no {subset.replace('_', ' ') if subset != 'all' else 'negatives'} in the {split} split"
    elif not (row["n_positive"] and row["n_negative"]):
        row["note"] = "the parsed answers cover only one class: metric undefined"
    return row
