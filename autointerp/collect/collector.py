"""Recording a source: corpus -> fixed-length contexts -> subject model up to one layer -> sparse activations.

Contexts are non-overlapping windows of `context_len` tokens cut from each tokenized document (a document's
tail shorter than a window is left out, so no window spans two documents and none is padded). Batches run
the model only up to the hooked layer. Every chunk of contexts is stored in one transaction together with
where the next chunk starts in the corpus, so a killed run continues where it stopped when run again.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from autointerp.collect.corpora import iter_documents
from autointerp.collect.features import (
    MLP_IN,
    NEURONS,
    FeatureSource,
    SaeFeatures,
    load_feature_source,
)
from autointerp.collect.models import SubjectModel, load_subject_model, model_short_name
from autointerp.errors import AutointerpError
from autointerp.store import Store
from autointerp.store.activations import (
    append_chunk,
    collection_progress,
    create_source,
    finalize_source,
)

MAX_CONTEXT_LEN = 32767  # positions are stored as SMALLINT


@dataclass(frozen=True)
class CollectConfig:
    model: str = "smollm2"
    layer: int | None = None  # required for neurons; SAEs default to the layer their config names
    features: str = NEURONS  # neurons | sae:PATH
    dataset: str = "stdlib-docs"
    tokens: int = 100_000
    context_len: int = 64
    source: str | None = None  # default: {model}-L{layer}-neurons or {model}-L{layer}-sae-{folder}
    text_column: str = "text"
    top_k_per_token: int = 32  # neurons only; 0 keeps every positive value
    batch_size: int = 32  # contexts per forward pass
    chunk_tokens: int = 32_768  # tokens per stored chunk (one transaction, the unit of resume)
    device: str | None = None
    dtype: str | None = None


@dataclass
class CollectReport:
    source: str
    source_id: int
    already_complete: bool
    n_contexts: int  # stored in the source, this run and earlier ones
    n_tokens: int
    new_tokens: int  # this run
    new_activations: int
    seconds: float  # this run's forward passes, extraction and writes, without loading or finalising
    finalize_seconds: float
    cpu_seconds: float = 0.0  # process CPU time of the same span as `seconds` (all threads)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


@dataclass
class Context:
    document_id: int
    doc_offset: int  # position of the window's first document token in the tokenized document
    token_ids: list[int]


class _StopForward(Exception):
    """Raised by the capture hook: nothing after the hooked layer needs computing."""


class LayerReader:
    """Runs the subject model up to one layer and returns what a feature source reads there, [batch, pos, d]."""

    def __init__(self, subject: SubjectModel, features: FeatureSource):
        self.model = subject.model
        self.device = subject.device
        self._captured: torch.Tensor | None = None
        if features.capture == MLP_IN:
            module = subject.mlp_out_proj(features.layer)
            self.hookpoint = f"{subject.module_name(module)}:input"
            self._handle = module.register_forward_pre_hook(self._capture_input)
        else:
            module = subject.layer(features.layer)
            self.hookpoint = f"{subject.module_name(module)}:output"
            self._handle = module.register_forward_hook(self._capture_output)

    def _capture_input(self, module: Any, args: tuple) -> None:
        self._captured = args[0]
        raise _StopForward

    def _capture_output(self, module: Any, args: tuple, output: Any) -> None:
        self._captured = output[0] if isinstance(output, tuple) else output
        raise _StopForward

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        self._captured = None
        with torch.inference_mode():
            try:
                self.model(input_ids=input_ids, use_cache=False)
            except _StopForward:
                pass
        if self._captured is None:
            raise RuntimeError("the capture hook did not fire during the forward pass")
        captured, self._captured = self._captured, None
        return captured

    def close(self) -> None:
        self._handle.remove()

    def __enter__(self) -> LayerReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TokenPieces:
    """Each token id decoded on its own (" the", not "Ġthe"), cached: what a reader sees of that token."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, ids: Iterable[int]) -> list[str]:
        out = []
        for i in ids:
            piece = self._cache.get(i)
            if piece is None:
                piece = self._cache[i] = self.tokenizer.decode([i])
            out.append(piece)
        return out


def prepends_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer starts every sequence with BOS; contexts then do too, as the model expects."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a").input_ids
    return bos is not None and len(ids) > 0 and ids[0] == bos


def iter_contexts(
    documents: Iterable[tuple[int, str]],
    tokenizer: Any,
    context_len: int,
    *,
    bos: bool = False,
    start: tuple[int, int] | None = None,
) -> Iterator[Context]:
    """Non-overlapping windows of each document; `start` = (document_id, doc_offset) of the first window."""
    body = context_len - 1 if bos else context_len
    prefix = [tokenizer.bos_token_id] if bos else []
    for doc_id, text in documents:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        first = start[1] if start is not None and doc_id == start[0] else 0
        for offset in range(first, len(ids) - body + 1, body):
            yield Context(doc_id, offset, prefix + ids[offset : offset + body])


