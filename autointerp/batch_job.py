"""The batch driver: the labeling job's stages run phase by phase, their LLM requests sent as provider batches.

One call of `advance` (one run of `autointerp label --batch`) does what can be done now and returns:
  1. reconcile: a batch whose intent was recorded but whose provider id was not (the process was killed in
     between) is looked up in the provider's list by its key; found, it is adopted; not found, its lines are
     free to go out again. No batch is ever submitted twice.
  2. collect: open batches are polled; the answers of ended ones go into the ledger, under the cache keys the
     streaming path uses, priced at batch prices (`llm_calls.batch_key` says which batch).
  3. run the stages for every unfinished feature (`stages`) with LLMs that answer from the ledger and collect
     what they cannot answer (`llm.deferral`); a feature whose stage completes moves on (its state is kept in
     `feature_jobs`), a finished one is written exactly as the streaming job writes it.
  4. submit the collected requests as new batches, split at the provider's limits; intent first.
A line that errored or expired is sent again in the next batch; after MAX_BATCH_ATTEMPTS it is sent by the
streaming path instead (with its retries), and a feature whose request fails there fails. `wait` repeats
`advance` until the job is done. The streaming job and this one share the stages, the ledger and
`feature_jobs`: either continues what the other started.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from autointerp import stages
from autointerp.config import JobConfig
from autointerp.errors import AutointerpError
from autointerp.explain import ExplanationParseError
from autointerp.llm import LLMCallError
from autointerp.llm.base import Usage
from autointerp.llm.batches import BatchAPI, BatchRejected, LineResult, batch_api, split_lines
from autointerp.llm.deferral import Deferral, PendingRequest
from autointerp.llm.errors import MalformedResponse
from autointerp.llm.limits import estimate_tokens
from autointerp.llm.prices import BATCH_PROVIDERS
from autointerp.pipeline import (
    FATAL_LLM_ERRORS,
    FeatureResult,
    _already_done,
    _job_record,
    check_job,
    job_config_hash,
    job_features,
    make_job_llm,
    new_run_id,
)
from autointerp.records import Explanation, FeatureExamples
from autointerp.sampling import TooFewActivations
from autointerp.store import batches as bstore
from autointerp.store import jobs
from autointerp.store.activations import SourceInfo, get_source
from autointerp.store.db import Store, job_lock
from autointerp.store.llm_calls import LLMCall, insert_calls, spend

MAX_BATCH_ATTEMPTS = 2  # batch submissions of one request that errored or expired; then it is streamed
PASS_CHUNK = 256  # features sampled and run together in one pass


@dataclass(frozen=True)
class BatchLimits:
    """Per-batch limits below the provider's (None: the provider's own: OpenAI 50,000 requests and 200 MB per
    file, Anthropic 100,000 requests and 256 MB)."""

    max_requests: int | None = None
    max_bytes: int | None = None


@dataclass
class BatchProgress:
    run_id: str
    status: str  # waiting | done
    config_hash: str
    source: str
    features: dict[str, int]  # explain | score (in progress), done, failed, skipped_sparse
    batches: list[bstore.BatchRow]
    submitted: int = 0  # requests sent in new batches by this call
    collected: int = 0  # answers read from ended batches by this call
    streamed: int = 0  # requests sent one by one by this call
    results: list[FeatureResult] = field(default_factory=list)  # every feature's, once done
    rejected: list[str] = field(default_factory=list)  # why the provider refused batches in this call

    @property
    def done(self) -> bool:
        return self.status == "done"

    def open_batches(self) -> list[bstore.BatchRow]:
        return [b for b in self.batches if b.status in bstore.OPEN_STATUSES]


def checkpoint(name: str) -> None:
    """A phase boundary (reconciled, collected, staged, intent_recorded, batch_created); tests kill the job here."""


def run_batch_job(store: Store, job: JobConfig, **options: Any) -> BatchProgress:
    """One step of the batch job (see the module docstring); with `wait=True`, steps every `poll_s` until done.
    Options: those of `batch_job`."""
    return asyncio.run(batch_job(store, job, **options))


async def batch_job(
    store: Store,
    job: JobConfig,
    *,
    wait: bool = False,
    poll_s: float = 60.0,
    progress: bool = True,
    limits: BatchLimits = BatchLimits(),
) -> BatchProgress:
    with job_lock(store.path, "batch label job"):  # one job per store, as for the streaming job
        started = time.monotonic()
        while True:
            state = await advance(store, job, limits=limits)
            if progress:
                print(progress_line(state, time.monotonic() - started), file=sys.stderr, flush=True)
            if state.rejected:
                raise BatchRejected(
                    "; ".join(state.rejected)
                    + ". Nothing is lost: those requests wait in the store; fix the cause and run the same command again"
                )
            if state.done or not wait:
                return state
            await asyncio.sleep(poll_s)


def progress_line(state: BatchProgress, elapsed_s: float) -> str:
    f = state.features
    open_ = state.open_batches()
    lines_done = sum(b.n_succeeded + b.n_errored for b in open_)
    lines_all = sum(b.n_requests for b in open_)
    statuses = defaultdict(int)
    for b in open_:
        statuses[b.provider_status or b.status] += 1
    eta = ""
    if 0 < lines_done < lines_all:
        eta = f", ETA ~{elapsed_s * (lines_all - lines_done) / lines_done / 60:.0f} min"
    return (
        f"[{datetime.now(UTC):%H:%M:%S}] features: {f.get('explain', 0)} explaining, {f.get('score', 0)} scoring, "
        f"{f.get('done', 0)} done, {f.get('failed', 0)} failed, {f.get('skipped_sparse', 0)} too sparse; "
        f"batches: {len(open_)} open ({', '.join(f'{n} {s}' for s, n in sorted(statuses.items())) or '-'}; "
        f"{lines_done:,}/{lines_all:,} lines{eta}); this step: {state.collected:,} answers collected, "
        f"{state.submitted:,} requests submitted, {state.streamed:,} streamed"
    )


async def advance(store: Store, job: JobConfig, limits: BatchLimits = BatchLimits()) -> BatchProgress:
    check_job(job)
    for spec in stages.model_specs(job):
        if spec.partition(":")[0] not in BATCH_PROVIDERS:
            raise AutointerpError(f"{spec} has no batch API: --batch works with openai:<model> and anthropic:<model>")
    chash = job_config_hash(job)
    _ = store.con  # one connection for the step (a step takes seconds; the file is free between steps)
    with store.reading() as con:
        source = get_source(con, job.source)
        features = job_features(con, source, job)
        run_id = bstore.batch_run(con, chash)
    if run_id is None:
        run_id = new_run_id("batch")
        with store.writing() as con:
            jobs.create_run(con, run_id, "batch", {**_job_record(job), "batch": True}, chash, len(features))
    driver = _BatchDriver(store, job, run_id, chash, source, features, limits)
    try:
        return await driver.advance()
    finally:
        await driver.aclose()
        store.close()


@dataclass
class _Outcome:
    feature: int
    status: str  # explain | score (still in progress) | done | failed | skipped_sparse
    explanation: Explanation | None = None
    examples: FeatureExamples | None = None
    scores: list = field(default_factory=list)
    stage: str | None = None
    error: str | None = None
    raw: str | None = None


class _BatchDriver:
    def __init__(self, store, job: JobConfig, run_id: str, chash: str, source: SourceInfo, features, limits: BatchLimits):
        self.store, self.job, self.run_id, self.chash, self.source = store, job, run_id, chash, source
        self.features = features
        self.limits = limits
        self._streaming: dict[str, Any] = {}  # spec -> ProviderLLM without deferral (batch API client, streaming)
        self.failed_slots: dict[tuple[str, int], str] = {}
        self.progress = BatchProgress(run_id, "waiting", chash, source.name, {}, [])

    def llm(self, spec: str) -> Any:
        if spec not in self._streaming:
            self._streaming[spec] = make_job_llm(spec, self.job, store=self.store, run_id=self.run_id)
        return self._streaming[spec]

    def api(self, provider: str, model: str) -> BatchAPI:
        return batch_api(self.llm(f"{provider}:{model}"))

    async def aclose(self) -> None:
        for llm in self._streaming.values():
            await llm.aclose()

    # --- one step ---------------------------------------------------------------------------------------

    async def advance(self) -> BatchProgress:
        await self.reconcile()
        checkpoint("reconciled")
        collected_any = await self.collect()
        checkpoint("collected")
        with self.store.reading() as con:
            open_now = bstore.batches(con, job_key=self.chash, statuses=bstore.OPEN_STATUSES)
        if collected_any or not open_now:
            await self.run_stages()
        self.finish()
        return self.progress

    async def reconcile(self) -> None:
        with self.store.reading() as con:
            creating = bstore.batches(con, job_key=self.chash, statuses=("creating",))
            claimed = {b.provider_batch_id for b in bstore.batches(con, job_key=self.chash) if b.provider_batch_id}
        for row in creating:
            since = row.created_at.replace(tzinfo=UTC) if row.created_at.tzinfo is None else row.created_at
            found = await self.api(row.provider, row.model).find(row.batch_key, row.n_requests, since, claimed)
            with self.store.writing() as con:
                if found:
                    claimed.add(found)
                    bstore.update_batch(con, row.batch_key, provider_batch_id=found, status="open")
                else:
                    lines = bstore.batch_lines(con, row.batch_key)
                    bstore.set_line_states(con, {line.custom_id: ("lost", None) for line in lines})
                    bstore.update_batch(con, row.batch_key, status="lost", ended=True)

    async def collect(self) -> bool:
        with self.store.reading() as con:
            open_ = bstore.batches(con, job_key=self.chash, statuses=("open",))
        collected = False
        for row in open_:
            api = self.api(row.provider, row.model)
            state = await api.state(row.provider_batch_id)
            counts = state.counts
            fields: dict[str, Any] = {"provider_status": state.provider_status}
            if "completed" in counts:  # openai
                fields.update(n_succeeded=counts["completed"], n_errored=counts["failed"])
            elif "succeeded" in counts:  # anthropic
                fields.update(n_succeeded=counts["succeeded"], n_errored=counts["errored"])
            if state.rejected:
                message = f"{row.provider}:{row.model} rejected batch {row.provider_batch_id} ({row.batch_key}): {state.rejected}"
                with self.store.writing() as con:
                    lines = bstore.batch_lines(con, row.batch_key)
                    bstore.set_line_states(con, {line.custom_id: ("rejected", state.rejected) for line in lines})
                    bstore.update_batch(con, row.batch_key, status="rejected", error=message, ended=True, **fields)
                self.progress.rejected.append(message)
                continue
            if not state.ended:
                with self.store.writing() as con:
                    bstore.update_batch(con, row.batch_key, **fields)
                continue
            results = {r.custom_id: r for r in await api.results(row.provider_batch_id)}
            self.store_results(row, results, fields)
            collected = True
        return collected

    def store_results(self, row: bstore.BatchRow, results: dict[str, LineResult], fields: dict[str, Any]) -> None:
        """The ended batch's answers into the ledger, and every line's state, in one transaction."""
        llm = self.llm(f"{row.provider}:{row.model}")
        with self.store.writing() as con:
            lines = bstore.batch_lines(con, row.batch_key)
            calls, states = [], {}
            n_ok = n_err = n_unfinished = 0
            for line in sorted(lines, key=lambda x: (x.cache_key, x.occurrence)):
                result = results.get(line.custom_id)
                if result is None or result.unfinished:
                    cancelled = row.provider_status in ("cancelled", "canceling", "cancelling") or (
                        result is not None and result.error in ("canceled", "cancelled")
                    )
                    states[line.custom_id] = ("cancelled" if cancelled else "unfinished", result and result.error)
                    n_unfinished += 1
                    continue
                if result.body is not None:
                    try:
                        usage = llm._parse(row.endpoint, result.body).usage
                    except MalformedResponse as exc:
                        result = LineResult(line.custom_id, None, f"not a valid {row.endpoint} answer: {exc}")
                if result.body is None:
                    states[line.custom_id] = ("errored", result.error)
                    n_err += 1
                    continue
                cost, priced = llm.prices.cost(row.provider, row.model, usage, batch=True)
                calls.append(
                    LLMCall(
                        cache_key=line.cache_key,
                        provider=row.provider,
                        model=row.model,
                        stage=line.stage,
                        run_id=self.run_id,
                        request=line.request,
                        response=result.body,
                        prompt_tokens=usage.prompt_tokens,
                        completion_tokens=usage.completion_tokens,
                        cost_usd=cost,
                        latency_ms=0.0,
                        endpoint_host=llm.ledger.endpoint_host,
                        priced=priced,
                        batch_key=row.batch_key,
                    )
                )
                states[line.custom_id] = ("answered", None)
                n_ok += 1
            insert_calls(con, calls)
            bstore.set_line_states(con, states)
            fields.update(n_succeeded=n_ok, n_errored=n_err, n_unfinished=n_unfinished)
            bstore.update_batch(con, row.batch_key, status="collected", ended=True, **fields)
        self.progress.collected += n_ok

    # --- the stages ---------------------------------------------------------------------------------------

    async def run_stages(self) -> None:
        with self.store.reading() as con:
            statuses = jobs.feature_statuses(con, self.chash, self.source.source_id)
            stage_states = bstore.stage_states(con, self.chash, self.source.source_id)
            firing = jobs.firing_features(con, self.source.source_id, self.features)
            history = bstore.slot_history(con, self.chash)
            last_errors = bstore.last_line_errors(con, self.chash)
            failed_here = {f.feature for f in jobs.run_failures(con, self.run_id)}
        # a feature that failed in this run stays failed until a later run (as in the streaming job)
        todo = [f for f in self.features if statuses.get(f) not in jobs.FINISHED_STATUSES and f not in failed_here]
        # features whose retry budget of batch submissions is spent get their requests streamed and run again
        pending: dict[tuple[str, int], PendingRequest] = {}
        streamed: set[tuple[str, int]] = set()
        while todo:
            deferral = Deferral(self.failed_slots)
            await self.run_pass(todo, firing, stage_states, deferral)
            checkpoint("staged")
            streamed_features: set[int] = set()
            for slot, request in deferral.pending.items():
                failures, in_open_batch = history.get(slot, (0, False))
                if in_open_batch:
                    continue
                if slot in streamed:  # answered, yet asked again: never loop
                    self.failed_slots[slot] = "its streamed answer was not found in the ledger"
                    streamed_features |= deferral.features[slot]
                elif failures >= MAX_BATCH_ATTEMPTS:
                    streamed.add(slot)
                    await self.stream(request, last_errors.get(slot))
                    streamed_features |= deferral.features[slot]
                else:
                    pending[slot] = request
            with self.store.reading() as con:
                stage_states = bstore.stage_states(con, self.chash, self.source.source_id)
            todo = sorted(f for f in streamed_features if f is not None)
        await self.submit(list(pending.values()))

    async def stream(self, request: PendingRequest, last_error: str | None) -> None:
        llm = self.llm(request.llm.name)
        est = estimate_tokens(len(str(request.request)), 256)
        try:
            await llm._call_server(request.endpoint, request.request, request.cache_key, request.stage, est)
        except LLMCallError as exc:
            if exc.kind in FATAL_LLM_ERRORS:
                raise AutointerpError(f"the job stopped: {exc}") from None
            self.failed_slots[request.slot] = (
                f"failed in {MAX_BATCH_ATTEMPTS} batches (last: {last_error}) and when sent alone: {exc}"
            )
        llm.ledger.flush()
        self.progress.streamed += 1

    async def run_pass(self, todo: list[int], firing: set[int], stage_states, deferral: Deferral) -> None:
        llms: dict[str, Any] = {}

        def llm_for(spec: str) -> Any:
            if spec not in llms:
                llm = make_job_llm(spec, self.job, store=self.store, run_id=self.run_id)
                llm.deferral = deferral
                llm.record_cache_hits = False
                llms[spec] = llm
            return llms[spec]

        for start in range(0, len(todo), PASS_CHUNK):
            chunk = todo[start : start + PASS_CHUNK]
            sampled = list(stages.sample_features(self.store, self.job, self.source, chunk, firing))
            outcomes = await asyncio.gather(
                *(self.run_feature(f, s, stage_states.get(f), llm_for, deferral) for f, s in sampled)
            )
            await self.write(outcomes, stage_states)
        for llm in llms.values():
            await llm.aclose()

    async def run_feature(self, feature: int, sampled, stage_state, llm_for, deferral: Deferral) -> _Outcome:
        Deferral.for_feature(feature)
        if isinstance(sampled, TooFewActivations):
            return _Outcome(feature, "skipped_sparse", stage="sample", error=str(sampled))
        if isinstance(sampled, AutointerpError):
            return _Outcome(feature, "failed", stage="sample", error=str(sampled))
        examples: FeatureExamples = sampled
        explanation = None
        if stage_state is not None and stage_state[0] == "score" and stage_state[1]:
            explanation = Explanation(**stage_state[1]["explanation"])
        if explanation is None:
            try:
                explanation = await stages.explain(examples, llm_for(self.job.explainer), self.job)
            except Exception as exc:  # noqa: BLE001 - one feature's failure never stops the job
                if deferral.used(feature):
                    return _Outcome(feature, "explain")
                return self._failure(feature, "explain", exc)
            if deferral.used(feature):
                return _Outcome(feature, "explain")
        outcome = _Outcome(feature, "score", explanation=explanation, examples=examples)
        failure = None
        for scorer in stages.make_scorers(self.job, llm_for):
            try:  # every scorer runs, so that all of their requests are collected in this pass
                outcome.scores += await stages.score(explanation, examples, [scorer])
            except Exception as exc:  # noqa: BLE001
                failure = failure or self._failure(feature, f"score:{scorer.name}", exc)
        if deferral.used(feature):
            return outcome
        if failure is not None:
            return failure
        outcome.status = "done"
        return outcome

    def _failure(self, feature: int, stage: str, exc: BaseException) -> _Outcome:
        if isinstance(exc, LLMCallError) and exc.kind in FATAL_LLM_ERRORS:
            raise AutointerpError(f"the job stopped: {exc}") from None
        raw = None
        if isinstance(exc, ExplanationParseError):
            raw = exc.raw if isinstance(exc.raw, str) else json.dumps(exc.raw)
        error = str(exc) if isinstance(exc, AutointerpError) else f"{type(exc).__name__}: {exc}"
        return _Outcome(feature, "failed", stage=stage, error=error, raw=raw)

    async def write(self, outcomes: list[_Outcome], stage_states) -> None:
        """The chunk's results in one transaction: stage changes, labels with their scores, failures."""
        done = [o for o in outcomes if o.status == "done"]
        vectors = await asyncio.gather(*(stages.label_vector(o.explanation.label) for o in done))
        moved = [
            o for o in outcomes if o.status in ("explain", "score") and (stage_states.get(o.feature) or (None,))[0] != o.status
        ]
        with self.store.writing() as con:
            for stage in ("explain", "score"):
                group = [o for o in moved if o.status == stage]
                bstore.set_stage(
                    con,
                    self.chash,
                    self.source.source_id,
                    [o.feature for o in group],
                    stage,
                    [{"explanation": dataclasses.asdict(o.explanation)} if o.explanation else None for o in group],
                    self.run_id,
                )
            for o, vector in zip(done, vectors):
                explanation_id = stages.write(
                    con, o.explanation, o.examples, o.scores, vector, run_id=self.run_id, config_hash=self.chash
                )
                jobs.mark_feature(
                    con, self.chash, self.source.source_id, o.feature, "done", run_id=self.run_id, explanation_id=explanation_id
                )
            for o in outcomes:
                if o.status in ("failed", "skipped_sparse"):
                    if o.status == "failed":
                        jobs.record_failure(
                            con,
                            run_id=self.run_id,
                            source_id=self.source.source_id,
                            feature=o.feature,
                            stage=o.stage,
                            error=o.error,
                            raw_output=o.raw,
                        )
                    jobs.mark_feature(
                        con, self.chash, self.source.source_id, o.feature, o.status, run_id=self.run_id, error=o.error
                    )

    # --- submit -------------------------------------------------------------------------------------------

    async def submit(self, requests: list[PendingRequest]) -> None:
        groups: dict[tuple[str, str, str], list[PendingRequest]] = defaultdict(list)
        for r in requests:
            groups[(r.llm.provider, r.llm.model, r.endpoint)].append(r)
        for (provider, model, endpoint), group in groups.items():
            api = self.api(provider, model)
            batch_key = f"ai{secrets.token_hex(6)}"
            lines = [api.line(f"{batch_key}-{i}", endpoint, r.request) for i, r in enumerate(group)]
            max_requests = min(api.max_requests, self.limits.max_requests or api.max_requests)
            max_bytes = min(api.max_bytes, self.limits.max_bytes or api.max_bytes)
            for n, chunk in enumerate(split_lines(lines, max_requests, max_bytes)):
                key = batch_key if n == 0 else f"ai{secrets.token_hex(6)}"
                chunk_lines = [api.line(f"{key}-{i}", endpoint, group[j].request) for i, j in enumerate(chunk)]
                await self.submit_one(api, key, endpoint, [group[j] for j in chunk], chunk_lines)

    async def submit_one(self, api: BatchAPI, key: str, endpoint: str, requests: list[PendingRequest], lines: list[bytes]) -> None:
        llm = api.llm
        row = bstore.BatchRow(
            key, self.chash, self.run_id, llm.provider, llm.model, endpoint, None, None, "creating", None,
            len(lines), 0, 0, 0, sum(len(line) for line in lines), None, None, None, None,
        )
        batch_lines = [
            bstore.BatchLine(f"{key}-{i}", r.cache_key, r.occurrence, r.stage, r.request) for i, r in enumerate(requests)
        ]
        with self.store.writing() as con:
            bstore.record_intent(con, row, batch_lines)
        checkpoint("intent_recorded")
        try:
            batch_id, file_id = await api.submit(key, endpoint, lines)
        except BatchRejected as exc:
            with self.store.writing() as con:
                bstore.set_line_states(con, {line.custom_id: ("rejected", str(exc)) for line in batch_lines})
                bstore.update_batch(con, key, status="rejected", error=str(exc), ended=True)
            self.progress.rejected.append(str(exc))
            return
        checkpoint("batch_created")
        with self.store.writing() as con:
            bstore.update_batch(con, key, provider_batch_id=batch_id, input_file_id=file_id, status="open")
        self.progress.submitted += len(lines)

    # --- the run's row ------------------------------------------------------------------------------------

    def finish(self) -> None:
        with self.store.reading() as con:
            statuses = jobs.feature_statuses(con, self.chash, self.source.source_id)
            stage_states = bstore.stage_states(con, self.chash, self.source.source_id)
            batches = bstore.batches(con, job_key=self.chash)
            usage = spend(con, self.run_id)
        counts: dict[str, int] = defaultdict(int)
        for f in self.features:
            status = statuses.get(f)
            counts[stage_states[f][0] if status == "in_progress" else (status or "explain")] += 1
        open_ = [b for b in batches if b.status in bstore.OPEN_STATUSES]
        finished = counts["done"] + counts["failed"] + counts["skipped_sparse"] == len(self.features)
        status = "done" if finished and not open_ else "waiting"
        billed = Usage(sum(r["prompt_tokens"] for r in usage), sum(r["completion_tokens"] for r in usage))
        with self.store.writing() as con:
            jobs.update_run(
                con,
                self.run_id,
                status=status,
                n_done=counts["done"],
                n_failed=counts["failed"],
                n_skipped=counts["skipped_sparse"],
                prompt_tokens=billed.prompt_tokens,
                completion_tokens=billed.completion_tokens,
                cost_usd=sum(r["cost_usd"] for r in usage),
                ended=status == "done",
            )
        self.progress.status = status
        self.progress.features = dict(counts)
        self.progress.batches = batches
        if status == "done":
            self.progress.results = self.results(statuses)

    def results(self, statuses: dict[int, str]) -> list[FeatureResult]:
        finished = [f for f in self.features if statuses.get(f) in jobs.FINISHED_STATUSES]
        out = {r.feature: r for r in _already_done(self.store, self.chash, self.source, finished, statuses)}
        with self.store.reading() as con:
            failures = {f.feature: f for f in jobs.run_failures(con, self.run_id)}
        for f in self.features:
            if statuses.get(f) == "failed":
                failure = failures.get(f)
                out[f] = FeatureResult(f, "failed", stage=failure and failure.stage, error=failure and failure.error)
            elif f in out and out[f].status == "already_done":
                out[f].status = "done"
        return [out[f] for f in sorted(out)]


