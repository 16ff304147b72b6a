"""Label embeddings for semantic search: a faiss 4-bit product-quantized fast scan over every label
(`IndexPQFastScan`, 48 bytes a label) whose best REFINE_CANDIDATES candidates are re-ranked by exact
cosine over the float32 vectors (`IndexRefineFlat`). Exact (flat) below PQ_MIN labels.

Chosen by measurement (`python -m autointerp.bench.ann_libs` and the README's table): on the benchmark's
label vectors, where a short query's true neighbours are labels sharing one word with it and sit all over
the space (the 10th and 11th neighbours 0.004 apart in cosine), HNSW graphs in usearch, faiss and hnswlib
reached recall@10 0.78-0.80 at ef 96 (under 0.94 at ef 512), and faiss's inverted file 0.89 probing half
its lists; scanning compact codes of every label and re-ranking reached 0.998 at 100k in 2 ms.

Filters: an allowed-row bitmap (`IDSelectorBitmap`, checked in C++) restricts the exact scan over the
flat vectors when the allowed labels are few (ALLOWED_EXACT or less): exact over the allowed set. When
they are many, the fast scan ranks all labels and the first k allowed are kept, asking for 4x more until
k are found or the exact path takes over: the fast scan takes no filter (faiss: "search params not
supported"). At 1M labels (load average 12-17) exact over 100k allowed labels took p95 142 ms, over 10k
39 ms, the unfiltered fast scan 46 ms: hence ALLOWED_EXACT 20k. Rows are labels in the order they were
added (`LabelRows`); a deleted label's row is masked the same way until the next rebuild (faiss cannot
remove from a fast-scan index).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autointerp.label_rows import LabelRows

PQ_MIN = 20_000  # below this many labels: exact search
PQ_SUBSPACES, PQ_BITS = 96, 4
TRAIN_SAMPLE = 50_000
REFINE_CANDIDATES = 1000  # fast-scan candidates re-ranked exactly, at least
ALLOWED_EXACT = 20_000  # allowed labels up to which a filtered search is exact over them
THREADS = 2


def _faiss():
    import faiss

    return faiss


class VectorIndex:
    def __init__(self, dim: int, index=None, labels: LabelRows | None = None) -> None:
        faiss = _faiss()
        self.dim = dim
        self.index = index if index is not None else faiss.IndexFlatIP(dim)
        self.labels = labels if labels is not None else LabelRows()
        self._alive_bits: np.ndarray | None = None

    def __len__(self) -> int:
        return self.labels.n_alive

    @property
    def exact(self) -> bool:
        return not isinstance(self.index, _faiss().IndexRefine)

    @property
    def outgrown(self) -> bool:
        """Whether a rebuild would pay: exact search past PQ_MIN labels, or many deleted rows still masked."""
        rows = len(self.labels)
        return (self.exact and rows >= PQ_MIN) or rows - self.labels.n_alive > max(PQ_MIN, rows // 4)

    @classmethod
    def build(cls, dim: int, ids: np.ndarray, vectors: np.ndarray) -> VectorIndex:
        """An index of these labels: exact when few, else codes trained on a sample of them."""
        faiss = _faiss()
        if len(ids) < PQ_MIN:
            index = cls(dim)
            index.add(ids, vectors)
            return index
        vectors = _unit(vectors)
        codes = faiss.IndexPQFastScan(dim, PQ_SUBSPACES, PQ_BITS, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(len(ids), min(len(ids), TRAIN_SAMPLE), replace=False)
        with _threads(faiss):
            codes.train(vectors[np.sort(sample)])
            refined = faiss.IndexRefineFlat(codes)
            refined.add(vectors)
        labels = LabelRows()
        labels.append(np.asarray(ids, dtype=np.int64))
        return cls(dim, refined, labels)

    def add(self, explanation_ids: np.ndarray, vectors: np.ndarray) -> int:
        """Index labels' vectors (a label already indexed is replaced: its old row is masked)."""
        if not len(explanation_ids):
            return 0
        faiss = _faiss()
        self.labels.remove(explanation_ids)
        self.labels.append(explanation_ids)
        with _threads(faiss):
            self.index.add(_unit(vectors))
        self._alive_bits = None
        return len(explanation_ids)

    def remove(self, explanation_ids: np.ndarray) -> int:
        rows = self.labels.remove(explanation_ids)
        self._alive_bits = None
        return len(rows)

    def ids(self) -> np.ndarray:
        """Every indexed explanation id."""
        return self.labels.live_ids

    def search(self, query: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, bool]:
        """(explanation ids, cosine, whether these are all the allowed labels) of the k nearest labels among
        `allowed_ids` (every label when None), best first."""
        faiss = _faiss()
        query = _unit(np.asarray(query, dtype=np.float32).reshape(1, -1))
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
        everything = n_allowed == len(labels)
        if self.exact or not everything and n_allowed <= ALLOWED_EXACT:
            flat = self.index if self.exact else self.index.refine_index
            bits = None if everything else self._bits(allowed, allowed_ids is None)
            selector = None if bits is None else faiss.IDSelectorBitmap(len(labels), faiss.swig_ptr(bits))
            sims, rows = flat.search(query, k, params=faiss.SearchParameters(sel=selector))
            rows, sims = rows[0], sims[0]
            keep = rows >= 0
            return labels.ids[rows[keep]], sims[keep], k >= n_allowed
        pool = int(min(len(labels), np.ceil(2 * k * len(labels) / n_allowed)))
        while True:
            params = faiss.IndexRefineSearchParameters(k_factor=max(2.0, REFINE_CANDIDATES / pool))
            sims, rows = self.index.search(query, pool, params=params)
            rows, sims = rows[0], sims[0]
            keep = rows >= 0
            rows, sims = rows[keep], sims[keep]
            keep = allowed[rows]
            if keep.sum() >= k or pool >= len(labels):
                rows, sims = rows[keep][:k], sims[keep][:k]
                return labels.ids[rows], sims, k >= n_allowed
            pool = min(len(labels), pool * 4)

    def _bits(self, allowed: np.ndarray, alive_only: bool) -> np.ndarray:
        if not alive_only:
            return np.packbits(allowed, bitorder="little")
        if self._alive_bits is None:
            self._alive_bits = np.packbits(allowed, bitorder="little")
        return self._alive_bits

    def save(self, path: Path) -> None:
        _faiss().write_index(self.index, str(path))

    def save_rows(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, ids=self.labels.ids, alive=self.labels.alive)

    @classmethod
    def load(cls, path: Path, rows_path: Path, dim: int) -> VectorIndex:
        index = _faiss().read_index(str(path))
        with np.load(rows_path, allow_pickle=False) as data:
            labels = LabelRows(data["ids"], data["alive"])
        if index.d != dim or index.ntotal != len(labels):
            raise ValueError(f"{path} holds {index.ntotal} vectors of {index.d} dimensions, "
                             f"its rows {len(labels)} labels of {dim}")
        return cls(dim, index, labels)


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.array(vectors, dtype=np.float32, order="C", copy=True)
    _faiss().normalize_L2(vectors)
    return vectors


class _threads:
    """faiss's OpenMP threads for training and adding (a single query runs on one)."""

    def __init__(self, faiss) -> None:
        self.faiss = faiss

    def __enter__(self):
        self.before = self.faiss.omp_get_max_threads()
        self.faiss.omp_set_num_threads(THREADS)

    def __exit__(self, *exc):
        self.faiss.omp_set_num_threads(self.before)