def default_source_name(model: str, features: FeatureSource) -> str:
    if isinstance(features, SaeFeatures):
        return f"{model_short_name(model)}-L{features.layer}-sae-{features.path.rstrip('/').split('/')[-1]}"
    return f"{model_short_name(model)}-L{features.layer}-{NEURONS}"


@dataclass(frozen=True)
class SourceSpec:
    """What the store records about a collected source, known once the model and feature source are loaded."""

    name: str
    model: str
    hookpoint: str
    layer: int
    feature_kind: str
    width: int
    bos: bool
    config: dict


def load_features(cfg: CollectConfig, subject: SubjectModel) -> FeatureSource:
    """The configured feature source, on the subject model's device."""
    features = load_feature_source(
        cfg.features, d_model=subject.d_model, d_mlp=subject.d_mlp, layer=cfg.layer, top_k=cfg.top_k_per_token
    )
    if isinstance(features, SaeFeatures):
        features.to(subject.device)
    return features


def source_spec(cfg: CollectConfig, features: FeatureSource, hookpoint: str, bos: bool) -> SourceSpec:
    return SourceSpec(
        name=cfg.source or default_source_name(cfg.model, features),
        model=cfg.model,
        hookpoint=hookpoint,
        layer=features.layer,
        feature_kind=features.kind,
        width=features.width,
        bos=bos,
        config=_identity(cfg, features, bos),
    )


@dataclass
class CollectionPlan:
    """Where a collection stands in the store and the chunks still to record, in order."""

    source_id: int
    already_complete: bool
    n_target: int  # contexts wanted
    chunk_index: int  # of the first chunk still to record
    context_id: int  # of the first context still to record
    chunks: Iterator[tuple[list[Context], dict[str, Any]]]


