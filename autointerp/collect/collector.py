"""Recording a source: corpus -> fixed-length contexts -> subject model up to one layer -> sparse activations.

Contexts are non-overlapping windows of `context_len` tokens cut from each tokenized document (a document's
tail shorter than a window is left out, so no window spans two documents and none is padded). Batches run
the model only up to the hooked layer. Every chunk of contexts is stored in one transaction together with
where the next chunk starts in the corpus, so a killed run continues where it stopped when run again.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from autointerp.collect.corpora import iter_documents
from autointerp.collect.features import MLP_IN, NEURONS, FeatureSource, SaeFeatures, load_feature_source
from autointerp.collect.models import SubjectModel, load_subject_model, model_short_name
from autointerp.errors import AutointerpError
from autointerp.store import Store
from autointerp.store.activations import append_chunk, collection_progress, create_source, finalize_source

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

    def __enter__(self) -> "LayerReader":
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
    runs after each chunk is committed.
    """
    _check(cfg)
    if subject is not None and subject.name != model_short_name(cfg.model):
        raise ValueError(f"the loaded model {subject.name!r} is not the configured {cfg.model!r}")
    subject = subject or load_subject_model(cfg.model, cfg.device, cfg.dtype)
    features = load_feature_source(
        cfg.features, d_model=subject.d_model, d_mlp=subject.d_mlp, layer=cfg.layer, top_k=cfg.top_k_per_token
    )
    if isinstance(features, SaeFeatures):
        features.to(subject.device)
    bos = prepends_bos(subject.tokenizer)
    if next(iter_documents(cfg.dataset, text_column=cfg.text_column), None) is None:
        raise AutointerpError(f"dataset {cfg.dataset!r} has no text")
    name = cfg.source or default_source_name(cfg.model, features)
    n_target = cfg.tokens // cfg.context_len

    with LayerReader(subject, features) as reader:
        with store.writing() as con:
            info = create_source(
                con,
                name,
                model=cfg.model,
                hookpoint=reader.hookpoint,
                layer=features.layer,
                feature_kind=features.kind,
                width=features.width,
                context_len=cfg.context_len,
                config=_identity(cfg, features, bos),
            )
            chunk_index, context_id, state = collection_progress(con, info.source_id)
        done = context_id >= n_target or bool(state and state.get("exhausted"))
        if done and info.status == "ready":
            return CollectReport(name, info.source_id, True, context_id, context_id * cfg.context_len, 0, 0, 0.0, 0.0)

        start = (state["document"], state["offset"]) if state else None
        documents = iter_documents(cfg.dataset, text_column=cfg.text_column, start=start[0] if start else 0)
        contexts = iter_contexts(documents, subject.tokenizer, cfg.context_len, bos=bos, start=start)
        pieces = TokenPieces(subject.tokenizer)
        per_chunk = max(1, cfg.chunk_tokens // cfg.context_len)
        new_contexts = new_activations = 0
        seconds = 0.0
        bar = tqdm(
            total=n_target * cfg.context_len,
            initial=context_id * cfg.context_len,
            unit="tok",
            unit_scale=True,
            desc=name,
            disable=not progress,
        )
        with bar:
            pending = None if done else next(contexts, None)
            if pending is None and context_id == 0:
                raise AutointerpError(
                    f"no document of {cfg.dataset!r} has {cfg.context_len} tokens; use a shorter --context-len"
                )
            while pending is not None and context_id < n_target:
                t0 = time.perf_counter()
                n = min(per_chunk, n_target - context_id)
                chunk = [pending, *itertools.islice(contexts, n - 1)]
                pending = next(contexts, None) if context_id + len(chunk) < n_target else None
                table, activations = _record_chunk(reader, features, chunk, context_id, cfg, bos, pieces, subject.device)
                last = chunk[-1]
                resume = {
                    "document": last.document_id,
                    "offset": last.doc_offset + cfg.context_len - (1 if bos else 0),
                    "exhausted": pending is None and context_id + len(chunk) < n_target,
                }
                with store.writing() as con:
                    append_chunk(
                        con, info.source_id, chunk_index, table, activations, len(chunk) * cfg.context_len, resume
                    )
                seconds += time.perf_counter() - t0
                chunk_index += 1
                context_id += len(chunk)
                new_contexts += len(chunk)
                new_activations += activations.num_rows
                bar.update(len(chunk) * cfg.context_len)
                if on_chunk is not None:
                    on_chunk(chunk_index - 1)

    t0 = time.perf_counter()
    with store.writing() as con:
        finalize_source(con, info.source_id)
    return CollectReport(
        source=name,
        source_id=info.source_id,
        already_complete=False,
        n_contexts=context_id,
        n_tokens=context_id * cfg.context_len,
        new_tokens=new_contexts * cfg.context_len,
        new_activations=new_activations,
        seconds=seconds,
        finalize_seconds=time.perf_counter() - t0,
    )


def _check(cfg: CollectConfig) -> None:
    if not 2 <= cfg.context_len <= MAX_CONTEXT_LEN:
        raise AutointerpError(f"--context-len must be between 2 and {MAX_CONTEXT_LEN}")
    if cfg.tokens < cfg.context_len:
        raise AutointerpError(f"--tokens ({cfg.tokens}) must be at least --context-len ({cfg.context_len})")
    if cfg.batch_size < 1 or cfg.chunk_tokens < 1:
        raise AutointerpError("--batch-size and --chunk-tokens must be positive")


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


def _record_chunk(
    reader: LayerReader,
    features: FeatureSource,
    chunk: list[Context],
    first_context_id: int,
    cfg: CollectConfig,
    bos: bool,
    pieces: TokenPieces,
    device: torch.device,
) -> tuple[pa.Table, pa.Table]:
    """Run a chunk's contexts through the model in batches; the contexts and activations tables to store."""
    ids = np.asarray([c.token_ids for c in chunk], dtype=np.int32)
    parts = []
    for b in range(0, len(chunk), cfg.batch_size):
        batch = torch.from_numpy(ids[b : b + cfg.batch_size]).to(device=device, dtype=torch.long)
        captured = reader(batch)
        sparse = features.encode(captured.reshape(-1, captured.shape[-1]))
        rows = sparse.rows.cpu().numpy()
        parts.append(
            (
                rows // cfg.context_len + first_context_id + b,
                rows % cfg.context_len,
                sparse.features.cpu().numpy(),
                sparse.values.cpu().numpy(),
            )
        )
    context_ids, pos, feature, value = (np.concatenate(p) for p in zip(*parts))
    if bos:  # the BOS position looks the same in every context: its activations say nothing about the text
        keep = pos > 0
        context_ids, pos, feature, value = context_ids[keep], pos[keep], feature[keep], value[keep]
    activations = pa.table(
        {
            "feature": pa.array(feature.astype(np.int32)),
            "context_id": pa.array(context_ids.astype(np.int64)),
            "pos": pa.array(pos.astype(np.int16)),
            "value": pa.array(value.astype(np.float32)),
        }
    )
    offsets = pa.array(np.arange(len(chunk) + 1, dtype=np.int32) * cfg.context_len)
    contexts = pa.table(
        {
            "context_id": pa.array(np.arange(first_context_id, first_context_id + len(chunk), dtype=np.int64)),
            "token_ids": pa.ListArray.from_arrays(offsets, pa.array(ids.reshape(-1))),
            "tokens": pa.ListArray.from_arrays(offsets, pa.array(pieces(ids.reshape(-1).tolist()), pa.string())),
            "document_id": pa.array([c.document_id for c in chunk], pa.int64()),
            "doc_offset": pa.array([c.doc_offset for c in chunk], pa.int32()),
        }
    )
    return contexts, activations
