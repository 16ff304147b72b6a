"""The labeling job's stages, as plain functions of plain data: sample -> explain (best of k on valid) -> score
-> write. A driver decides only when and where each runs: the streaming job (`pipeline`) runs a feature through
all of them while other features wait on I/O; the batch job (`batch_job`) runs one stage for every feature and
sends its LLM requests as provider batches. Per-feature state between stages lives in `feature_jobs`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from autointerp.baseline import BaselineLabel, score_baseline
from autointerp.catalog import NewLabel, write_labels
from autointerp.config import JobConfig
from autointerp.embeddings import embed_texts_async
from autointerp.errors import AutointerpError
from autointerp.explain import ExplanationParseError, best_of_k
from autointerp.llm import LLMCallError
from autointerp.llm.errors import TRANSIENT
from autointerp.records import Explanation, FeatureExamples, Score
from autointerp.sampling import TooFewActivations, sample_many
from autointerp.scoring import NEEDS_CONTEXT, Scorer, any_needs_llm, make_scorer, needs_llm
from autointerp.stage_clock import staged
from autointerp.store.activations import SourceInfo
from autointerp.store.db import Store

# --- sample ----------------------------------------------------------------------------------------------


def sample_features(
    store: Store, job: JobConfig, source: SourceInfo, features: list[int], firing: set[int]
) -> Iterator[tuple[int, FeatureExamples | AutointerpError]]:
    """(feature, examples or why not), in order; within one store session (the connection stays open)."""
    cfg = job.sampling
    with contextlib.closing(sample_many(store, job.source, [f for f in features if f in firing], cfg)) as sampled:
        for feature in features:
            if feature in firing:
                yield next(sampled)
            else:
                yield feature, TooFewActivations(source.name, feature, 0, 0, cfg.min_active_contexts)


# --- explain, select -------------------------------------------------------------------------------------


@staged("explain")
async def explain(examples: FeatureExamples, llm: Any, job: JobConfig) -> Explanation:
    """k candidate labels, the best on the valid split kept (raises ExplanationParseError when none parses)."""
    explanation = await best_of_k(examples, llm, prompt=job.prompt, k=job.k, evidence=job.evidence)
    explanation.details["sampling_notes"] = examples.notes
    return explanation


# --- score -----------------------------------------------------------------------------------------------


def simulator_spec(job: JobConfig) -> str:
    return job.simulator or job.explainer


def model_specs(job: JobConfig) -> list[str]:
    """The models the job's stages ask."""
    needs_simulator = any_needs_llm(job.scorers, job.scorer_options)
    return list(dict.fromkeys([job.explainer, simulator_spec(job)] if needs_simulator else [job.explainer]))


def make_scorers(
    job: JobConfig, llm_for: Callable[[str], Any], context_for: Callable[[], Any] | None = None
) -> list[Scorer]:
    """Fresh scorers (per feature: scorers may cache per-context work that is no use for the next feature).

    `context_for()` gives the output scorer its OutputContext (subject model, directions); it is called only
    when the job has that scorer, so a job without it never loads the subject model."""
    scorers = []
    for name in job.scorers:
        opts = job.scorer_options.get(name, {})
        context = None
        if name in NEEDS_CONTEXT:
            if context_for is None:
                raise AutointerpError(f"the {name} scorer steers the subject model, which this driver does not load")
            context = context_for()
        scorers.append(make_scorer(name, llm_for(simulator_spec(job)) if needs_llm(name, opts) else None, context, **opts))
    return scorers


@staged("score")
async def score(
    explanation: Explanation, examples: FeatureExamples, scorers: list[Scorer], on_stage: Callable[[str], None] | None = None
) -> list[Score]:
    """Every scorer's scores on the test split, one scorer after the other."""
    scores: list[Score] = []
    for scorer in scorers:
        if on_stage:
            on_stage(f"score:{scorer.name}")
        scores += await scorer.score(explanation, examples, split="test")
    return scores


# --- explain + score, for one feature ----------------------------------------------------------------------


