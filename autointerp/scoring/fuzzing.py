"""Fuzzing: does the LLM tell whether the highlighted tokens of an excerpt are the ones the label describes?

Two ways to build the items (`decoys`, a scorer option):
- "misplaced" (default): each test positive shown twice, once with its truly activating tokens marked and
  once with as many of its non-activating tokens marked; the two items of a context stay a pair in the
  bootstrap.
- "non_activating" (delphi's default): test positives with their activating tokens marked against test
  negatives (random and hard) with randomly chosen tokens marked; reported for all negatives and for each
  kind separately.
"""

from __future__ import annotations

import numpy as np
from pydantic import NonNegativeInt, PositiveInt

from autointerp import render
from autointerp.errors import AutointerpError
from autointerp.llm.base import LLM
from autointerp.records import Example, Explanation, FeatureExamples, Score
from autointerp.scoring import metrics
from autointerp.scoring.common import NEGATIVE_SUBSETS, group_of, item_scores, rng_for, scoring_split
from autointerp.scoring.items import BINARY_METRICS
from autointerp.scoring.judge import JudgeItem, judge

DECOYS = ("misplaced", "non_activating")


class FuzzingScorer:
    name = "fuzzing"
    stage = "fuzzing"

    def __init__(
        self,
        llm: LLM,
        *,
        decoys: str = "misplaced",
        batch_size: PositiveInt = 5,
        before: NonNegativeInt = 20,
        after: NonNegativeInt = 11,
        highlight_fraction: float = 0.3,
        concurrency: PositiveInt = 4,
        n_resamples: PositiveInt = metrics.N_RESAMPLES,
        seed: NonNegativeInt = metrics.SEED,
    ):
        if decoys not in DECOYS:
            raise AutointerpError(f"unknown fuzzing decoys {decoys!r}; choose one of {', '.join(DECOYS)}")
        self.llm = llm
        self.decoys = decoys
        self.batch_size = batch_size
        self.before, self.after = before, after
        self.highlight_fraction = highlight_fraction
        self.concurrency = concurrency
        self.n_resamples, self.seed = n_resamples, seed

    async def score(self, explanation: Explanation, examples: FeatureExamples, split: str = "test") -> list[Score]:
        chosen = scoring_split(examples, split)
        rng = rng_for(examples, split, self.seed, self.name)
        items: list[JudgeItem] = []
        n_without_decoy = 0
        n_marked = []
        for e in chosen.positives:
            tokens, acts = render.window(e, render.max_position(e), self.before, self.after)
            marks = render.activation_marks(acts, self.highlight_fraction)
            n_marked.append(sum(marks))
            items.append(JudgeItem(render.highlighted_text(tokens, marks), 1, "positives", e))
            if self.decoys != "misplaced":
                continue
            silent = [i for i, a in enumerate(acts) if a <= 0]
            if not silent:
                n_without_decoy += 1
                continue
            items.append(JudgeItem(render.highlighted_text(tokens, _pick(rng, silent, sum(marks), len(tokens))), 0, "misplaced", e))
        if self.decoys == "non_activating":
            items += [self._non_activating(e, examples.characteristic_tokens, n_marked, rng) for e in chosen.all() if not e.is_positive]
        judged, details = await judge(
            self.llm,
            "fuzzing",
            explanation.label,
            items,
            batch_size=self.batch_size,
            rng=rng,
            stage=self.stage,
            concurrency=self.concurrency,
        )
        details.update(window=self.before + 1 + self.after, highlight_fraction=self.highlight_fraction, decoys=self.decoys)
        if self.decoys == "misplaced":
            details["n_positives_without_decoy"] = n_without_decoy
        return item_scores(
            self.name,
            judged,
            ("all",) if self.decoys == "misplaced" else ("all", *NEGATIVE_SUBSETS),
            BINARY_METRICS,
            split=split,
            scorer_model=self.llm.name,
            details=details,
            n_resamples=self.n_resamples,
            seed=self.seed,
        )

    def _non_activating(self, e: Example, characteristic: list[str], n_marked: list[int], rng: np.random.Generator) -> JudgeItem:
        """A negative context with as many random tokens marked as a randomly chosen positive has."""
        tokens, _ = render.window(e, render.window_center(e, characteristic, rng), self.before, self.after)
        k = int(rng.choice(n_marked)) if n_marked else 1
        marks = _pick(rng, list(range(len(tokens))), k, len(tokens))
        return JudgeItem(render.highlighted_text(tokens, marks), 0, group_of(e), e)


def _pick(rng: np.random.Generator, candidates: list[int], k: int, n: int) -> list[bool]:
    picked = set(rng.choice(candidates, size=min(max(1, k), len(candidates)), replace=False).tolist())
    return [i in picked for i in range(n)]
