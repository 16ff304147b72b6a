"""The batch labeling job: per feature, sample -> explain (best of k on valid) -> score on test -> one
transaction storing the label, its scores, its provenance and the feature's job row. The stages are those of
`autointerp.stages`; this is their streaming driver (`autointerp.batch_job` drives them through provider batches;
`autointerp.ray_label` is this driver with the explain and score stages on Ray workers).

Features run concurrently on one event loop (`concurrency` workers; remote models also get `concurrency`
requests in flight). Store work happens on that loop's thread in short sessions about once a second
(`_StoreSessions`): features are sampled ahead, finished features written, and the file is closed in between,
so the web catalog can read it while a job runs.

Resume: a rerun under the same configuration hash skips features already done (or found too sparse), and the
LLM ledger answers every request it has already seen, so a stopped job continues without paying twice.
Ctrl-C writes what is finished and marks the run 'interrupted'. Every answer is journaled the moment it
arrives (see `autointerp.llm.ledger`): after a SIGKILL only the calls in flight are asked again. One job at a
time per store: a second one refuses (`job_lock`).

A feature whose LLM calls still fail for a transient cause after the client's retries (rate limits, 5xx,
timeouts, dropped connections, unreadable bodies) is tried again after the other features, up to
FEATURE_TRIES times in all, before it is recorded as failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import gc
import itertools
import math
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from autointerp import __version__
from autointerp import ranking, stages
from autointerp.baseline import BaselineLabel, llm_vs_baseline
from autointerp.catalog import NewLabel, load_labels, write_labels
from autointerp.embeddings import embed_texts_async
from autointerp.config import JobConfig, SamplingConfig, config_hash
from autointerp.errors import AutointerpError
from autointerp.explain import STYLES
from autointerp.label_checks import NearDuplicate, near_duplicate_labels
from autointerp.llm import LLMCallError, PriceTable, RateLimits, make_llm
from autointerp.llm.base import LLMResponse
from autointerp.llm.errors import TRANSIENT
from autointerp.prompts import available_prompts, load_prompt
from autointerp.records import Explanation, FeatureExamples, Score
from autointerp.sampling import TooFewActivations, sample
from autointerp.scoring import Scorer, any_needs_llm
from autointerp.scoring.output import OutputContext, output_context
from autointerp.stage_clock import in_thread, stage as cpu_stage, staged
from autointerp.stages import simulator_spec
from autointerp.store import jobs
from autointerp.store import output_evidence_queries as output_queries
from autointerp.store.activations import SourceInfo, get_source, select_features
from autointerp.store.db import Store, job_lock

# LLM failures that every later call would hit too: the job stops instead of failing feature after feature.
FATAL_LLM_ERRORS = frozenset({"auth", "unsupported", "connection"})
FEATURE_TRIES = 3  # per feature and job, for failures of a transient kind (TRANSIENT)
WRITES_PER_COMMIT = 32  # finished features stored per transaction
# Sampling runs on the event loop in slices of this many seconds: a loop turn between features left sampling
# one feature a turn, a session of 256 features then held the store file for seconds
SAMPLING_SLICE_S = 0.02
READER_GAP_S = 0.1  # the least time a job leaves the store file closed between its sessions (for readers that retry)
# Collector thresholds while a job runs: a young-generation pass every 20k allocations instead of 700, older
# ones rarely. A job allocates millions of short-lived objects; at the defaults the middle and old passes,
# over a heap that grows with the features done, took ~1.3 ms of CPU a feature (1000-feature benchmark job),
# these ~0.4 ms. Young cycles are still collected by the young passes.
JOB_GC_THRESHOLD = (20_000, 50, 100)


@dataclass
class FeatureResult:
    feature: int
    status: str  # done | failed | skipped_sparse | already_done
    label: str | None = None
    explanation_id: int | None = None
    scores: list[Score] = field(default_factory=list)
    stage: str | None = None  # where a failure happened: sample | explain | score:<scorer> | write
    error: str | None = None
    rerun_may_help: bool = False  # a failure a later run may not repeat (transient LLM errors, unexpected ones)
    baseline: BaselineLabel | None = None  # the non-LLM label and its embedding score, beside the LLM's


@dataclass
class Meter:
    """What a job's LLM calls used; cache hits are counted as calls but cost no tokens and nothing."""

    calls: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, response: LLMResponse) -> None:
        self.calls += 1
        if response.cached:
            self.cached += 1
            return
        self.prompt_tokens += response.usage.prompt_tokens
        self.completion_tokens += response.usage.completion_tokens
        self.cost_usd += response.cost_usd

    def merge(self, other: Meter) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class JobSummary:
    run_id: str
    status: str  # done | failed | interrupted
    config_hash: str
    source: str
    results: list[FeatureResult]
    usage: Meter
    seconds: float

    def with_status(self, status: str) -> list[FeatureResult]:
        return [r for r in self.results if r.status == status]

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in ("done", "already_done", "failed", "skipped_sparse")}
        for r in self.results:
            out[r.status] += 1
        return out

    def labeled(self) -> list[FeatureResult]:
        return [r for r in self.results if r.status in ("done", "already_done")]

    def near_duplicates(self) -> list[NearDuplicate]:
        """Pairs of features given (nearly) the same label in this run's results."""
        return near_duplicate_labels({r.feature: r.label for r in self.labeled() if r.label})

    def versus_baseline(self) -> dict[str, Any]:
        """How often the LLM label beats the non-LLM baseline on the embedding score (paired over features)."""
        return llm_vs_baseline(
            [(ranking.headline(r.scores, "embedding", reliable_only=False), r.baseline.score)
             for r in self.labeled() if r.baseline]
        )


