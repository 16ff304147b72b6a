"""The dry run of a labeling job: the requests, tokens and cost it would take, measured by rendering every
request for a few of its features, without calling any model or writing anything."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from autointerp.config import JobConfig
from autointerp.errors import AutointerpError
from autointerp.explain import STAGE as EXPLAIN_STAGE
from autointerp.explain import best_of_k
from autointerp.llm import PriceTable
from autointerp.llm.base import LLMResponse, Usage
from autointerp.llm.prices import BATCH_PROVIDERS
from autointerp.llm.limits import estimate_tokens
from autointerp.pipeline import (
    check_job,
    job_config_hash,
    job_features,
    make_job_llm,
    simulator_spec,
)
from autointerp.sampling import sample
from autointerp.scoring import NEEDS_LLM, make_scorer
from autointerp.store import jobs
from autointerp.store.activations import get_source
from autointerp.store.db import Store

CHAT_TOKENS_PER_MESSAGE = 4  # role markers and separators a chat template adds around each message


@dataclass
class StageEstimate:
    """Per labeled feature: requests and tokens of one stage (completion tokens as requested maxima)."""

    stage: str
    model: str
    requests: float
    prompt_tokens: float
    max_completion_tokens: float
    cost_usd: float | None  # at most; None when the price table does not know the model
    batch_cost_usd: float | None = None  # the same at batch prices; None also when the provider has no batch API


@dataclass
class CostEstimate:
    n_features: int  # still to label
    n_already_done: int
    n_sampled: int  # features whose prompts were rendered to measure the sizes
    stages: list[StageEstimate]
    prices_as_of: str

    @property
    def requests_per_feature(self) -> float:
        return sum(s.requests for s in self.stages)

    @property
    def cost_per_feature(self) -> float | None:
        costs = [s.cost_usd for s in self.stages]
        return None if any(c is None for c in costs) else sum(costs)

    @property
    def batch_cost_per_feature(self) -> float | None:
        costs = [s.batch_cost_usd for s in self.stages]
        return None if any(c is None for c in costs) else sum(costs)


class _DryRunLLM:
    """Stands in for a job's model in the dry run: keeps the size of every request and calls nothing.

    Explainer requests get a parsable label so that the scorers' requests are rendered too; scorer requests
    get an empty answer (which scorers count as unparsed)."""

    def __init__(self, name: str, supports_logprobs: bool, supports_echo: bool):
        self.name, self.supports_logprobs, self.supports_echo = name, supports_logprobs, supports_echo
        self.requests: list[tuple[str, int, int]] = []  # stage, estimated prompt tokens, max_tokens

    def _answer(self, stage: str | None, prompt_tokens: int, max_tokens: int) -> LLMResponse:
        self.requests.append((stage or "other", prompt_tokens, max_tokens))
        return LLMResponse(text="Label: dry run" if stage == EXPLAIN_STAGE else "", model=self.name)

    async def chat(self, messages, *, max_tokens=256, temperature=0.0, top_logprobs=None, stage=None) -> LLMResponse:
        chars = sum(len(m.get("content", "")) for m in messages)
        return self._answer(stage, estimate_tokens(chars, 0) + CHAT_TOKENS_PER_MESSAGE * len(messages), max_tokens)

    async def complete(
        self, prompt, *, max_tokens=16, temperature=0.0, logprobs=None, echo=False, stage=None
    ) -> LLMResponse:
        return self._answer(stage, estimate_tokens(len(prompt), 0), max_tokens)


def _dry_run_llm(spec: str, job: JobConfig) -> _DryRunLLM:
    try:
        llm = make_job_llm(spec, job, store=None, run_id=None)  # makes no request
        return _DryRunLLM(llm.name, llm.supports_logprobs, llm.supports_echo)
    except AutointerpError:  # e.g. no API key yet: assume what the provider's adapter offers
        logprobs = not spec.startswith("anthropic")
        return _DryRunLLM(spec, logprobs, logprobs)


def estimate_job(store: Store, job: JobConfig, n_sample: int = 3) -> CostEstimate:
    """What the job would send, per feature and in all, measured by rendering every request for up to
    `n_sample` of its features (prompt tokens ~ characters / 4) and priced with the price table; no model
    is called and nothing is written."""
    return asyncio.run(_estimate_job(store, job, n_sample))


async def _estimate_job(store: Store, job: JobConfig, n_sample: int) -> CostEstimate:
    check_job(job)
    chash = job_config_hash(job)
    with store.reading() as con:
        source = get_source(con, job.source)
        features = job_features(con, source, job)
        statuses = jobs.feature_statuses(con, chash, source.source_id)
    todo = [f for f in features if statuses.get(f) not in jobs.FINISHED_STATUSES]
    explainer = _dry_run_llm(job.explainer, job)
    simulator = explainer if simulator_spec(job) == job.explainer else _dry_run_llm(simulator_spec(job), job)
    sampled = 0
    for feature in todo:
        if sampled == n_sample:
            break
        try:
            examples = sample(store, job.source, feature, job.sampling)
        except AutointerpError:
            continue
        finally:
            store.close()
        explanation = await best_of_k(examples, explainer, prompt=job.prompt, k=job.k, evidence=job.evidence)
        for name in job.scorers:
            if name in NEEDS_LLM:
                await make_scorer(name, simulator, **job.scorer_options.get(name, {})).score(explanation, examples)
        sampled += 1
    if not sampled:
        raise AutointerpError(f"none of the job's {len(todo)} remaining features could be sampled: nothing to estimate")
    prices = PriceTable.from_toml(job.prices) if job.prices else PriceTable.default()
    stages = []
    for llm in dict.fromkeys([explainer, simulator]):
        provider, _, model = llm.name.partition(":")
        by_stage: dict[str, list[tuple[int, int]]] = {}
        for stage, prompt_tokens, max_tokens in llm.requests:
            by_stage.setdefault(stage, []).append((prompt_tokens, max_tokens))
        for stage, sizes in by_stage.items():
            prompt_tokens = sum(p for p, _ in sizes) / sampled
            completion = sum(m for _, m in sizes) / sampled
            usage = Usage(round(prompt_tokens), round(completion))
            cost, priced = prices.cost(provider, model, usage)
            batch_cost = prices.cost(provider, model, usage, batch=True)[0] if priced and provider in BATCH_PROVIDERS else None
            stages.append(
                StageEstimate(
                    stage, llm.name, len(sizes) / sampled, prompt_tokens, completion, cost if priced else None, batch_cost
                )
            )
    return CostEstimate(len(todo), len(features) - len(todo), sampled, stages, prices.as_of)