@dataclass
class StagesOutcome:
    """What the explain and score stages made of one feature's examples, as plain data that a driver stores
    (or that travels back from a Ray worker). A failure keeps where it happened and why, never the exception."""

    explanation: Explanation | None = None
    scores: list[Score] = field(default_factory=list)
    vector: Any = None  # the label's embedding
    baseline: BaselineLabel | None = None
    stage: str | None = None  # where a failure happened: explain | score:<scorer> | write
    error: str | None = None
    raw: str | None = None  # the model output that did not parse
    llm_kind: str | None = None  # LLMCallError.kind of a failed call
    rerun_may_help: bool = False


async def explain_and_score(
    examples: FeatureExamples,
    llm_for: Callable[[str], Any],
    job: JobConfig,
    on_stage: Callable[[str], None] | None = None,
    context_for: Callable[[], Any] | None = None,
    embed_label: bool = True,
) -> StagesOutcome:
    """Baseline, explain, score and the label's embedding for one feature; any failure is returned, not raised.
    `embed_label=False` leaves the embedding to the writer (`catalog.write_labels` embeds what comes without one,
    and a driver that writes many labels at once embeds them in one call)."""
    outcome = StagesOutcome(stage="explain")

    def entering(name: str) -> None:
        outcome.stage = name
        if on_stage:
            on_stage(name)

    try:
        scorers = make_scorers(job, llm_for, context_for)
        embedding = next((s for s in scorers if s.name == "embedding"), None)
        if embedding is not None:  # the baseline is an embedding score: only beside the job's own
            outcome.baseline = await score_baseline(examples, scorer=embedding)
        entering("explain")
        explanation = await explain(examples, llm_for(job.explainer), job)
        if outcome.baseline is not None:
            explanation.details["baseline"] = outcome.baseline.to_details()
        outcome.scores = await score(explanation, examples, scorers, entering)
        if embed_label:
            entering("write")
            outcome.vector = await label_vector(explanation.label)
    except ExplanationParseError as exc:
        outcome.raw = exc.raw if isinstance(exc.raw, str) else json.dumps(exc.raw)
        return _failure(outcome, exc)
    except Exception as exc:  # noqa: BLE001 - one feature's failure never stops the job (the driver decides)
        return _failure(outcome, exc)
    outcome.explanation, outcome.stage = explanation, None
    return outcome


def _failure(outcome: StagesOutcome, exc: BaseException) -> StagesOutcome:
    outcome.scores, outcome.error, outcome.rerun_may_help = [], describe_error(exc), rerun_may_help(exc)
    if isinstance(exc, LLMCallError):
        outcome.llm_kind = exc.kind
    return outcome


def describe_error(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, AutointerpError) else f"{type(exc).__name__}: {exc}"


def rerun_may_help(exc: BaseException) -> bool:
    """False for failures a rerun repeats: an answer that does not parse comes back from the ledger unchanged,
    and a sampling or request error follows from the data and the configuration."""
    if isinstance(exc, LLMCallError):
        return exc.kind in TRANSIENT
    return not isinstance(exc, AutointerpError)


# --- write -----------------------------------------------------------------------------------------------


async def label_vector(label: str) -> Any:
    """The label's embedding for semantic search, off the event loop (batched with other features' labels)."""
    return (await embed_texts_async([label]))[0]


def new_label(
    explanation: Explanation, examples: FeatureExamples, scores: list[Score], vector: Any, *, run_id: str, config_hash: str
) -> NewLabel:
    """The label, its scores and provenance, as `catalog.write_labels` stores them (vector None: embedded there)."""
    return NewLabel(explanation, scores, run_id, config_hash, examples.sampling_config, examples.seed, vector)


def write(
    con,
    explanation: Explanation,
    examples: FeatureExamples,
    scores: list[Score],
    vector: Any,
    *,
    run_id: str,
    config_hash: str,
) -> int:
    """The label, its scores and provenance; returns the explanation id."""
    return write_labels(con, [new_label(explanation, examples, scores, vector, run_id=run_id, config_hash=config_hash)])[0]