class _MeteredLLM:
    """An LLM that adds what every answer used to a Meter; everything else is the wrapped LLM's."""

    def __init__(self, llm: Any, meter: Meter):
        self.llm = llm
        self.meter = meter

    def __getattr__(self, name: str) -> Any:
        return getattr(self.llm, name)

    async def chat(self, messages, **kwargs) -> LLMResponse:
        response = await self.llm.chat(messages, **kwargs)
        self.meter.add(response)
        return response

    async def complete(self, prompt, **kwargs) -> LLMResponse:
        response = await self.llm.complete(prompt, **kwargs)
        self.meter.add(response)
        return response


# --- configuration -------------------------------------------------------------------------------------


def _prompt_hashes() -> dict[str, str]:
    return {name: load_prompt(name).sha256 for name in available_prompts()}


def scoring_config_hash(job: JobConfig) -> str:
    """A hash of what changes scores: scorers and their options, the simulator, sampling (hence the test
    split), every prompt template file and the package version."""
    return config_hash(
        {
            "source": job.source,
            "simulator": simulator_spec(job) if any_needs_llm(job.scorers, job.scorer_options) else None,
            "scorers": sorted(job.scorers),
            "scorer_options": {name: job.scorer_options.get(name, {}) for name in sorted(job.scorers)},
            "sampling": dataclasses.asdict(job.sampling),
            "prompts": _prompt_hashes(),
            "version": __version__,
        }
    )


def job_config_hash(job: JobConfig) -> str:
    """A hash of everything that changes a job's results: the scoring configuration plus explainer, prompt,
    k and evidence. Not: which features, concurrency, endpoint, rate limits or prices."""
    return config_hash(
        scoring_config_hash(job), {"explainer": job.explainer, "prompt": job.prompt, "k": job.k, "evidence": job.evidence}
    )


def check_job(job: JobConfig) -> None:
    if not job.source:
        raise AutointerpError("name the `source` to label (`autointerp features` lists the sources of a store)")
    if job.prompt not in STYLES:
        raise AutointerpError(f"unknown explainer prompt {job.prompt!r}; choose one of {', '.join(STYLES)}")
    if job.evidence and not STYLES[job.prompt].max_examples:
        raise AutointerpError(
            f"`evidence` adds token counts from the examples, which the {job.prompt} prompt does not show; "
            "use the combined prompt for examples, token counts and output evidence together"
        )
    if job.ray and job.batch:
        raise AutointerpError("`ray` and `batch` do not go together (provider batches need no workers): leave one out")
    if job.ray_workers is not None and not job.ray:
        raise AutointerpError("`ray_workers` needs `ray` (auto, or a Ray cluster's address)")


