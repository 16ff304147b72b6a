"""Scorers: objects with one method, `async score(explanation, examples, split="test") -> list[Score]`.

Build one with `make_scorer(name, llm, **opts)`. LLM scorers record their calls under their own stage name
("simulation", "detection", "fuzzing") so the ledger splits cost by stage.
"""

from __future__ import annotations

from typing import Any, Protocol

from autointerp.errors import AutointerpError
from autointerp.llm.base import LLM
from autointerp.records import Explanation, FeatureExamples, Score
from autointerp.scoring.detection import DetectionScorer
from autointerp.scoring.embedding import EmbeddingScorer
from autointerp.scoring.fuzzing import FuzzingScorer
from autointerp.scoring.simulation import SimulationScorer


class Scorer(Protocol):
    name: str

    async def score(self, explanation: Explanation, examples: FeatureExamples, split: str = "test") -> list[Score]: ...


SCORERS: dict[str, type] = {
    "simulation": SimulationScorer,
    "detection": DetectionScorer,
    "fuzzing": FuzzingScorer,
    "embedding": EmbeddingScorer,
}
NEEDS_LLM = {"simulation", "detection", "fuzzing"}


def make_scorer(name: str, llm: LLM | None = None, **opts: Any) -> Scorer:
    if name not in SCORERS:
        raise AutointerpError(f"unknown scorer {name!r}; choose from {', '.join(SCORERS)}")
    if name in NEEDS_LLM and llm is None:
        raise AutointerpError(f"the {name} scorer needs an LLM: give a `simulator` model")
    try:
        return SCORERS[name](llm, **opts)
    except TypeError as exc:
        raise AutointerpError(f"bad option for the {name} scorer: {exc}") from None
