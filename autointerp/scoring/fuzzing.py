"""Fuzzing: each test positive shown twice, once with its truly activating tokens marked and once with as many
random non-activating tokens marked; does the LLM tell which highlighting matches the label?"""

from __future__ import annotations

from pydantic import NonNegativeInt, PositiveInt

from autointerp import render
from autointerp.llm.base import LLM
from autointerp.records import Explanation, FeatureExamples, Score
from autointerp.scoring import metrics
from autointerp.scoring.common import binary_scores, rng_for, scoring_split
from autointerp.scoring.judge import JudgeItem, judge


class FuzzingScorer:
    name = "fuzzing"
    stage = "fuzzing"

    def __init__(
        self,
        llm: LLM,
        *,
        batch_size: PositiveInt = 5,
        before: NonNegativeInt = 20,
        after: NonNegativeInt = 11,
        highlight_fraction: float = 0.3,
        concurrency: PositiveInt = 4,
        n_resamples: PositiveInt = metrics.N_RESAMPLES,
        seed: NonNegativeInt = metrics.SEED,
    ):
        self.llm = llm
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
        for e in chosen.positives:
            tokens, acts = render.window(e, render.max_position(e), self.before, self.after)
            marks = render.activation_marks(acts, self.highlight_fraction)
            items.append(JudgeItem(render.highlighted_text(tokens, marks), 1, "correct", e.context_id))
            silent = [i for i, a in enumerate(acts) if a <= 0]
            if not silent:
                n_without_decoy += 1
                continue
            picked = set(rng.choice(silent, size=min(sum(marks), len(silent)), replace=False).tolist())
            decoy = [i in picked for i in range(len(tokens))]
            items.append(JudgeItem(render.highlighted_text(tokens, decoy), 0, "misplaced", e.context_id))
        judgements, details = await judge(
            self.llm,
            "fuzzing",
            explanation.label,
            items,
            batch_size=self.batch_size,
            rng=rng,
            stage=self.stage,
            concurrency=self.concurrency,
        )
        details.update(
            window=self.before + 1 + self.after,
            highlight_fraction=self.highlight_fraction,
            n_positives_without_decoy=n_without_decoy,
        )
        return binary_scores(
            self.name,
            judgements,
            ("all",),
            split=split,
            scorer_model=self.llm.name,
            details=details,
            n_resamples=self.n_resamples,
            seed=self.seed,
        )
