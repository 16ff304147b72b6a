"""Label embeddings in an HNSW graph (faiss `IndexHNSWFlat`, inner product over unit vectors = cosine).

Chosen by measurement against usearch and hnswlib (`python -m autointerp.bench.ann_libs`, figures in the
README): faiss takes an allowed-row bitmap inside the graph search (`IDSelectorBitmap`), in C++, so a
filter never shortens a page; usearch's Python binding has no filtered search and hnswlib's calls back
into Python for every visited node. Filters: when the allowed rows are few (ALLOWED_EXACT_SHARE of the
labels or less) the graph would wander through rows it may not return, so the search is exact over the
allowed rows instead (the flat vectors with the same bitmap). HNSW cannot remove a vector: a deleted
label's row stays in the graph, masked by the same bitmap, until the next rebuild.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autointerp.label_rows import LabelRows

M = 16  # graph degree
EF_CONSTRUCTION = 128
EF_SEARCH = 96  # candidates kept while searching; at least k
ALLOWED_EXACT_SHARE = 0.02
ADD_THREADS = 2


def _faiss():
    import faiss

    return faiss


class VectorIndex:
    def __init__(self, dim: int) -> None:
        faiss = _faiss()
        self.dim = dim
        self.graph = faiss.IndexHNSWFlat(dim, M, faiss.METRIC_INNER_PRODUCT)
        self.graph.hnsw.efConstruction = EF_CONSTRUCTION
        self.labels = LabelRows()
        self._alive_bits: np.ndarray | None = None

    def __len__(self) -> int:
        return self.labels.n_alive

    def add(self, explanation_ids: np.ndarray, vectors: np.ndarray) -> int:
        """Index labels' vectors (a label already indexed is replaced: its old row is masked)."""
        if not len(explanation_ids):
            return 0
        faiss = _faiss()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        faiss.normalize_L2(vectors)
        self.labels.remove(explanation_ids)
        self.labels.append(explanation_ids)
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(ADD_THREADS)
        try:
            self.graph.add(vectors)
        finally:
            faiss.omp_set_num_threads(threads)
        self._alive_bits = None
        return len(explanation_ids)

    def remove(self, explanation_ids: np.ndarray) -> int:
        rows = self.labels.remove(explanation_ids)
        self._alive_bits = None
        return len(rows)

    def _bitmap(self, allowed_ids: np.ndarray | None) -> tuple[np.ndarray | None, int]:
        """(packed bitmap over rows or None when every row may be returned, how many rows it allows)."""
        labels = self.labels
        if allowed_ids is None:
            if labels.n_alive == len(labels):
                return None, len(labels)
            if self._alive_bits is None:
                self._alive_bits = np.packbits(labels.alive, bitorder="little")
            return self._alive_bits, labels.n_alive
        mask = labels.mask(allowed_ids)
        return np.packbits(mask, bitorder="little"), int(mask.sum())

    def search(self, query: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, bool]:
        """(explanation ids, cosine, whether these are all the allowed labels) of the k nearest labels among
        `allowed_ids` (every label when None), best first."""
        faiss = _faiss()
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        bits, n_allowed = self._bitmap(allowed_ids)
        k = min(k, n_allowed)
        if k == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), True
        selector = None if bits is None else faiss.IDSelectorBitmap(len(self.labels), faiss.swig_ptr(bits))
        if selector is not None and n_allowed <= ALLOWED_EXACT_SHARE * len(self.labels):
            sims, rows = self.graph.storage.search(query, k, params=faiss.SearchParameters(sel=selector))
        else:
            params = faiss.SearchParametersHNSW(efSearch=max(EF_SEARCH, k), sel=selector)
            sims, rows = self.graph.search(query, k, params=params)
        rows, sims = rows[0], sims[0]
        found = rows >= 0
        return self.labels.ids[rows[found]], sims[found], k >= n_allowed

    def save_graph(self, path: Path) -> None:
        _faiss().write_index(self.graph, str(path))

    def save_rows(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, ids=self.labels.ids, alive=self.labels.alive)

    @classmethod
    def load(cls, graph_path: Path, rows_path: Path, dim: int) -> VectorIndex:
        index = cls(dim)
        graph = _faiss().read_index(str(graph_path))
        with np.load(rows_path, allow_pickle=False) as data:
            labels = LabelRows(data["ids"], data["alive"])
        if graph.d != dim or graph.ntotal != len(labels):
            raise ValueError(f"{graph_path} holds {graph.ntotal} vectors of {graph.d} dimensions, "
                             f"its rows {len(labels)} labels of {dim}")
        index.graph, index.labels = graph, labels
        return index