def parse_feature_spec(spec: str) -> tuple[int | None, list[int]]:
    """("auto:N" -> (N, [])) or ("0-99", "1,5,9", "0-9,20" -> (None, sorted distinct features))."""
    spec = spec.strip()
    bad = AutointerpError(f"cannot read `features` {spec!r}: write a range (0-99), a list (1,5,9) or auto:N")
    if spec.startswith("auto:"):
        try:
            n = int(spec[5:])
        except ValueError:
            raise bad from None
        if n < 1:
            raise bad
        return n, []
    features: set[int] = set()
    for part in spec.split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise bad from None
        if first < 0 or last < first:
            raise bad
        features.update(range(first, last + 1))
    return None, sorted(features)


def resolve_features(con, source: SourceInfo, spec: str, sampling: SamplingConfig) -> list[int]:
    n_auto, features = parse_feature_spec(spec)
    if n_auto is not None:
        silent = sampling.n_test_random_negatives + sampling.n_valid_random_negatives
        chosen = select_features(con, source.source_id, n_auto, sampling.seed, sampling.min_active_contexts, silent)
        if not chosen:
            raise AutointerpError(
                f"no feature of {source.name!r} fires in at least {sampling.min_active_contexts} contexts and stays "
                f"silent in at least {silent}; collect more tokens or lower min_active_contexts"
            )
        return chosen
    if source.width and features[-1] >= source.width:
        raise AutointerpError(
            f"source {source.name!r} has {source.width} features (0..{source.width - 1}); feature {features[-1]} does not exist"
        )
    return features


def job_features(con, source: SourceInfo, job: JobConfig) -> list[int]:
    """The job's features; a prompt that shows output evidence needs it stored for every one of them."""
    features = resolve_features(con, source, job.features, job.sampling)
    if STYLES[job.prompt].output:
        have = output_queries.features_with(con, source.source_id, output_queries.LOGIT_LENS)
        missing = [f for f in features if f not in have]
        if missing:
            first = ", ".join(map(str, missing[:5]))
            raise AutointerpError(
                f"the {job.prompt} prompt shows output evidence, and {len(missing)} of the {len(features)} features "
                f"of {source.name!r} have none stored ({first}{', ...' if len(missing) > 5 else ''}); compute it with "
                f"`autointerp effects --source {source.name}` (neuron and SAE sources; this one holds "
                f"{source.feature_kind} features), or choose a prompt that reads activations alone"
            )
    return features


# --- the job -------------------------------------------------------------------------------------------


def new_run_id(kind: str) -> str:
    return f"{kind}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def make_job_llm(spec: str, job: JobConfig, *, store: Store | None, run_id: str | None) -> Any:
    """The job's LLM for `spec`: remote models get `concurrency` requests in flight and the job's rpm/tpm;
    the local model keeps its own limits (one llama.cpp server answers one request at a time)."""
    limits = None if spec.startswith("local") else RateLimits(job.concurrency, job.rpm, job.tpm)
    prices = PriceTable.from_toml(job.prices) if job.prices else None
    return make_llm(spec, store=store, run_id=run_id, base_url=job.base_url, limits=limits, prices=prices)


def session_delay(now: float, last_start: float, last_end: float, interval_s: float) -> float:
    """Seconds until a job's next store session may start: `interval_s` after the last one started, and
    `READER_GAP_S` after it ended."""
    return max(0.0, last_start + interval_s - now, last_end + READER_GAP_S - now)


