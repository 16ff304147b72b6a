"""Label embeddings for semantic search: a faiss 4-bit product-quantized fast scan over every label
(`IndexPQFastScan`, 48 bytes a label, held in memory) whose best REFINE_CANDIDATES candidates are re-ranked
by exact cosine over the unit vectors, kept as float16 in a file that is memory-mapped (768 bytes a label
on disk; only the pages a query touches are read, and the kernel may drop them again). Exact (a scan of the
vectors) below PQ_MIN labels.

Chosen by measurement (`python -m autointerp.bench.ann_libs` and the README's table): on the benchmark's
label vectors, where a short query's true neighbours are labels sharing one word with it and sit all over
the space (the 10th and 11th neighbours 0.004 apart in cosine), HNSW graphs in usearch, faiss and hnswlib
reached recall@10 0.78-0.80 at ef 96 (under 0.94 at ef 512), and faiss's inverted file 0.89 probing half
its lists; scanning compact codes of every label and re-ranking reached 0.998 at 100k in 2 ms.

Filters: when the allowed labels are few (ALLOWED_EXACT or less) the search is exact over them (their
vectors gathered from the file). When they are many, the fast scan ranks all labels and its candidates
that are allowed are re-ranked, asking for 4x more until k are found. Rows are labels in the order they
were added (`LabelRows`); a deleted label's row is masked until the next rebuild (faiss cannot remove from
a fast-scan index). Rows added since the vectors file was written sit in memory (`delta`) until the next save.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from autointerp.label_rows import LabelRows

PQ_MIN = 20_000  # below this many labels: exact search
PQ_SUBSPACES, PQ_BITS = 96, 4
TRAIN_SAMPLE = 50_000
REFINE_CANDIDATES = 1000  # fast-scan candidates re-ranked exactly, at least,
REFINE_FRACTION = 0.001  # and this fraction of the labels: the true top 10's ranks in the fast scan grow with
# the labels (1,000 candidates: recall@10 0.997 at 1M, 0.948 at 5M, bench.index_scale)
ALLOWED_EXACT = 20_000  # allowed labels up to which a filtered search is exact over them
THREADS = 2
VECTOR_DTYPE = np.float16  # re-rank vectors (recall@10 at 1M: README, search section)
CHUNK = 65_536  # rows converted or written at a time


def _faiss():
    import faiss

    return faiss


class VectorIndex:
    def __init__(self, dim: int, codes=None, base: np.ndarray | None = None, labels: LabelRows | None = None,
                 staged: Path | None = None) -> None:
        self.dim = dim
        self.codes = codes  # faiss IndexPQFastScan over every row; None: exact
        self.base = np.zeros((0, dim), dtype=VECTOR_DTYPE) if base is None else base  # memmap or array
        self.delta = np.zeros((0, dim), dtype=VECTOR_DTYPE)  # rows added after `base`, in memory
        self.labels = labels if labels is not None else LabelRows()
        self.staged = staged  # the file `base` maps, written by a build and not yet moved into a generation

    def __len__(self) -> int:
        return self.labels.n_alive

    @property
    def exact(self) -> bool:
        return self.codes is None

    @property
    def outgrown(self) -> bool:
        """Whether a rebuild would pay: exact search past PQ_MIN labels, or many deleted rows still masked."""
        rows = len(self.labels)
        return (self.exact and rows >= PQ_MIN) or rows - self.labels.n_alive > max(PQ_MIN, rows // 4)

    @classmethod
    def build(cls, dim: int, ids: np.ndarray, vectors: np.ndarray) -> VectorIndex:
        """An index of these labels (vectors in memory)."""
        return cls.build_from_rows(dim, np.asarray(ids, dtype=np.int64), unit_rows(vectors))

    @classmethod
    def build_from_rows(cls, dim: int, ids: np.ndarray, rows: np.ndarray, staged: Path | None = None) -> VectorIndex:
        """An index over unit float16 rows (an array, or a memmap of a `write_rows` file), row i being label
        ids[i]: exact when few, else codes trained on a sample of them, added a chunk at a time."""
        labels = LabelRows(np.asarray(ids, dtype=np.int64))
        if len(ids) < PQ_MIN:
            return cls(dim, None, rows, labels, staged)
        faiss = _faiss()
        codes = faiss.IndexPQFastScan(dim, PQ_SUBSPACES, PQ_BITS, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(len(ids), min(len(ids), TRAIN_SAMPLE), replace=False)
        with _threads(faiss):
            codes.train(np.asarray(rows[np.sort(sample)], dtype=np.float32))
            for start in range(0, len(ids), CHUNK):
                codes.add(np.asarray(rows[start : start + CHUNK], dtype=np.float32))
        return cls(dim, codes, rows, labels, staged)

    def add(self, explanation_ids: np.ndarray, vectors: np.ndarray) -> int:
        """Index labels' vectors (a label already indexed is replaced: its old row is masked)."""
        if not len(explanation_ids):
            return 0
        rows = unit_rows(vectors)
        self.labels.remove(explanation_ids)
        self.labels.append(explanation_ids)
        self.delta = np.concatenate([self.delta, rows])
        if self.codes is not None:
            faiss = _faiss()
            with _threads(faiss):
                self.codes.add(rows.astype(np.float32))
        return len(explanation_ids)

    def remove(self, explanation_ids: np.ndarray) -> int:
        return len(self.labels.remove(explanation_ids))

    def ids(self) -> np.ndarray:
        """Every indexed explanation id."""
        return self.labels.live_ids

    def search(self, query: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, bool]:
        """(explanation ids, cosine, whether these are all the allowed labels) of the k nearest labels among
        `allowed_ids` (every label when None), best first."""
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        query = query / (np.linalg.norm(query) or 1.0)
        labels = self.labels
        if allowed_ids is None:
            allowed = labels.alive
            n_allowed = labels.n_alive
        else:
            allowed = labels.mask(allowed_ids)
            n_allowed = int(allowed.sum())
        k = min(k, n_allowed)
        if k == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), True
        if self.exact or n_allowed <= ALLOWED_EXACT:
            return (*self._best(np.flatnonzero(allowed), query, k), k >= n_allowed)
        pool = int(min(len(labels), np.ceil(2 * k * len(labels) / n_allowed)))
        while True:
            fetch = min(len(labels), max(REFINE_CANDIDATES, int(REFINE_FRACTION * len(labels)), 2 * pool))
            _, rows = self.codes.search(query[None, :], fetch)
            rows = rows[0]
            rows = rows[rows >= 0]
            rows = rows[allowed[rows]]
            if len(rows) >= k or fetch >= len(labels):
                return (*self._best(rows, query, k), k >= n_allowed)
            pool = min(len(labels), pool * 4)

    def _best(self, rows: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(explanation ids, cosine) of the k rows nearest the query, by exact cosine, best first."""
        rows = np.sort(rows)  # the file is read in order
        sims = np.concatenate([self.vectors(rows[a : a + CHUNK]).astype(np.float32) @ query
                               for a in range(0, len(rows), CHUNK)] or [np.zeros(0, dtype=np.float32)])
        top = np.argsort(-sims, kind="stable")[:k] if k >= len(sims) else np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top], kind="stable")]
        return self.labels.ids[rows[top]], sims[top]

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The unit float16 vectors of these rows (sorted)."""
        split = np.searchsorted(rows, len(self.base))
        if split == len(rows):
            return self.base[rows]
        return np.concatenate([self.base[rows[:split]], self.delta[rows[split:] - len(self.base)]])

    # ---- files ----------------------------------------------------------------------------------------

    def save_codes(self, path: Path) -> None:
        _faiss().write_index(self.codes, str(path))

    def save_vectors(self, path: Path) -> None:
        """The vectors file: a build's staged file moves in (no copy); otherwise base and delta are written."""
        if self.staged is not None and not len(self.delta):
            os.replace(self.staged, path)
            self.staged = None
            return
        with open(path, "wb") as f:
            for start in range(0, len(self.base), CHUNK):
                f.write(np.ascontiguousarray(self.base[start : start + CHUNK]).tobytes())
            f.write(self.delta.tobytes())

    def save_rows(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, ids=self.labels.ids, alive=self.labels.alive)

    def reopen(self, vectors_path: Path) -> None:
        """Map the vectors file just saved, dropping the rows held in memory."""
        self.base = map_rows(vectors_path, len(self.labels), self.dim)
        self.delta = np.zeros((0, self.dim), dtype=VECTOR_DTYPE)
        self.staged = None

    def discard_staged(self) -> None:
        """Remove a build's staged file that no save moved in (the mapping stays valid)."""
        if self.staged is not None:
            self.staged.unlink(missing_ok=True)
            self.staged = None

    @classmethod
    def load(cls, codes_path: Path | None, vectors_path: Path, rows_path: Path, dim: int) -> VectorIndex:
        with np.load(rows_path, allow_pickle=False) as data:
            labels = LabelRows(data["ids"], data["alive"])
        codes = None
        if codes_path is not None:
            codes = _faiss().read_index(str(codes_path))
            if codes.d != dim or codes.ntotal != len(labels):
                raise ValueError(f"{codes_path} holds {codes.ntotal} codes of {codes.d} dimensions, "
                                 f"its rows {len(labels)} labels of {dim}")
        return cls(dim, codes, map_rows(vectors_path, len(labels), dim), labels)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Vectors scaled to unit length, as stored (float16)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(VECTOR_DTYPE)


def write_rows(path: Path, batches: Iterable[tuple[np.ndarray, np.ndarray]], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Stream (ids, float32 vectors) batches into a vectors file, a batch at a time (a build's memory does
    not grow with the labels); (the ids in row order, the file memory-mapped)."""
    ids = []
    with open(path, "wb") as f:
        for batch_ids, vectors in batches:
            ids.append(np.asarray(batch_ids, dtype=np.int64))
            f.write(unit_rows(vectors).tobytes())
    ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    return ids, map_rows(path, len(ids), dim)


def map_rows(path: Path, n: int, dim: int) -> np.ndarray:
    """A vectors file of n rows, memory-mapped read-only (an empty one as an empty array)."""
    size = Path(path).stat().st_size
    if size != n * dim * np.dtype(VECTOR_DTYPE).itemsize:
        raise ValueError(f"{path} holds {size} bytes, not {n} vectors of {dim} dimensions")
    if n == 0:
        return np.zeros((0, dim), dtype=VECTOR_DTYPE)
    return np.memmap(path, dtype=VECTOR_DTYPE, mode="r", shape=(n, dim))


class _threads:
    """faiss's OpenMP threads for training and adding (a single query runs on one)."""

    def __init__(self, faiss) -> None:
        self.faiss = faiss

    def __enter__(self):
        self.before = self.faiss.omp_get_max_threads()
        self.faiss.omp_set_num_threads(THREADS)

    def __exit__(self, *exc):
        self.faiss.omp_set_num_threads(self.before)
