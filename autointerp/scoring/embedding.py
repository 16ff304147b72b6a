"""Embedding scorer (no LLM): does the label sit closer, in MiniLM space, to activating windows than to others?"""

from __future__ import annotations

import numpy as np
from pydantic import NonNegativeInt, PositiveInt

from autointerp import render
from autointerp.embeddings import EMBEDDING_MODEL, embed_texts_async
from autointerp.llm.base import LLM
from autointerp.records import Example, Explanation, FeatureExamples, Score
from autointerp.scoring import metrics
from autointerp.scoring.common import NEGATIVE_SUBSETS, item_scores, judged_item, rng_for, scoring_split

SUBSETS = ("all", *NEGATIVE_SUBSETS)


class EmbeddingScorer:
    """AUROC of cosine(label, ~13-token window) for positives against negatives: all, random, hard.

    Windows centre on the max-activating token (positives), a characteristic token (hard negatives) or a
    random place (random negatives); measured to carry the signal better than whole contexts. Window
    embeddings are cached on the scorer, so scoring several candidate labels embeds the contexts once.
    """

    name = "embedding"

    def __init__(
        self,
        llm: LLM | None = None,
        *,
        before: NonNegativeInt = 6,
        after: NonNegativeInt = 6,
        n_resamples: PositiveInt = metrics.N_RESAMPLES,
        seed: NonNegativeInt = metrics.SEED,
    ):
        self.before, self.after = before, after
        self.n_resamples, self.seed = n_resamples, seed
        self._cache: dict[str, np.ndarray] = {}

    async def _embed(self, texts: list[str]) -> np.ndarray:
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            vectors = await embed_texts_async(missing)
            self._cache.update(zip(missing, vectors))
        return np.stack([self._cache[t] for t in texts])

    async def cosines(self, label: str, examples: FeatureExamples, split: str = "test") -> tuple[list[Example], np.ndarray]:
        """The split's contexts and the cosine of each one's window with the label (what score() ranks)."""
        chosen = scoring_split(examples, split)
        rng = rng_for(examples, split, self.seed, self.name)
        contexts = chosen.all()
        texts = []
        for e in contexts:
            tokens, _ = render.window(
                e, render.window_center(e, examples.characteristic_tokens, rng), self.before, self.after
            )
            texts.append("".join(render.display_tokens(tokens)).strip())
        label_vec = (await embed_texts_async([label]))[0]
        return contexts, (await self._embed(texts)) @ label_vec

    async def score(
        self, explanation: Explanation, examples: FeatureExamples, split: str = "test", subsets: tuple[str, ...] = SUBSETS
    ) -> list[Score]:
        """Scores on `subsets` (all of them unless a caller needs fewer, as the baseline needs only "all")."""
        contexts, cosines = await self.cosines(explanation.label, examples, split)
        judged = [
            judged_item(self.name, k, e, truth=int(e.is_positive), probability=float(cosine))
            for k, (e, cosine) in enumerate(zip(contexts, cosines))
        ]
        return item_scores(
            self.name,
            judged,
            subsets,
            ("auroc",),
            split=split,
            scorer_model=EMBEDDING_MODEL,
            details={"window": self.before + 1 + self.after, "embedding_model": EMBEDDING_MODEL},
            n_resamples=self.n_resamples,
            seed=self.seed,
        )