async def cancel_batches(store: Store, run_id: str) -> list[bstore.BatchRow]:
    """Ask the provider to cancel every open batch of the run; the next step collects what finished. Running the
    label command again continues the job (the cancelled remainder is submitted again)."""
    with store.reading() as con:
        run = jobs.get_run(con, run_id)
        if run is None or run.kind != "batch":
            raise AutointerpError(f"no batch run {run_id!r}: see `autointerp runs`")
        open_ = bstore.batches(con, job_key=run.config_hash, statuses=bstore.OPEN_STATUSES)
    job = _job_from_record(run.config)
    driver_llms: dict[str, Any] = {}
    try:
        for row in open_:
            if row.provider_batch_id is None:
                continue
            spec = f"{row.provider}:{row.model}"
            if spec not in driver_llms:
                driver_llms[spec] = make_job_llm(spec, job, store=store, run_id=run_id)
            await batch_api(driver_llms[spec]).cancel(row.provider_batch_id)
        with store.writing() as con:
            for row in open_:
                bstore.update_batch(con, row.batch_key, provider_status="cancelling")
            jobs.update_run(con, run_id, status="cancelled")
    finally:
        for llm in driver_llms.values():
            await llm.aclose()
        store.close()
    return open_


def _job_from_record(record: dict[str, Any]) -> JobConfig:
    """What reaching the run's provider takes (its endpoint and prices), from the run's stored configuration."""
    return JobConfig(base_url=record.get("base_url"), prices=record.get("prices"))