class _StoreSessions:
    """The job's store work, batched: features are sampled ahead (up to `prefetch` ready) and finished
    features' rows queued, and both are served together in one connection session starting at most every
    `min_interval_s`, so the file is opened about once a second whatever the concurrency and is free for
    other processes (the web catalog) in between: for the rest of the interval, and for `READER_GAP_S` at
    least after a session that took longer (a job that waits a whole interval after such a session leaves
    its workers idle: it ran in waves at 2/3 of its speed). A session samples enough to serve the workers
    waiting for a feature and to leave `prefetch` more ready, so that the workers do not wait for the next.
    Queued writes go in transactions of up to `WRITES_PER_COMMIT` (a commit costs more than a feature's rows),
    each a few multi-row statements for all its features, with their labels embedded in one MiniLM call (off
    the event loop) before the session opens the file; features finished during a session wait for the next
    one. The open, the commits and the closing checkpoint run on the job's store thread; the loop yields
    between sampling slices, so LLM answers keep flowing. Every session ends with a checkpoint: DuckDB 1.5.5
    replaying a write-ahead log left by a session closed without one lost entries of the `scores` index
    (lookups by explanation id then missed stored scores; tests/test_resume.py caught it)."""

    def __init__(
        self,
        store: Store,
        features: list[int],
        sample_batch,
        writer: _Writer,
        prefetch: int,
        min_interval_s: float = 1.0,
    ):
        self.store = store
        self._todo = iter(features)
        self._sample_batch = sample_batch  # features -> iterator of (feature, FeatureExamples or the exception raised)
        self._writer = writer
        self._prefetch = prefetch
        self.min_interval_s = min_interval_s
        self._ready: asyncio.Queue = asyncio.Queue()
        self._writes: list[_Finished] = []
        self._exhausted = False
        self._wanted = 0  # workers waiting for a feature
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._last_start = self._last_end = -math.inf
        self.error: BaseException | None = None  # a failed session: the job stops with it
        self._store_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    async def _in_store_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run store work (the open, commits, the closing checkpoint) on the job's one store thread: DuckDB
        lets go of the GIL while it writes and syncs the file, so the event loop keeps serving LLM answers
        meanwhile (on the loop, a session's writes and checkpoint stalled every feature in flight; under load
        a third of the loop's time). Work handed over runs to its end even when the caller is cancelled, and
        one thread keeps it in order."""
        work = contextvars.copy_context().run
        future = asyncio.get_running_loop().run_in_executor(self._store_thread, work, in_thread(fn), *args)
        return await asyncio.shield(future)

    async def next_feature(self) -> tuple[int, Any] | None:
        """(feature, its examples or the exception sampling raised), or None when no feature is left."""
        if self.error is not None:
            raise self.error
        if self._ready.empty():
            if self._exhausted:
                return None
            self._wanted += 1
            self._schedule()
            try:
                item = await self._ready.get()
            finally:
                self._wanted -= 1
            if self.error is not None:
                raise self.error
            return item
        item = self._ready.get_nowait()
        if self._ready.qsize() <= self._prefetch // 2:
            self._schedule()
        return item

    def write(self, item: _Finished) -> None:
        """Store the item's rows in a transaction of the next session."""
        self._writes.append(item)
        self._schedule()

    def _schedule(self) -> None:
        if self._handle is None and self._task is None:
            delay = session_delay(time.monotonic(), self._last_start, self._last_end, self.min_interval_s)
            self._handle = asyncio.get_running_loop().call_later(delay, self._start)

    def _start(self) -> None:
        self._handle = None
        self._last_start = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._session(sample_more=True))

    @staged("store")
    async def _session(self, sample_more: bool) -> None:
        try:
            # embed what is queued before the file is opened: the first embedding loads MiniLM (seconds),
            # and readers (the web catalog, `autointerp search`) wait while a session holds the file
            await self._writer.prepare(self._writes)
            await self._in_store_thread(lambda: self.store.con)  # one connection for the whole session
            await self._write_queued()
            need = self._prefetch - self._ready.qsize() + self._wanted  # the waiting workers, and a full queue after them
            if sample_more and not self._exhausted and need > 0:
                batch = list(itertools.islice(self._todo, need))
                self._exhausted = len(batch) < need
                with cpu_stage("sample"), contextlib.closing(self._sample_batch(batch)) as sampled:
                    handed = time.monotonic()
                    for item in sampled:
                        self._ready.put_nowait(item)
                        if time.monotonic() - handed >= SAMPLING_SLICE_S:
                            await asyncio.sleep(0)
                            handed = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - handed to the workers, which stop the job
            self.error = self.error or exc
        finally:
            try:
                await self._in_store_thread(self.store.close)
            finally:
                self._last_end = time.monotonic()
                self._task = None
        waiting = self._wanted - self._ready.qsize()
        if self.error is not None or self._exhausted:
            for _ in range(max(0, waiting)):
                self._ready.put_nowait(None)
        elif self._writes or waiting > 0:
            self._schedule()

    @staged("write")
    async def _write_queued(self) -> None:
        """Write what is queued now (after the ledgers' flush, so every answer a label used is stored first);
        items queued meanwhile wait for the next call."""
        if not self._writes:
            return
        self._writer.flush_ledgers()
        queued, self._writes = self._writes, []
        try:
            while queued:
                chunk = queued[:WRITES_PER_COMMIT]
                await self._writer.prepare(chunk)
                queued = queued[WRITES_PER_COMMIT:]
                try:
                    await self._commit(chunk)
                except Exception:  # noqa: BLE001 - one write failed: the others are stored on their own, as before
                    for i, item in enumerate(chunk):
                        try:
                            await self._commit([item])
                        except Exception:
                            queued[:0] = chunk[i + 1 :]
                            raise
        finally:
            self._writes[:0] = queued
        await self._in_store_thread(self._write_counts)

    async def _commit(self, items: list[_Finished]) -> None:
        await self._in_store_thread(self._write_batch, items)
        self._writer.committed(items)

    def _write_batch(self, items: list[_Finished]) -> None:
        with self.store.writing() as con:
            self._writer.write_batch(con, items)

    def _write_counts(self) -> None:
        with self.store.writing() as con:
            self._writer.write_counts(con)

    async def finish(self) -> None:
        """Write everything still queued (also after Ctrl-C) and close the file with a checkpoint."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._task is not None:
            await asyncio.wait([self._task])
        try:
            await self._session(sample_more=False)
        finally:
            self._store_thread.shutdown(wait=False)


@dataclass
class _Finished:
    """A finished feature's rows, queued for the next store session: its label or its failure, and its job row."""

    result: FeatureResult | None  # None: a failure of the whole job, which no feature row goes with
    label: NewLabel | None = None
    failure: dict[str, Any] | None = None  # `jobs.record_failure`'s keyword arguments


