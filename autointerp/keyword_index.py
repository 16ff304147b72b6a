"""An incremental BM25 index over label texts, scored exactly as DuckDB's full-text search scores
(`match_bm25`: k1=1.2, b=0.75, log10 idf; a test checks rankings and scores against it).

DuckDB's fts extension tokenizes (its tokenizer, English stopwords, Porter stemmer), but its index cannot
be updated in place. So it only tokenizes: each batch of labels (all of them on a rebuild, the new ones on
an update) goes through a private in-memory fts index, and its postings (label, term, term frequency) are
kept here. BM25 weights are computed per query from the live statistics (labels, their lengths, each
term's document frequency), so adding or deleting labels never re-weights stored postings. Postings sit
in a term-grouped (CSC) base plus a small unsorted delta that is merged into the base when it grows.
Deleted labels are masked, and their postings dropped at the next merge.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autointerp.label_rows import LabelRows
from autointerp.store import catalog_queries as q

BM25_K1, BM25_B = 1.2, 0.75
MERGE_MIN = 50_000  # delta postings merged into the base when there are this many and more than 10% of the base
BUILD_CHUNK = 500_000  # labels tokenized at a time by a build (each through its own in-memory fts index)
ARRAYS = ("lengths", "indptr", "rows", "tf", "delta_cols", "delta_rows", "delta_tf")


@dataclass
class Postings:
    """One tokenized batch: per label its id and length, per (label, term) pair the term frequency."""

    ids: np.ndarray  # int64
    lengths: np.ndarray  # int32
    pair_rows: np.ndarray  # index into ids
    pair_terms: list[str]
    pair_tf: np.ndarray


def tokenize(labels) -> Postings:
    """Postings of an Arrow table of (explanation_id, label) as DuckDB's fts extension tokenizes them."""
    if not labels.num_rows:
        empty = np.zeros(0, dtype=np.int64)
        return Postings(empty, empty.astype(np.int32), empty, [], empty.astype(np.float32))
    fts = q.open_fts_database()
    try:
        q.build_fts_index(fts, labels.select(["explanation_id", "label"]))
        data = q.fts_postings(fts)
    finally:
        fts.close()
    docs, terms, pairs = data["docs"], data["terms"], data["pairs"]
    term_text = np.asarray(terms["term"], dtype=object)
    return Postings(
        ids=np.asarray(docs["name"], dtype=np.int64),
        lengths=np.asarray(docs["len"], dtype=np.int32),
        pair_rows=np.asarray(pairs["docid"], dtype=np.int64),
        pair_terms=term_text[np.asarray(pairs["termid"], dtype=np.int64)].tolist(),
        pair_tf=np.asarray(pairs["tf"], dtype=np.float32),
    )


class QueryTokenizer:
    """Tokenizes queries as the index tokenized labels (a tiny fts index provides DuckDB's tokenize macro)."""

    def __init__(self) -> None:
        import pyarrow as pa

        self._fts = q.open_fts_database()
        q.build_fts_index(self._fts, pa.table({"explanation_id": [0], "label": ["x"]}))
        self._lock = threading.Lock()

    def terms(self, query: str) -> list[str]:
        with self._lock:  # one DuckDB connection, queries from several threads
            return q.fts_query_terms(self._fts, query)


