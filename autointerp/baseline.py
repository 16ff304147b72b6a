"""The non-LLM baseline beside an LLM label: the baseline explainer's label (`explain.explain_baseline`,
counting tokens on the train split) scored by the embedding scorer on the same test split, so that a reader
sees at once when the LLM did worse than counting tokens. No LLM call; the labeling job computes it where it runs
the embedding scorer, whose window embeddings it shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autointerp import ranking
from autointerp.bench.report import mean_with_ci, win_rate
from autointerp.errors import AutointerpError
from autointerp.explain import explain_baseline
from autointerp.records import FeatureExamples, Score
from autointerp.scoring import make_scorer
from autointerp.scoring.embedding import EmbeddingScorer
from autointerp.stage_clock import staged

SCORER = "embedding"  # no LLM: cheap, and the same number for the LLM label and the baseline label


@dataclass
class BaselineLabel:
    label: str | None
    method: str
    score: Score | None = None  # the embedding scorer's headline on the test split
    error: str | None = None

    def to_details(self) -> dict[str, Any]:
        """As stored in the LLM label's details["baseline"]."""
        return {"label": self.label, "method": self.method, "error": self.error, "score": self.score.to_dict() if self.score else None}

    @classmethod
    def from_details(cls, data: dict[str, Any] | None) -> BaselineLabel | None:
        if not data:
            return None
        score = Score.from_dict(data["score"]) if data.get("score") else None
        return cls(data.get("label"), data.get("method", ""), score, data.get("error"))


@staged("baseline")
async def score_baseline(
    examples: FeatureExamples, scorer_options: dict[str, Any] | None = None, *, scorer: EmbeddingScorer | None = None
) -> BaselineLabel:
    """The baseline label of a feature and its embedding score on the test split (an error is kept, not raised).

    Pass the job's own embedding `scorer` for this feature to share its window embeddings (one MiniLM pass
    over the test windows for both labels) instead of a new scorer with `scorer_options`."""
    try:
        explanation = explain_baseline(examples)
    except AutointerpError as exc:
        return BaselineLabel(None, "token log-odds, train split", error=str(exc))
    method = explanation.details.get("method", "")
    scorer = scorer or make_scorer(SCORER, None, **(scorer_options or {}))
    scores = await scorer.score(explanation, examples, split="test", subsets=("all",))
    return BaselineLabel(explanation.label, method, ranking.headline(scores, SCORER, reliable_only=False))


def llm_vs_baseline(pairs: list[tuple[Score | None, Score | None]]) -> dict[str, Any]:
    """Paired over features, (LLM label's embedding headline, baseline's): how often the LLM label scores higher
    (ties half, Wilson 95% CI) and the mean difference (bootstrap 95% CI); features missing either are left out."""
    llm = [a.value if a else None for a, _ in pairs]
    base = [b.value if b else None for _, b in pairs]
    diffs = [x - y for x, y in zip(llm, base) if x is not None and y is not None]
    return {"wins": win_rate(llm, base), "mean_difference": mean_with_ci(diffs)}