class _Writer(Protocol):
    """What `_StoreSessions` asks of the job around its writes (`_Job`)."""

    def flush_ledgers(self) -> None: ...

    async def prepare(self, items: list[_Finished]) -> None:
        """Anything the items need before they are written, off the store (label embeddings)."""

    def write_batch(self, con, items: list[_Finished]) -> None: ...

    def committed(self, items: list[_Finished]) -> None: ...

    def write_counts(self, con) -> None: ...


class StagesRunner(Protocol):
    """Where a driver other than this process runs each feature's explain and score stages (`autointerp.ray_label`)."""

    in_flight: int  # features handed out at once

    async def run(self, run_id: str, examples: FeatureExamples) -> tuple[stages.StagesOutcome, Meter]:
        """The feature's outcome and what its LLM calls used; the calls' ledger rows are kept for `flush`."""
        ...

    def flush(self) -> None:
        """Write the ledger rows of the calls made so far into the store (before the labels they produced)."""
        ...


class _Job:
    """One running job or scoring: its run row, LLMs (made on first use, one per model spec), tallies and
    the per-feature steps."""

    def __init__(
        self, store: Store, job: JobConfig, run_id: str, chash: str, source: SourceInfo, runner: StagesRunner | None = None
    ):
        self.store, self.job, self.run_id, self.chash, self.source = store, job, run_id, chash, source
        self.meter = Meter()
        self.results: list[FeatureResult] = []
        self.sessions: _StoreSessions | None = None
        self._llms: dict[str, _MeteredLLM] = {}
        self._tries: dict[int, int] = {}
        self._runner = runner
        self.later: list[tuple[int, FeatureExamples]] = []  # transient failures, to try again after the rest
        self._output_context: OutputContext | None = None
        self.make_scorers()  # fail on unknown scorers or options before any feature starts

    def llm(self, spec: str) -> _MeteredLLM:
        if spec not in self._llms:
            self._llms[spec] = _MeteredLLM(
                make_job_llm(spec, self.job, store=self.store, run_id=self.run_id), self.meter
            )
        return self._llms[spec]

    def make_scorers(self) -> list[Scorer]:
        return stages.make_scorers(self.job, self.llm, self.output_context)

    def output_context(self) -> OutputContext:
        """The output scorer's subject model and other labels, loaded once per job on first use."""
        if self._output_context is None:
            try:
                self._output_context = output_context(self.store, self.source)
            finally:
                self.store.close()
        return self._output_context

    async def aclose(self) -> None:
        for llm in self._llms.values():
            await llm.aclose()

    def flush_ledgers(self) -> None:
        for llm in self._llms.values():
            ledger = getattr(llm.llm, "ledger", None)
            if ledger is not None:
                ledger.flush()
        if self._runner is not None:
            self._runner.flush()

    def _counts(self) -> dict[str, Any]:
        statuses = [r.status for r in self.results]
        return {
            "n_done": statuses.count("done") + statuses.count("already_done"),
            "n_failed": statuses.count("failed"),
            "n_skipped": statuses.count("skipped_sparse"),
            "prompt_tokens": self.meter.prompt_tokens,
            "completion_tokens": self.meter.completion_tokens,
            "cost_usd": self.meter.cost_usd,
        }

    def create_run(self, kind: str, n_total: int) -> None:
        with self.store.writing() as con:
            jobs.create_run(con, self.run_id, kind, _job_record(self.job), self.chash, n_total)

    def write_counts(self, con) -> None:
        jobs.update_run(con, self.run_id, **self._counts())

    def update_run(self, status: str | None = None, ended: bool = False) -> None:
        try:
            _ = self.store.con  # one connection for the ledger flush and the update
            self.flush_ledgers()
            with self.store.writing() as con:
                jobs.update_run(con, self.run_id, status=status, ended=ended, **self._counts())
        finally:
            self.store.close()

    async def prepare(self, items: list[_Finished]) -> None:
        """Embed the labels that come without a vector, together (one MiniLM call for a transaction's labels
        costs a fraction of one call per label)."""
        todo = [item.label for item in items if item.label is not None and item.label.embedding is None]
        if todo:
            vectors = await embed_texts_async([lab.explanation.label for lab in todo])
            for lab, vector in zip(todo, vectors):
                lab.embedding = vector

    def write_batch(self, con, items: list[_Finished]) -> None:
        """The items' labels, failures and job rows, a few statements for them all."""
        labeled = [item for item in items if item.label is not None]
        for item, explanation_id in zip(labeled, write_labels(con, [item.label for item in labeled])):
            item.result.explanation_id = explanation_id
        for item in items:
            if item.failure is not None:
                jobs.record_failure(con, **item.failure)
        jobs.mark_features(
            con,
            [
                jobs.FeatureMark(self.chash, self.source.source_id, r.feature, r.status, self.run_id, r.explanation_id, r.error)
                for r in (item.result for item in items)
                if r is not None
            ],
        )

    def committed(self, items: list[_Finished]) -> None:
        self.results.extend(item.result for item in items if item.result is not None)

    def _failed(self, feature: int, stage: str, exc: BaseException) -> None:
        self._record_failure(feature, stage, stages.describe_error(exc), stages.rerun_may_help(exc))

    def _record_failure(
        self, feature: int, stage: str, error: str, rerun_may_help: bool, raw: str | None = None,
        baseline: BaselineLabel | None = None,
    ) -> None:
        result = FeatureResult(
            feature, "failed", stage=stage, error=error, rerun_may_help=rerun_may_help, baseline=baseline
        )
        self.sessions.write(_Finished(result, failure=self.failure_row(feature, stage, error, raw)))

    def failure_row(self, feature: int | None, stage: str, error: str, raw: str | None = None) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "source_id": self.source.source_id, "feature": feature, "stage": stage,
            "error": error, "raw_output": raw,
        }

    def sample(self, feature: int) -> FeatureExamples:
        try:
            return sample(self.store, self.job.source, feature, self.job.sampling)
        finally:
            self.store.close()

    def sample_batch(
        self, features: list[int], firing: set[int]
    ) -> Iterator[tuple[int, FeatureExamples | AutointerpError]]:
        return stages.sample_features(self.store, self.job, self.source, features, firing)

    async def score(
        self, explanation: Explanation, examples: FeatureExamples, on_stage=None, scorers: list[Scorer] | None = None
    ) -> list[Score]:
        return await stages.score(explanation, examples, scorers or self.make_scorers(), on_stage)

    async def label_feature(self, feature: int, sampled: FeatureExamples | AutointerpError) -> None:
        if isinstance(sampled, TooFewActivations):
            self.sessions.write(_Finished(FeatureResult(feature, "skipped_sparse", stage="sample", error=str(sampled))))
            return
        if isinstance(sampled, AutointerpError):
            self._failed(feature, "sample", sampled)
            return
        self.record_outcome(feature, sampled, await self.run_stages(sampled))

    async def run_stages(self, examples: FeatureExamples) -> stages.StagesOutcome:
        """Explain and score one feature: here, or on the job's runner (`autointerp.ray_label`)."""
        if self._runner is None:
            return await stages.explain_and_score(
                examples, self.llm, self.job, context_for=self.output_context, embed_label=False
            )
        outcome, used = await self._runner.run(self.run_id, examples)
        self.meter.merge(used)
        return outcome

    def record_outcome(self, feature: int, examples: FeatureExamples, outcome: stages.StagesOutcome) -> None:
        """Queue a feature's label or failure; a fatal LLM error stops the job, a transient one tries it later."""
        if outcome.error is not None:
            if outcome.llm_kind in FATAL_LLM_ERRORS:
                raise LLMCallError(outcome.error, outcome.llm_kind)
            if outcome.llm_kind in TRANSIENT and self._try_later(feature, examples):
                return
            self._record_failure(
                feature, outcome.stage, outcome.error, outcome.rerun_may_help, outcome.raw, outcome.baseline
            )
            return
        explanation = outcome.explanation
        result = FeatureResult(
            feature, "done", label=explanation.label, scores=outcome.scores, baseline=outcome.baseline
        )
        self.sessions.write(_Finished(result, label=self.new_label(explanation, examples, outcome.scores, outcome.vector)))

    def _try_later(self, feature: int, examples: FeatureExamples) -> bool:
        self._tries[feature] = self._tries.get(feature, 1) + 1
        if self._tries[feature] > FEATURE_TRIES:
            return False
        self.later.append((feature, examples))
        return True

    async def label_again(self, concurrency: int) -> None:
        """Label the features put off by transient failures (`later`), `concurrency` at a time, until none is left
        (bounded: each feature gets FEATURE_TRIES tries in all)."""
        while self.later:
            todo, self.later = iter(self.later), []

            async def worker() -> None:
                for feature, examples in todo:
                    await self.label_feature(feature, examples)

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    def new_label(self, explanation: Explanation, examples: FeatureExamples, scores: list[Score], vector) -> NewLabel:
        return stages.new_label(explanation, examples, scores, vector, run_id=self.run_id, config_hash=self.chash)


