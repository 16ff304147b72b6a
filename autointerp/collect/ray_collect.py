"""Collection on a Ray cluster: the driver cuts the corpus into chunks, workers record them, the driver stores.

Each worker loads the subject model once (on a GPU of its own when the cluster has GPUs) and turns chunks of
contexts into the two tables of an activation shard. The driver is the store's one writer: it takes the
shards back in chunk order and stores each through the importer's validated path (`import_chunk`), one
transaction per chunk together with its resume state.

The chunks, context ids and resume states are exactly those of the in-process `collect`, so the stored rows
are the same, and a source started one way can be resumed the other. A worker that dies mid-chunk is
restarted by Ray and its chunks run again (up to MAX_RETRIES times); each chunk's result is taken once, by
chunk index, and the store refuses a chunk index it already has, so nothing lands twice and nothing is lost.
"""

from __future__ import annotations

import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from autointerp.collect.collector import (
    CollectConfig,
    CollectReport,
    Context,
    LayerReader,
    SourceSpec,
    TokenPieces,
    check_config,
    chunk_tables,
    complete_report,
    finish_collection,
    load_features,
    plan_collection,
    prepends_bos,
    progress_bar,
    source_spec,
)
from autointerp.collect.models import load_subject_model, load_tokenizer
from autointerp.errors import AutointerpError
from autointerp.ray_cluster import AUTO, connected, worker_errors
from autointerp.store import Store
from autointerp.store.importing import import_chunk

MAX_RETRIES = 3  # restarts of a dead worker, and re-runs of each of its unfinished chunks
IN_FLIGHT_PER_WORKER = 2  # chunks queued on each worker, so none waits while the driver stores


class ShardWorker:
    """A Ray actor: one loaded subject model and feature source, recording chunk after chunk."""

    def __init__(self, cfg: CollectConfig, before_chunk: Callable[[int], None] | None = None):
        self.cfg, self.before_chunk = cfg, before_chunk
        self.error: AutointerpError | None = None
        try:
            subject = load_subject_model(cfg.model, cfg.device, cfg.dtype)
            self.features = load_features(cfg, subject)
            self.reader = LayerReader(subject, self.features)
        except AutointerpError as exc:  # raised by the first call instead: Ray hands the driver a task's error whole
            self.error = exc
            return
        self.bos = prepends_bos(subject.tokenizer)
        self.pieces = TokenPieces(subject.tokenizer)

    def spec(self) -> SourceSpec:
        if self.error is not None:
            raise self.error
        return source_spec(self.cfg, self.features, self.reader.hookpoint, self.bos)

    def record(self, chunk_index: int, first_context_id: int, chunk: list[Context]) -> tuple[pa.Table, pa.Table]:
        if self.error is not None:
            raise self.error
        if self.before_chunk is not None:
            self.before_chunk(chunk_index)
        return chunk_tables(self.reader, self.features, self.pieces, chunk, first_context_id, self.cfg, self.bos)


def collect_on_ray(
    store: Store,
    cfg: CollectConfig,
    *,
    address: str | None = AUTO,
    workers: int | None = None,
    before_chunk: Callable[[int], None] | None = None,
    progress: bool = True,
) -> CollectReport:
    """`collect`, with the forward passes spread over the workers of a Ray cluster.

    address: `auto` starts a local cluster (or uses the one this process is already connected to); otherwise
    a running cluster's address. workers: how many (default: one per GPU of the cluster, else one per CPU).
    before_chunk(index) runs on the worker before each chunk (it travels by cloudpickle). The report's
    `cpu_seconds` is the driver's own CPU time.
    """
    check_config(cfg)
    if workers is not None and workers < 1:
        raise AutointerpError("`workers` must be at least 1")
    tokenizer = load_tokenizer(cfg.model)
    with connected(address, num_cpus=workers) as ray, tempfile.TemporaryDirectory(prefix="autointerp-shards-") as tmp:
        resources = ray.cluster_resources()
        use_gpu = resources.get("GPU", 0) >= 1 and (cfg.device or "auto") != "cpu"
        kind = "GPU" if use_gpu else "CPU"
        n = workers or max(1, int(resources.get(kind, 1)))
        if n > resources.get(kind, 0):  # a worker needs one of them: more would wait for ever
            raise AutointerpError(
                f"`workers` ({n}) is more than the cluster's {int(resources.get(kind, 0))} {kind}s; ask for fewer"
                + (" or set `device` to cpu" if use_gpu else "")
            )
        actor = ray.remote(ShardWorker).options(
            num_cpus=1,
            num_gpus=1 if use_gpu else 0,
            max_restarts=MAX_RETRIES,
            max_task_retries=MAX_RETRIES,
        )
        pool = [actor.remote(cfg, before_chunk) for _ in range(n)]
        try:
            spec = _get(ray, pool[0].spec.remote())
            for ref in [a.spec.remote() for a in pool[1:]]:  # every worker loaded before the clock starts
                _get(ray, ref)
            plan = plan_collection(store, cfg, spec, tokenizer)
            if plan.already_complete:
                return complete_report(spec, cfg, plan)
            chunk_index, context_id, n_activations = plan.chunk_index, plan.context_id, 0
            pending: deque = deque()

            def store_oldest() -> None:
                nonlocal n_activations
                index, n_contexts, resume, ref = pending.popleft()
                contexts, activations = _get(ray, ref)
                n_activations += store_shard(store, plan.source_id, index, contexts, activations, resume, Path(tmp), cfg)
                bar.update(n_contexts * cfg.context_len)

            t0, c0 = time.perf_counter(), time.process_time()
            with progress_bar(spec, cfg, plan, progress) as bar:
                for chunk, resume in plan.chunks:
                    ref = pool[chunk_index % n].record.remote(chunk_index, context_id, chunk)
                    pending.append((chunk_index, len(chunk), resume, ref))
                    chunk_index += 1
                    context_id += len(chunk)
                    if len(pending) >= IN_FLIGHT_PER_WORKER * n:
                        store_oldest()
                while pending:
                    store_oldest()
            seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        finally:
            for a in pool:
                ray.kill(a)
    return finish_collection(
        store, spec, cfg, plan, n_contexts=context_id, new_activations=n_activations,
        seconds=seconds, cpu_seconds=cpu_seconds,
    )


def store_shard(
    store: Store, source_id: int, index: int, contexts: pa.Table, activations: pa.Table, resume: dict,
    folder: Path, cfg: CollectConfig,
) -> int:
    """Write one shard as the importer's two Parquet files (uncompressed: they live for one import) and import
    it as chunk `index`."""
    paths = folder / f"chunk-{index}-contexts.parquet", folder / f"chunk-{index}-activations.parquet"
    pq.write_table(contexts, paths[0], compression="none")
    pq.write_table(activations, paths[1], compression="none")
    try:
        return import_chunk(store, source_id, index, *paths, contexts.num_rows * cfg.context_len, resume)
    finally:
        for p in paths:
            p.unlink()


def _get(ray: Any, ref: Any) -> Any:
    with worker_errors(ray, MAX_RETRIES, "its chunks", "every chunk stored before"):
        return ray.get(ref)
