"""Detection: shown a label and shuffled test excerpts, does the LLM pick out the ones where the feature fires?"""

from __future__ import annotations

from pydantic import NonNegativeInt, PositiveInt

from autointerp import render
from autointerp.llm.base import LLM
from autointerp.records import Explanation, FeatureExamples, Score
from autointerp.scoring import metrics
from autointerp.scoring.common import NEGATIVE_SUBSETS, group_of, item_scores, rng_for, scoring_split
from autointerp.scoring.items import BINARY_METRICS
from autointerp.scoring.judge import JudgeItem, judge


class DetectionScorer:
    """Balanced accuracy and F1 (AUROC too when the LLM gives logprobs) for all contexts, and for positives against
    random and against hard negatives separately. Excerpts are windows: around the max-activating token for
    positives, a characteristic token for hard negatives, a random place for random negatives."""

    name = "detection"
    stage = "detection"

    def __init__(
        self,
        llm: LLM,
        *,
        batch_size: PositiveInt = 5,
        before: NonNegativeInt = 20,
        after: NonNegativeInt = 11,
        concurrency: PositiveInt = 4,
        n_resamples: PositiveInt = metrics.N_RESAMPLES,
        seed: NonNegativeInt = metrics.SEED,
    ):
        self.llm = llm
        self.batch_size = batch_size
        self.before, self.after = before, after
        self.concurrency = concurrency
        self.n_resamples, self.seed = n_resamples, seed

    async def score(self, explanation: Explanation, examples: FeatureExamples, split: str = "test") -> list[Score]:
        chosen = scoring_split(examples, split)
        rng = rng_for(examples, split, self.seed, self.name)
        items = []
        for e in chosen.all():
            center = render.window_center(e, examples.characteristic_tokens, rng)
            tokens, _ = render.window(e, center, self.before, self.after)
            items.append(JudgeItem(render.plain_text(tokens), int(e.is_positive), group_of(e), e))
        judged, details = await judge(
            self.llm,
            "detection",
            explanation.label,
            items,
            batch_size=self.batch_size,
            rng=rng,
            stage=self.stage,
            concurrency=self.concurrency,
        )
        details["window"] = self.before + 1 + self.after
        return item_scores(
            self.name,
            judged,
            ("all", *NEGATIVE_SUBSETS),
            BINARY_METRICS,
            split=split,
            scorer_model=self.llm.name,
            details=details,
            n_resamples=self.n_resamples,
            seed=self.seed,
        )