def _job_record(job: JobConfig) -> dict[str, Any]:
    return {**dataclasses.asdict(job), "simulator": simulator_spec(job)}


def _already_done(
    store: Store, chash: str, source: SourceInfo, features: list[int], statuses: dict[int, str]
) -> list[FeatureResult]:
    with store.reading() as con:
        ids = jobs.feature_explanation_ids(con, chash, source.source_id)
        labels = {lab.feature: lab for lab in load_labels(con, [ids[f] for f in features if f in ids])}
    out = []
    for f in features:
        if statuses.get(f) == "skipped_sparse":
            out.append(FeatureResult(f, "skipped_sparse", stage="sample", error="too few activations (an earlier run)"))
        elif f in labels:
            lab = labels[f]
            out.append(
                FeatureResult(
                    f, "already_done", label=lab.label, explanation_id=lab.explanation_id, scores=lab.scores,
                    baseline=BaselineLabel.from_details(lab.details.get("baseline")),
                )
            )
    return out


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="feature", file=sys.stderr, disable=not enabled, dynamic_ncols=True, smoothing=0.1)


def run_label_job(store: Store, job: JobConfig, progress: bool = True) -> JobSummary:
    """Label, score and store the job's features; see the module docstring. Ctrl-C leaves the run 'interrupted'."""
    return asyncio.run(label_job(store, job, progress=progress))


