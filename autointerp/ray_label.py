"""Labeling on a Ray cluster: the driver samples and writes, Ray workers explain and score.

The driver is the streaming job of `autointerp.pipeline` (the same run row, feature_jobs rows, failure records,
transient-failure retries and resume); only each feature's explain and score stages (`stages.explain_and_score`:
the LLM calls and embeddings) run on a pool of Ray actors instead of this process. The store keeps one writer:
the driver samples a feature, ships its examples to a worker, and writes the worker's LLM call rows, then the
label and scores, when the outcome comes back. Each worker runs `concurrency` features at once, so `concurrency`
is per worker here; `rpm` and `tpm` are shared out between the workers.

Workers have no store, so the ledger reaches them through one `AnswerBook` actor: every answer a worker gets is
in the book before the stage that asked for it sees it, every cache lookup asks the book, and the book has the
driver fetch the answers already stored (the keys of which it knows, as the in-process ledger does). So:
- a worker killed mid-feature is restarted by Ray and the feature runs again (MAX_RETRIES); the answers the
  killed attempt got come back from the book as cache hits: the retried feature pays only for the calls that
  were in flight, as after a SIGKILL of the in-process job. The rows of both attempts reach `llm_calls` once,
  with the feature's label (each row keeps its call_uid);
- a rerun, or an identical request from two features, is answered from the ledger as in process.
The book keeps this job's answers until the job ends (the in-process ledger keeps them in the store).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any

from autointerp import stages
from autointerp.config import JobConfig
from autointerp.errors import AutointerpError
from autointerp.llm.ledger import Ledger
from autointerp.pipeline import JobSummary, Meter, _label_job, check_job, make_job_llm
from autointerp.ray_cluster import AUTO, connected, worker_errors
from autointerp.records import FeatureExamples
from autointerp.store.db import Store, job_lock
from autointerp.store.llm_calls import LLMCall, answer_counts, stored_answers

log = logging.getLogger(__name__)

MAX_RETRIES = 3  # restarts of a dead worker, and re-runs of each feature it had in hand

_FEATURE: contextvars.ContextVar[int] = contextvars.ContextVar("feature")  # the feature a worker's call is for


class AnswerBook:
    """A Ray actor (asynchronous): the job's ledger as the workers see it. Answers made during the job are kept
    here; answers already in the store (`stored`: how many each cache key has, as the in-process ledger counts
    them) are fetched by the driver when first asked for (`wanted` / `found`). Also each unfinished feature's
    ledger rows."""

    def __init__(self, stored: dict[str, int]):
        self._stored = stored
        self._fetched: dict[tuple[str, int], dict[str, Any] | None] = {}
        self._fresh: dict[str, list[dict[str, Any]]] = {}
        self._rows: dict[int, list[LLMCall]] = {}
        self._wanted: dict[tuple[str, int], asyncio.Future] = {}
        self._asked = asyncio.Event()

    async def keep(self, feature: int, call: LLMCall) -> None:
        self._rows.setdefault(feature, []).append(call)
        if call.error is None and not call.cached and call.response is not None:
            self._fresh.setdefault(call.cache_key, []).append(call.response)

    async def answer(self, key: str, occurrence: int) -> dict[str, Any] | None:
        """The `occurrence`-th answer to this request (0-based: stored ones first, then this job's), or None."""
        stored = self._stored.get(key, 0)
        if occurrence >= stored:
            fresh = self._fresh.get(key, [])
            return fresh[occurrence - stored] if occurrence - stored < len(fresh) else None
        slot = (key, occurrence)
        if slot in self._fetched:
            return self._fetched[slot]
        if slot not in self._wanted:
            self._wanted[slot] = asyncio.get_running_loop().create_future()
            self._asked.set()
        return await asyncio.shield(self._wanted[slot])

    async def wanted(self) -> list[tuple[str, int]]:
        """Stored answers that workers wait for (waits until there is one); the driver answers with `found`."""
        await self._asked.wait()
        self._asked.clear()
        return list(self._wanted)

    async def found(self, slots: list[tuple[str, int]], answers: dict[tuple[str, int], dict[str, Any]]) -> None:
        for slot in slots:
            self._fetched[slot] = answers.get(slot)
            future = self._wanted.pop(slot, None)
            if future is not None and not future.done():
                future.set_result(self._fetched[slot])

    async def rows(self, feature: int) -> list[LLMCall]:
        return self._rows.get(feature, [])

    async def forget(self, feature: int) -> None:
        """The driver has the feature's rows."""
        self._rows.pop(feature, None)


class _BookLedger(Ledger):
    """A worker's ledger: answers from the book, and every row sent to it (`kept` waits until they are there)."""

    def __init__(self, book: Any, like: Ledger):
        super().__init__(None, provider=like.provider, model=like.model, endpoint_host=like.endpoint_host)
        self.book = book
        self._sending: list[Any] = []

    async def answer(self, key: str, occurrence: int) -> dict[str, Any] | None:
        return await self.book.answer.remote(key, occurrence)

    def record(self, call: LLMCall) -> None:
        self._sending.append(self.book.keep.remote(_FEATURE.get(), call))

    async def kept(self) -> None:
        sending, self._sending = self._sending, []
        if sending:
            await asyncio.gather(*sending)


class _BookedLLM:
    """A worker's LLM whose answers are in the book before the caller gets them; the rest is the wrapped LLM's."""

    def __init__(self, llm: Any):
        self.llm = llm

    def __getattr__(self, name: str) -> Any:
        return getattr(self.llm, name)

    async def chat(self, messages, **kwargs):
        try:
            return await self.llm.chat(messages, **kwargs)
        finally:
            await self.llm.ledger.kept()

    async def complete(self, prompt, **kwargs):
        try:
            return await self.llm.complete(prompt, **kwargs)
        finally:
            await self.llm.ledger.kept()


class LabelWorker:
    """A Ray actor (asynchronous: up to `concurrency` features at once): the job's LLM clients and the
    embedding model, loaded once, running the explain and score stages of feature after feature."""

    def __init__(self, job: JobConfig, book: Any, on_stage: Callable[[int, str], None] | None = None):
        self.job, self.book, self.on_stage = job, book, on_stage
        self._llms: dict[str, _BookedLLM] = {}
        self._run_id: str | None = None

    def _llm(self, spec: str) -> _BookedLLM:
        if spec not in self._llms:
            llm = make_job_llm(spec, self.job, store=None, run_id=self._run_id)
            llm.ledger = _BookLedger(self.book, llm.ledger)
            self._llms[spec] = _BookedLLM(llm)
        return self._llms[spec]

    async def label(self, run_id: str, examples: FeatureExamples) -> tuple[stages.StagesOutcome, list[LLMCall]]:
        """The feature's outcome and the ledger rows of all its attempts (an attempt killed before this one's too)."""
        self._run_id = run_id
        _FEATURE.set(examples.feature)
        hook = functools.partial(self.on_stage, examples.feature) if self.on_stage else None
        outcome = await stages.explain_and_score(examples, self._llm, self.job, hook)
        for llm in self._llms.values():
            await llm.llm.ledger.kept()
        return outcome, await self.book.rows.remote(examples.feature)


class RayStages:
    """The driver's side (a `pipeline.StagesRunner`): hands each feature to the least busy worker and keeps the
    ledger rows that come back in this process's ledger journal, for the job's next store session."""

    def __init__(self, ray: Any, store: Store, pool: list[Any], book: Any, per_worker: int):
        self.ray, self.pool, self.book = ray, pool, book
        self.in_flight = per_worker * len(pool)
        self._busy = [0] * len(pool)
        self.ledger = Ledger(store, provider="ray", model="workers", endpoint_host=None)

    async def run(self, run_id: str, examples: FeatureExamples) -> tuple[stages.StagesOutcome, Meter]:
        i = min(range(len(self.pool)), key=self._busy.__getitem__)
        self._busy[i] += 1
        try:
            outcome, rows = await _result(self.ray, self.pool[i].label.remote(run_id, examples), examples.feature)
        finally:
            self._busy[i] -= 1
        for row in rows:
            self.ledger.record(row)
        self.book.forget.remote(examples.feature)
        return outcome, meter_of(rows)

    async def serve_stored_answers(self, store: Store) -> None:
        """Fetch the stored answers the book is asked for (runs until cancelled)."""
        while True:
            slots = [tuple(slot) for slot in await self.book.wanted.remote()]
            try:
                with store.reading() as con:
                    answers = stored_answers(con, slots)
            except Exception as exc:  # noqa: BLE001 - the workers must not wait for ever: they ask the model instead
                log.warning("stored LLM answers could not be read for the Ray workers: %s", exc)
                answers = {}
            await self.book.found.remote(slots, answers)

    def flush(self) -> None:
        self.ledger.flush()

    def close(self) -> None:
        self.ledger.close()


def meter_of(rows: list[LLMCall]) -> Meter:
    """What the calls used, counted as `pipeline.Meter` counts answers (failed calls are not answers)."""
    meter = Meter()
    for row in rows:
        if row.error is not None:
            continue
        meter.calls += 1
        if row.cached:
            meter.cached += 1
            continue
        meter.prompt_tokens += row.prompt_tokens
        meter.completion_tokens += row.completion_tokens
        meter.cost_usd += row.cost_usd
    return meter


async def _result(ray: Any, ref: Any, feature: int) -> Any:
    with worker_errors(ray, MAX_RETRIES, f"feature {feature}", "every label stored before"):
        return await ref


def _provider_model(spec: str, job: JobConfig) -> tuple[str, str]:
    """The provider and model names that the ledger files a model spec's calls under."""
    llm = make_job_llm(spec, job, store=None, run_id=None)
    return llm.provider, llm.model


def worker_job(job: JobConfig, n_workers: int) -> JobConfig:
    """The job as each worker runs it: the rate limits shared out."""
    return dataclasses.replace(
        job,
        rpm=job.rpm / n_workers if job.rpm else None,
        tpm=job.tpm / n_workers if job.tpm else None,
    )


def label_on_ray(
    store: Store, job: JobConfig, *, on_stage: Callable[[int, str], None] | None = None, progress: bool = True
) -> JobSummary:
    """`run_label_job` with the explain and score stages on the Ray cluster of `job.ray` (see the module docstring)."""
    return asyncio.run(alabel_on_ray(store, job, on_stage=on_stage, progress=progress))


async def alabel_on_ray(
    store: Store, job: JobConfig, *, on_stage: Callable[[int, str], None] | None = None, progress: bool = True
) -> JobSummary:
    """The Ray job as a coroutine. on_stage(feature, stage) runs on the worker as a feature enters each stage
    (explain, score:<scorer>, write); it travels by cloudpickle."""
    check_job(job)
    with job_lock(store.path, "label job"), connected(job.ray or AUTO, num_cpus=job.ray_workers, setting="ray") as ray:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        n = job.ray_workers or max(1, cpus)
        if n > cpus:  # a worker takes one CPU: more would wait for ever
            raise AutointerpError(f"`ray_workers` ({n}) is more than the cluster's {cpus} CPUs; ask for fewer")
        with store.reading() as con:
            stored = {key: n for spec in stages.model_specs(job) for key, n in answer_counts(con, *_provider_model(spec, job)).items()}
        store.close()
        book = ray.remote(AnswerBook).options(num_cpus=0).remote(stored)
        worker = ray.remote(LabelWorker).options(
            num_cpus=1, max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES, max_concurrency=job.concurrency
        )
        pool = [worker.remote(worker_job(job, n), book, on_stage) for _ in range(n)]
        runner = RayStages(ray, store, pool, book, job.concurrency)
        serving = asyncio.create_task(runner.serve_stored_answers(store))
        try:
            return await _label_job(store, job, progress, runner)
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            runner.close()
            for actor in [*pool, book]:
                ray.kill(actor)