class KeywordIndex:
    """Postings by row (`LabelRows`: rows to explanation ids and back)."""

    def __init__(self) -> None:
        self.labels = LabelRows()
        self.lengths = np.zeros(0, dtype=np.int32)
        self.terms: list[str] = []
        self.term_column: dict[str, int] = {}
        self.indptr = np.zeros(1, dtype=np.int64)  # base postings of columns 0..len(indptr)-2
        self.rows = np.zeros(0, dtype=np.int32)
        self.tf = np.zeros(0, dtype=np.float32)
        self.delta_cols = np.zeros(0, dtype=np.int32)
        self.delta_rows = np.zeros(0, dtype=np.int32)
        self.delta_tf = np.zeros(0, dtype=np.float32)
        self.total_length = 0  # of live labels

    @classmethod
    def build(cls, labels) -> KeywordIndex:
        index = cls()
        for start in range(0, labels.num_rows, BUILD_CHUNK):  # a term's statistics do not depend on the batch
            index.add(tokenize(labels.slice(start, BUILD_CHUNK)), merge=False)
        index.merge()
        return index

    def add(self, postings: Postings, merge: bool = True) -> int:
        """Index new labels (a label already indexed is replaced). Returns how many. `merge`: fold the delta
        into the base when it has grown (a build merges once, at the end)."""
        if not len(postings.ids):
            return 0
        self.remove(postings.ids)
        first = len(self.labels)
        for term in dict.fromkeys(postings.pair_terms):
            if term not in self.term_column:
                self.term_column[term] = len(self.terms)
                self.terms.append(term)
        cols = np.fromiter((self.term_column[t] for t in postings.pair_terms), dtype=np.int32,
                           count=len(postings.pair_terms))
        self.labels.append(postings.ids)
        self.lengths = np.concatenate([self.lengths, postings.lengths])
        self.delta_cols = np.concatenate([self.delta_cols, cols])
        self.delta_rows = np.concatenate([self.delta_rows, (postings.pair_rows + first).astype(np.int32)])
        self.delta_tf = np.concatenate([self.delta_tf, postings.pair_tf])
        self.total_length += int(postings.lengths.sum())
        if merge and len(self.delta_rows) >= max(MERGE_MIN, len(self.rows) // 10):
            self.merge()
        return len(postings.ids)

    def remove(self, explanation_ids: np.ndarray) -> int:
        """Drop labels (ids not indexed are ignored). Returns how many were dropped."""
        rows = self.labels.remove(explanation_ids)
        self.total_length -= int(self.lengths[rows].sum())
        return len(rows)

    def merge(self) -> None:
        """Fold the delta into the term-grouped base, dropping postings of deleted labels."""
        base_cols = np.repeat(np.arange(len(self.indptr) - 1, dtype=np.int32), np.diff(self.indptr))
        cols = np.concatenate([base_cols, self.delta_cols])
        rows = np.concatenate([self.rows, self.delta_rows])
        tf = np.concatenate([self.tf, self.delta_tf])
        live = self.labels.alive[rows]
        cols, rows, tf = cols[live], rows[live], tf[live]
        order = np.argsort(cols, kind="stable")
        self.rows, self.tf = rows[order], tf[order]
        self.indptr = np.zeros(len(self.terms) + 1, dtype=np.int64)
        np.cumsum(np.bincount(cols, minlength=len(self.terms)), out=self.indptr[1:])
        self.delta_cols = np.zeros(0, dtype=np.int32)
        self.delta_rows = np.zeros(0, dtype=np.int32)
        self.delta_tf = np.zeros(0, dtype=np.float32)

    def _postings(self, col: int) -> tuple[np.ndarray, np.ndarray]:
        rows, tf = np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
        if col < len(self.indptr) - 1:
            a, b = self.indptr[col], self.indptr[col + 1]
            rows, tf = self.rows[a:b], self.tf[a:b]
        if len(self.delta_cols):
            extra = np.flatnonzero(self.delta_cols == col)
            if len(extra):
                rows, tf = np.concatenate([rows, self.delta_rows[extra]]), np.concatenate([tf, self.delta_tf[extra]])
        return rows, tf

    def scores(self, terms: list[str], allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(explanation ids, BM25 scores) of every label matching at least one term, unordered. `allowed`:
        a boolean mask over rows (`labels.mask`); the statistics count every label, as DuckDB's would."""
        cols = [self.term_column[t] for t in dict.fromkeys(terms) if t in self.term_column]
        n = self.labels.n_alive
        if not cols or not n:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        avgdl = self.total_length / n or 1.0
        alive = self.labels.alive
        parts = []
        for col in cols:
            rows, tf = self._postings(col)
            keep = alive[rows]
            rows, tf = rows[keep], tf[keep]
            df = len(rows)
            idf = np.log10((n - df + 0.5) / (df + 0.5) + 1.0)
            norm = BM25_K1 * (1 - BM25_B + BM25_B * self.lengths[rows] / avgdl)
            weights = (idf * tf * (BM25_K1 + 1) / (tf + norm)).astype(np.float32)
            if allowed is not None:
                keep = allowed[rows]
                rows, weights = rows[keep], weights[keep]
            parts.append((rows, weights))
        if len(parts) == 1:
            rows, weights = parts[0]
        else:
            total = np.bincount(np.concatenate([p[0] for p in parts]),
                                weights=np.concatenate([p[1] for p in parts]), minlength=len(self.labels))
            rows = np.flatnonzero(total)
            weights = total[rows].astype(np.float32)
        return self.labels.ids[rows], weights

    def save(self, path: Path) -> None:
        arrays = {name: getattr(self, name) for name in ARRAYS}
        with open(path, "wb") as f:
            np.savez(f, ids=self.labels.ids, alive=self.labels.alive, terms=np.asarray(self.terms, dtype=str), **arrays)

    @classmethod
    def load(cls, path: Path) -> KeywordIndex:
        index = cls()
        with np.load(path, allow_pickle=False) as data:
            for name in ARRAYS:
                setattr(index, name, data[name])
            index.labels = LabelRows(data["ids"], data["alive"])
            index.terms = data["terms"].tolist()
        index.term_column = {t: i for i, t in enumerate(index.terms)}
        index.total_length = int(index.lengths[index.labels.alive].sum())
        return index