async def label_job(store: Store, job: JobConfig, progress: bool = True) -> JobSummary:
    """The job as a coroutine (for callers that already run an event loop); see `run_label_job`. With `job.ray`
    set, the explain and score stages run on that Ray cluster (`autointerp.ray_label`)."""
    if job.ray:
        from autointerp.ray_label import alabel_on_ray

        return await alabel_on_ray(store, job, progress=progress)
    with job_lock(store.path, "label job"):
        return await _label_job(store, job, progress)


async def _label_job(store: Store, job: JobConfig, progress: bool, runner: StagesRunner | None = None) -> JobSummary:
    """The job; with a `runner`, the explain and score stages run there and this process samples and writes."""
    started = time.monotonic()
    check_job(job)
    with _job_collector():
        return await _run_label_job(store, job, progress, runner, started)


@contextlib.contextmanager
def _job_collector() -> Iterator[None]:
    """The collector as a job wants it (`JOB_GC_THRESHOLD`), the caller's thresholds back afterwards."""
    gc.freeze()  # what lives now (modules, the store's caches) outlives the job: full collections skip it
    previous = gc.get_threshold()
    gc.set_threshold(*JOB_GC_THRESHOLD)
    try:
        yield
    finally:
        gc.set_threshold(*previous)


async def _run_label_job(
    store: Store, job: JobConfig, progress: bool, runner: StagesRunner | None, started: float
) -> JobSummary:
    chash = job_config_hash(job)
    with store.reading() as con:
        source = get_source(con, job.source)
        features = job_features(con, source, job)
        statuses = jobs.feature_statuses(con, chash, source.source_id)
        firing = jobs.firing_features(con, source.source_id, features)
    finished = {f for f in features if statuses.get(f) in jobs.FINISHED_STATUSES}
    todo = [f for f in features if f not in finished]
    state = _Job(store, job, new_run_id("label"), chash, source, runner)
    state.create_run("label", len(features))
    state.results.extend(_already_done(store, chash, source, sorted(finished), statuses))
    in_flight = job.concurrency if runner is None else runner.in_flight
    sessions = state.sessions = _StoreSessions(
        store,
        todo,
        lambda batch: state.sample_batch(batch, firing),
        state,
        prefetch=max(2, in_flight),
    )
    status = "failed"
    bar = _progress_bar(len(todo), progress)
    try:

        async def worker() -> None:
            while (item := await sessions.next_feature()) is not None:
                await state.label_feature(*item)
                m = state.meter
                bar.set_postfix_str(f"{m.prompt_tokens + m.completion_tokens:,} tok, ${m.cost_usd:.4f}", refresh=False)
                bar.update(1)

        tasks = [asyncio.create_task(worker()) for _ in range(min(in_flight, len(todo)))]
        try:
            await asyncio.gather(*tasks)
            await state.label_again(in_flight)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if sessions.error is not None:
            raise sessions.error
        status = "done"
    except asyncio.CancelledError:
        status = "interrupted"
        raise
    except LLMCallError as exc:
        error = str(exc)
        sessions.write(_Finished(None, failure=state.failure_row(None, "job", error)))
        raise AutointerpError(f"the job stopped: {error}") from None
    finally:
        bar.close()
        await state.aclose()
        await sessions.finish()  # write what is still queued
        state.update_run(status=status, ended=True)
        if sessions.error is not None and status != "failed":
            raise sessions.error
    results = sorted(state.results, key=lambda r: r.feature)
    return JobSummary(state.run_id, status, chash, source.name, results, state.meter, time.monotonic() - started)