def plan_collection(store: Store, cfg: CollectConfig, spec: SourceSpec, tokenizer: Any) -> CollectionPlan:
    """Create the source (or find the one to resume) and cut the corpus into the chunks still missing.

    Chunk boundaries, context ids and resume states depend only on the corpus, the tokenizer and `cfg`, so
    every way of running the chunks (in process, on Ray workers) stores the same rows.
    """
    check_config(cfg)
    documents = iter_documents(cfg.dataset, text_column=cfg.text_column)
    if next(iter_contexts(documents, tokenizer, cfg.context_len, bos=spec.bos), None) is None:
        raise AutointerpError(f"no document of {cfg.dataset!r} has {cfg.context_len} tokens; use a shorter `context_len`")
    n_target = cfg.tokens // cfg.context_len
    with store.writing() as con:
        info = create_source(
            con,
            spec.name,
            model=spec.model,
            hookpoint=spec.hookpoint,
            layer=spec.layer,
            feature_kind=spec.feature_kind,
            width=spec.width,
            context_len=cfg.context_len,
            config=spec.config,
        )
        chunk_index, context_id, state = collection_progress(con, info.source_id)
    done = context_id >= n_target or bool(state and state.get("exhausted"))
    start = (state["document"], state["offset"]) if state else None
    documents = iter_documents(cfg.dataset, text_column=cfg.text_column, start=start[0] if start else 0)
    contexts = iter_contexts(documents, tokenizer, cfg.context_len, bos=spec.bos, start=start)
    chunks = _chunks(
        contexts,
        per_chunk=max(1, cfg.chunk_tokens // cfg.context_len),
        n_wanted=0 if done else n_target - context_id,
        step=cfg.context_len - (1 if spec.bos else 0),
    )
    return CollectionPlan(info.source_id, done and info.status == "ready", n_target, chunk_index, context_id, chunks)


def finish_collection(
    store: Store, spec: SourceSpec, cfg: CollectConfig, plan: CollectionPlan, *, n_contexts: int,
    new_activations: int, seconds: float, cpu_seconds: float,
) -> CollectReport:
    """Finalize the source (sorted activations, statistics) and report this run."""
    t0 = time.perf_counter()
    with store.writing() as con:
        finalize_source(con, plan.source_id)
    return CollectReport(
        source=spec.name,
        source_id=plan.source_id,
        already_complete=False,
        n_contexts=n_contexts,
        n_tokens=n_contexts * cfg.context_len,
        new_tokens=(n_contexts - plan.context_id) * cfg.context_len,
        new_activations=new_activations,
        seconds=seconds,
        finalize_seconds=time.perf_counter() - t0,
        cpu_seconds=cpu_seconds,
    )


def complete_report(spec: SourceSpec, cfg: CollectConfig, plan: CollectionPlan) -> CollectReport:
    return CollectReport(spec.name, plan.source_id, True, plan.context_id, plan.context_id * cfg.context_len, 0, 0, 0.0, 0.0)


def progress_bar(spec: SourceSpec, cfg: CollectConfig, plan: CollectionPlan, progress: bool) -> tqdm:
    return tqdm(
        total=plan.n_target * cfg.context_len,
        initial=plan.context_id * cfg.context_len,
        unit="tok",
        unit_scale=True,
        desc=spec.name,
        disable=not progress,
    )


def collect(
    store: Store,
    cfg: CollectConfig,
    *,
    subject: SubjectModel | None = None,
    on_chunk: Callable[[int], None] | None = None,
    progress: bool = True,
) -> CollectReport:
    """Record `cfg.tokens` tokens of activations into the store, resuming a source collected before.

    `subject`: an already loaded model (skips loading cfg.model; its name must match). `on_chunk(index)`
    runs after each chunk is committed (on the writer thread; an exception there stops the collection).
    """
    check_config(cfg)
    if subject is not None and subject.name != model_short_name(cfg.model):
        raise ValueError(f"the loaded model {subject.name!r} is not the configured {cfg.model!r}")
    subject = subject or load_subject_model(cfg.model, cfg.device, cfg.dtype)
    features = load_features(cfg, subject)
    bos = prepends_bos(subject.tokenizer)

    with LayerReader(subject, features) as reader:
        spec = source_spec(cfg, features, reader.hookpoint, bos)
        plan = plan_collection(store, cfg, spec, subject.tokenizer)
        if plan.already_complete:
            return complete_report(spec, cfg, plan)
        writer = _ChunkWriter(store, plan.source_id, cfg.context_len, bos, TokenPieces(subject.tokenizer), on_chunk)
        chunk_index, context_id = plan.chunk_index, plan.context_id
        t0, c0 = time.perf_counter(), time.process_time()
        with progress_bar(spec, cfg, plan, progress) as bar, writer:
            for chunk, resume in plan.chunks:
                batches = _run_batches(reader, features, chunk, cfg.batch_size, cfg.context_len)
                writer.submit(chunk_index, context_id, chunk, batches, resume)
                chunk_index += 1
                context_id += len(chunk)
                bar.update(len(chunk) * cfg.context_len)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0

    report = finish_collection(
        store, spec, cfg, plan, n_contexts=context_id, new_activations=writer.n_activations,
        seconds=seconds, cpu_seconds=cpu_seconds,
    )
    from autointerp.output_evidence import store_logit_lens  # it imports autointerp.collect: not at module level

    store_logit_lens(store, spec.name, subject)
    return report


def _chunks(
    contexts: Iterator[Context], *, per_chunk: int, n_wanted: int, step: int
) -> Iterator[tuple[list[Context], dict[str, Any]]]:
    """Up to `n_wanted` contexts in chunks, each with the resume state that follows it.

    The state says where the next chunk's first window starts, and whether the corpus ran out first.
    """
    pending = next(contexts, None) if n_wanted > 0 else None
    while pending is not None:
        chunk = [pending, *itertools.islice(contexts, min(per_chunk, n_wanted) - 1)]
        n_wanted -= len(chunk)
        pending = next(contexts, None) if n_wanted > 0 else None
        last = chunk[-1]
        resume = {"document": last.document_id, "offset": last.doc_offset + step, "exhausted": pending is None and n_wanted > 0}
        yield chunk, resume


Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # rows (token index within the chunk), features, values


def _run_batches(
    reader: LayerReader, features: FeatureSource, chunk: list[Context], batch_size: int, context_len: int
) -> list[Batch]:
    """Sparse activations of a chunk's contexts, batch by batch, on the CPU."""
    ids = torch.tensor([c.token_ids for c in chunk], dtype=torch.long)
    out = []
    for b in range(0, len(chunk), batch_size):
        captured = reader(ids[b : b + batch_size].to(reader.device))
        sparse = features.encode(captured.reshape(-1, captured.shape[-1]))
        out.append((sparse.rows.cpu().numpy() + b * context_len, sparse.features.cpu().numpy(), sparse.values.cpu().numpy()))
    return out


def chunk_tables(
    reader: LayerReader, features: FeatureSource, pieces: TokenPieces, chunk: list[Context], first_context_id: int,
    cfg: CollectConfig, bos: bool,
) -> tuple[pa.Table, pa.Table]:
    """The contexts and activations tables of one chunk, computed in one go: what a shard worker returns."""
    batches = _run_batches(reader, features, chunk, cfg.batch_size, cfg.context_len)
    return _tables(chunk, first_context_id, batches, cfg.context_len, bos, pieces)


class _ChunkWriter:
    """Builds and stores chunks on one background thread, in order, while the model computes the next chunk.

    At most one chunk waits in the queue. An error while storing (or in `on_chunk`) is raised in the caller at
    its next `submit` or when the `with` block ends; chunks after a failed one are never stored.
    """

    def __init__(self, store: Store, source_id: int, context_len: int, bos: bool, pieces: TokenPieces, on_chunk):
        self.store, self.source_id, self.context_len, self.bos = store, source_id, context_len, bos
        self.pieces, self.on_chunk = pieces, on_chunk
        self.n_activations = 0
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="autointerp-chunk-writer", daemon=True)

    def __enter__(self) -> _ChunkWriter:
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._queue.put(None)
        self._thread.join()  # a chunk being written when the caller fails still lands whole
        if exc_type is None:
            self._raise_if_failed()

    def submit(self, chunk_index: int, first_context_id: int, chunk: list[Context], batches: list[Batch], resume: dict) -> None:
        self._raise_if_failed()
        self._queue.put((chunk_index, first_context_id, chunk, batches, resume))

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._store(*item)
                except BaseException as exc:
                    self._error = exc

    def _store(self, chunk_index: int, first_context_id: int, chunk: list[Context], batches: list[Batch], resume: dict) -> None:
        contexts, activations = _tables(chunk, first_context_id, batches, self.context_len, self.bos, self.pieces)
        with self.store.writing() as con:
            append_chunk(con, self.source_id, chunk_index, contexts, activations, len(chunk) * self.context_len, resume)
        self.n_activations += activations.num_rows
        if self.on_chunk is not None:
            self.on_chunk(chunk_index)


