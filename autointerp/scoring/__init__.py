"""Scorers: objects with one method, `async score(explanation, examples, split="test") -> list[Score]`.

Build one with `make_scorer(name, llm, context, **opts)`. LLM scorers record their calls under their own stage name
("simulation", "detection", "fuzzing", "output") so the ledger splits cost by stage. The output scorer steers the
subject model: it needs an `OutputContext` (`autointerp.scoring.output.output_context`), and an LLM only with
its `judge` option.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from autointerp.errors import AutointerpError
from autointerp.llm.base import LLM
from autointerp.records import Explanation, FeatureExamples, Score
from autointerp.scoring.detection import DetectionScorer
from autointerp.scoring.embedding import EmbeddingScorer
from autointerp.scoring.fuzzing import FuzzingScorer
from autointerp.scoring.output import OutputContext, OutputScorer
from autointerp.scoring.simulation import SimulationScorer


class Scorer(Protocol):
    name: str

    async def score(self, explanation: Explanation, examples: FeatureExamples, split: str = "test") -> list[Score]: ...


SCORERS: dict[str, type] = {
    "simulation": SimulationScorer,
    "detection": DetectionScorer,
    "fuzzing": FuzzingScorer,
    "embedding": EmbeddingScorer,
    "output": OutputScorer,
}
NEEDS_LLM = {"simulation", "detection", "fuzzing"}
NEEDS_CONTEXT = {"output"}  # steer the subject model


def needs_llm(name: str, opts: dict[str, Any]) -> bool:
    """Whether scorer `name` with options `opts` calls an LLM (the output scorer only as a judge)."""
    return name in NEEDS_LLM or (name == "output" and bool(opts.get("judge")))


def any_needs_llm(scorers: Sequence[str], options: dict[str, dict[str, Any]]) -> bool:
    return any(needs_llm(name, options.get(name, {})) for name in scorers)


def make_scorer(name: str, llm: LLM | None = None, context: OutputContext | None = None, **opts: Any) -> Scorer:
    if name not in SCORERS:
        raise AutointerpError(f"unknown scorer {name!r}; choose from {', '.join(SCORERS)}")
    if name in NEEDS_LLM and llm is None:
        raise AutointerpError(f"the {name} scorer needs an LLM: give a `simulator` model")
    try:
        if name in NEEDS_CONTEXT:
            return SCORERS[name](llm, context, **opts)
        return SCORERS[name](llm, **opts)
    except TypeError as exc:
        raise AutointerpError(f"bad option for the {name} scorer: {exc}") from None