# --- a label a person proposes -------------------------------------------------------------------------


def score_label(store: Store, job: JobConfig, feature: int, label: str) -> FeatureResult:
    """Score a person's label on the feature's test split (the same split a job with `job.sampling` scores
    on) and store it as author "human" with its scores, in a run of kind "score"."""
    return asyncio.run(ascore_label(store, job, feature, label))


async def ascore_label(store: Store, job: JobConfig, feature: int, label: str) -> FeatureResult:
    label = " ".join(label.split())
    if not label:
        raise AutointerpError("the `label` to score is empty")
    check_job(job)
    with store.reading() as con:
        source = get_source(con, job.source)
    state = _Job(store, job, new_run_id("score"), scoring_config_hash(job), source)
    examples = state.sample(feature)
    state.create_run("score", 1)
    status = "failed"
    try:
        explanation = Explanation(source=source.name, feature=feature, label=label, author="human")
        scores = await state.score(explanation, examples)
        vector = await stages.label_vector(label)
        with store.writing() as con:
            (explanation_id,) = write_labels(con, [state.new_label(explanation, examples, scores, vector)])
        state.results.append(FeatureResult(feature, "done", label=label, explanation_id=explanation_id, scores=scores))
        status = "done"
    except asyncio.CancelledError:
        status = "interrupted"
        raise
    finally:
        await state.aclose()
        state.update_run(status=status, ended=True)
    return state.results[0]