def check_config(cfg: CollectConfig) -> None:
    if not 2 <= cfg.context_len <= MAX_CONTEXT_LEN:
        raise AutointerpError(f"`context_len` must be between 2 and {MAX_CONTEXT_LEN}")
    if cfg.tokens < cfg.context_len:
        raise AutointerpError(f"`tokens` ({cfg.tokens}) must be at least `context_len` ({cfg.context_len})")
    if cfg.batch_size < 1 or cfg.chunk_tokens < 1:
        raise AutointerpError("`batch_size` and `chunk_tokens` must be positive")


def _identity(cfg: CollectConfig, features: FeatureSource, bos: bool) -> dict[str, Any]:
    """What makes two runs the same source (and a rerun a resume); batch size, device and dtype do not."""
    return {
        "model": cfg.model,
        **features.describe(),
        "layer": features.layer,
        "dataset": cfg.dataset,
        "text_column": cfg.text_column,
        "tokens": cfg.tokens,
        "context_len": cfg.context_len,
        "prepend_bos": bos,
    }


def _tables(
    chunk: list[Context], first_context_id: int, batches: list[Batch], context_len: int, bos: bool, pieces: TokenPieces
) -> tuple[pa.Table, pa.Table]:
    """The contexts and activations tables of one chunk, as `append_chunk` takes them."""
    rows, feature, value = (np.concatenate(p) for p in zip(*batches))
    pos = rows % context_len
    if bos:  # the BOS position looks the same in every context: its activations say nothing about the text
        keep = pos > 0
        rows, pos, feature, value = rows[keep], pos[keep], feature[keep], value[keep]
    activations = pa.table(
        {
            "feature": pa.array(feature.astype(np.int32)),
            "context_id": pa.array((rows // context_len + first_context_id).astype(np.int64)),
            "pos": pa.array(pos.astype(np.int16)),
            "value": pa.array(value.astype(np.float32)),
        }
    )
    ids = np.asarray([c.token_ids for c in chunk], dtype=np.int32).reshape(-1)
    offsets = pa.array(np.arange(len(chunk) + 1, dtype=np.int32) * context_len)
    contexts = pa.table(
        {
            "context_id": pa.array(np.arange(first_context_id, first_context_id + len(chunk), dtype=np.int64)),
            "token_ids": pa.ListArray.from_arrays(offsets, pa.array(ids)),
            "tokens": pa.ListArray.from_arrays(offsets, pa.array(pieces(ids.tolist()), pa.string())),
            "document_id": pa.array([c.document_id for c in chunk], pa.int64()),
            "doc_offset": pa.array([c.doc_offset for c in chunk], pa.int32()),
        }
    )
    return contexts, activations
