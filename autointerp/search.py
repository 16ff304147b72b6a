"""Search over the catalog's labels: keyword (BM25), semantic (cosine over label embeddings) and hybrid
(reciprocal rank fusion of the two; the default).

The index lives in the searching process, built from a read-only look at the store, so that searching
never needs the store's write lock (a labeling job may hold it):
- keyword: DuckDB's full-text index (`PRAGMA create_fts_index`: tokenizer, English stopwords, Porter
  stemmer) built in a private in-memory database; its postings are then held as BM25 term weights in
  arrays and scored with DuckDB's own formula (k1=1.2, b=0.75, log10 idf; a test checks the ranking and
  scores against `match_bm25`). Scoring arrays instead of running `match_bm25` per query keeps common
  terms fast at 1M labels (match_bm25 takes ~0.5 s there for a term that is in every label).
- semantic: the label embedding matrix. Up to EXACT_LIMIT labels, exact float32 cosine. Above it, a first
  pass over a PCA-reduced float32 copy (REDUCED_DIM) picks RERANK_MIN or more candidates, re-ranked by
  cosine with an int8 copy of the full vectors: 4*REDUCED_DIM + 388 bytes per label instead of 1536, and
  ~4x less memory to stream per query. It is approximate: `python -m autointerp.bench.search` reports its
  recall against exact cosine.
Both are static: `SearchIndex.refresh` rebuilds them when the labels version (count and highest id of
labels, count of embeddings) changed. One hit per feature: its best-ranked label. Filters on source, model
and layer run on the ranked ids in memory; filters on scores, density and review state run in SQL on the
ranked candidates (an IN list of bound ids, answered from the primary-key index), before paging. The
candidate pool grows until the page is full or every match was considered, so a page is never short
because of a filter. An empty query lists features, each by its best label (`autointerp.ranking`) when
that passes the filters. A score filter counts only reliable scores; a filter that cannot match by
mistake (unknown source, scorer or metric; inverted density range) is an error, not an empty page.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import duckdb
import numpy as np

from autointerp import ranking
from autointerp.catalog import REVIEW_STATES, resolve_metric, scores_by_label
from autointerp.embeddings import EMBEDDING_DIM, EMBEDDING_MODEL, embed_texts
from autointerp.errors import AutointerpError
from autointerp.store import catalog_queries as q
from autointerp.store.activations import get_source, list_sources

MODES = ("hybrid", "keyword", "semantic")
RRF_K = 60
BM25_K1, BM25_B = 1.2, 0.75
EXACT_LIMIT = 200_000
REDUCED_DIM = 64
PCA_SAMPLE = 20_000
RERANK_FACTOR = 8
RERANK_MIN = 1024  # candidates the compact first pass hands to the exact re-rank, at least
LOAD_BATCH = 65_536
MAX_LIMIT = 500
QUERY_CACHE = 256
MIN_CANDIDATES = 64  # the first candidate pool is the larger of this and CANDIDATES_PER_RESULT * (offset + limit);
CANDIDATES_PER_RESULT = 4  # it grows 4x while filters leave the page short
SQL_FILTER_FACTOR = 4  # and starts this much larger when score, density or review filters may drop many


@dataclass
class SearchFilters:
    source: str | None = None
    model: str | None = None
    layer: int | None = None
    min_score: str | None = None  # "scorer:value" or "scorer.metric:value"
    density_min: float | None = None
    density_max: float | None = None
    review: str | None = None  # accepted | rejected | edited | unreviewed


@dataclass
class SearchHit:
    explanation_id: int
    score: float | None
    source: str
    feature: int
    label: str
    author: str
    review_state: str
    density: float | None
    model: str | None
    layer: int | None
    input_score: HeadlineScore | None = None  # the label's input headline (what makes the feature fire)
    output_score: HeadlineScore | None = None  # and its output headline (what steering along it does)


@dataclass
class HeadlineScore:
    scorer: str
    metric: str
    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    unreliable: str | None

    @classmethod
    def of(cls, score) -> HeadlineScore | None:
        if score is None:
            return None
        return cls(score.scorer, score.metric, score.value, score.ci_low, score.ci_high, score.n, score.unreliable)


@dataclass
class SearchResults:
    query: str
    mode: str
    limit: int
    offset: int
    hits: list[SearchHit]
    n_labels: int  # labels in the index searched
    stale: bool  # labels were added after the index was built
    seconds: float
    filters: SearchFilters = field(default_factory=SearchFilters)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_min_score(con: duckdb.DuckDBPyConnection, text: str | None) -> tuple[str, str, float] | None:
    """'detection:0.7' or 'detection.auroc:0.7' -> (scorer, metric, 0.7); the scorer's main metric when unnamed."""
    if not text:
        return None
    name, sep, value = text.rpartition(":")
    try:
        threshold = float(value)
    except ValueError:
        threshold = None
    if not sep or not name or threshold is None:
        raise AutointerpError(f"--min-score wants scorer:value or scorer.metric:value (e.g. detection:0.7), not {text!r}")
    scorer, _, metric = name.partition(".")
    resolved = resolve_metric(con, scorer, metric or None)  # an unknown scorer or metric is an error
    return resolved[0], resolved[1], threshold


class _KeywordIndex:
    """BM25 term weights per (label, term), grouped by term (CSC layout)."""

    def __init__(self, fts: duckdb.DuckDBPyConnection, labels) -> None:
        q.build_fts_index(fts, labels)
        data = q.fts_postings(fts)
        docs, terms, pairs = data["docs"], data["terms"], data["pairs"]
        self.ids = np.asarray(docs["name"], dtype=np.int64)  # row = docid (0..n-1)
        self.term_column = {t: i for i, t in enumerate(terms["term"])}
        n_docs, avgdl = data["n_docs"], data["avgdl"] or 1.0
        df = np.asarray(terms["df"], dtype=np.float64)
        idf = np.log10((n_docs - df + 0.5) / (df + 0.5) + 1.0)  # DuckDB's log() is base 10
        termid = np.asarray(pairs["termid"], dtype=np.int64)
        docid = np.asarray(pairs["docid"], dtype=np.int64)
        tf = np.asarray(pairs["tf"], dtype=np.float64)
        length = np.asarray(docs["len"], dtype=np.float64)[docid]
        weight = idf[termid] * tf * (BM25_K1 + 1) / (tf + BM25_K1 * (1 - BM25_B + BM25_B * length / avgdl))
        order = np.argsort(termid, kind="stable")
        self.rows = docid[order].astype(np.int32)
        self.weights = weight[order].astype(np.float32)
        self.indptr = np.zeros(len(terms["term"]) + 1, dtype=np.int64)
        np.cumsum(np.bincount(termid, minlength=len(terms["term"])), out=self.indptr[1:])

    def scores(self, terms: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of every label matching at least one term."""
        cols = [self.term_column[t] for t in terms if t in self.term_column]
        if not cols:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if len(cols) == 1:
            a, b = self.indptr[cols[0]], self.indptr[cols[0] + 1]
            return self.rows[a:b].astype(np.int64), self.weights[a:b]
        rows = np.concatenate([self.rows[self.indptr[c] : self.indptr[c + 1]] for c in cols])
        weights = np.concatenate([self.weights[self.indptr[c] : self.indptr[c + 1]] for c in cols])
        total = np.bincount(rows, weights=weights, minlength=len(self.ids))
        hit = np.flatnonzero(total)
        return hit, total[hit].astype(np.float32)


class _VectorIndex:
    """Label embeddings; exact below EXACT_LIMIT labels, PCA first pass + int8 re-rank above it."""

    def __init__(self, con: duckdb.DuckDBPyConnection, model: str) -> None:
        ids, full, fine, scale = [], [], [], []
        for batch in q.label_vector_batches(con, model, LOAD_BATCH):
            ids.append(batch.column(0).to_numpy())
            vectors = batch.column(1).flatten().to_numpy().reshape(-1, EMBEDDING_DIM).astype(np.float32)
            full.append(vectors)
            if sum(len(i) for i in ids) > EXACT_LIMIT:  # switch to compact storage from here on
                for v in full:
                    s = np.maximum(np.abs(v).max(axis=1, keepdims=True), 1e-12) / 127.0
                    fine.append(np.rint(v / s).astype(np.int8))
                    scale.append(s.astype(np.float32))
                full = []
        self.ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        self.exact = not fine
        if self.exact:
            self.vectors = np.concatenate(full) if full else np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
            return
        self.fine = np.concatenate(fine)
        self.scale = np.concatenate(scale)[:, 0]
        rng = np.random.default_rng(0)
        sample = rng.choice(len(self.ids), size=min(PCA_SAMPLE, len(self.ids)), replace=False)
        # Uncentered PCA: dot products of unit vectors are preserved best by the top right singular vectors.
        _, _, vt = np.linalg.svd(self.fine[sample].astype(np.float32) * self.scale[sample, None], full_matrices=False)
        self.basis = np.ascontiguousarray(vt[:REDUCED_DIM].T)  # [384, REDUCED_DIM]
        self.reduced = np.empty((len(self.ids), self.basis.shape[1]), dtype=np.float32)
        for start in range(0, len(self.ids), LOAD_BATCH):
            stop = start + LOAD_BATCH
            block = self.fine[start:stop].astype(np.float32) * self.scale[start:stop, None]
            self.reduced[start:stop] = block @ self.basis

    def top(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cosine) of the k nearest labels, best first."""
        n = len(self.ids)
        k = min(k, n)
        if k == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if self.exact:
            sims = self.vectors @ query
            rows = _top_rows(sims, k)
            return rows, sims[rows]
        pool = _top_rows(self.reduced @ (query @ self.basis), min(n, max(k * RERANK_FACTOR, RERANK_MIN)))
        sims = (self.fine[pool].astype(np.float32) @ query) * self.scale[pool]
        best = np.argsort(-sims, kind="stable")[:k]
        return pool[best], sims[best]


def _top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, best first."""
    if k >= len(scores):
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


class SearchIndex:
    """The in-process search index of one store. Build or refresh it from a (read-only) connection."""

    def __init__(self, embedding_model: str = EMBEDDING_MODEL, embed: Callable[[list[str]], np.ndarray] = embed_texts):
        self.embedding_model = embedding_model
        self.embed = embed
        self.version: tuple[int, int, int] | None = None
        self.seen_version: tuple[int, int, int] | None = None
        self.build_seconds = 0.0
        self.built_at = 0.0
        self._fts: duckdb.DuckDBPyConnection | None = None
        self._keyword: _KeywordIndex | None = None
        self._vectors: _VectorIndex | None = None
        self._source_of = np.zeros(1, dtype=np.int32)  # by explanation id
        self._query_vectors: dict[str, np.ndarray] = {}
        self._feature_of = np.zeros(1, dtype=np.int64)

    def is_stale(self, con: duckdb.DuckDBPyConnection) -> bool:
        """Whether labels were added since the build (one cheap query; remembered for `stale`)."""
        self.seen_version = q.labels_version(con)
        return self.version != self.seen_version

    @property
    def stale(self) -> bool:
        """Whether the last look at the store (build, refresh or is_stale) found labels the index lacks."""
        return self.seen_version != self.version

    def build(self, con: duckdb.DuckDBPyConnection) -> float:
        """Rebuild both indexes from the store; return the seconds it took."""
        start = time.perf_counter()
        version = q.labels_version(con)
        fts = q.open_fts_database()
        labels = q.label_texts(con)
        keyword = _KeywordIndex(fts, labels)
        vectors = _VectorIndex(con, self.embedding_model)
        ids = labels.column("explanation_id").to_numpy()
        size = int(ids.max()) + 1 if len(ids) else 1
        self._source_of = np.zeros(size, dtype=np.int32)
        self._feature_of = np.zeros(size, dtype=np.int64)
        self._source_of[ids] = labels.column("source_id").to_numpy()
        self._feature_of[ids] = labels.column("feature").to_numpy()
        # a search in flight keeps its reference to the old database; it closes when unreferenced
        self._fts, self._keyword, self._vectors = fts, keyword, vectors
        self.version = self.seen_version = version
        self.build_seconds = time.perf_counter() - start
        self.built_at = time.time()
        return self.build_seconds

    def refresh(self, con: duckdb.DuckDBPyConnection, min_interval_factor: float = 0.0) -> bool:
        """Rebuild if labels changed; with min_interval_factor f, not sooner than f times the last build's
        duration after it (bounds rebuild work while a job keeps adding labels). Return whether it rebuilt."""
        if self.version is not None:
            if not self.is_stale(con):
                return False
            if time.time() - self.built_at < min_interval_factor * self.build_seconds:
                return False
        self.build(con)
        return True

    @property
    def n_labels(self) -> int:
        return 0 if self._keyword is None else len(self._keyword.ids)

    def ranker(self, query: str, mode: str) -> Callable[[int], tuple[np.ndarray, np.ndarray, bool]]:
        """A function k -> (explanation ids, scores, whether every match is in) for the k best labels in
        `mode`; the query is tokenized and embedded once, however often the caller asks for more."""
        terms = q.fts_query_terms(self._fts, query) if mode != "semantic" else []
        vector = self._embed_query(query) if mode != "keyword" else None
        keyword_index, vector_index = self._keyword, self._vectors

        def keyword(k: int) -> tuple[np.ndarray, np.ndarray, bool]:
            rows, scores = keyword_index.scores(terms)
            top = _top_rows(scores, min(k, len(scores)))
            return keyword_index.ids[rows[top]], scores[top], k >= len(scores)

        def semantic(k: int) -> tuple[np.ndarray, np.ndarray, bool]:
            rows, sims = vector_index.top(vector, k)
            return vector_index.ids[rows], sims, k >= len(vector_index.ids)

        def hybrid(k: int) -> tuple[np.ndarray, np.ndarray, bool]:
            """Reciprocal rank fusion: score = sum over both rankings of 1 / (RRF_K + rank)."""
            kw_ids, _, kw_all = keyword(k)
            sem_ids, _, sem_all = semantic(k)
            fused: dict[int, float] = {}
            for ids in (kw_ids, sem_ids):
                for rank, eid in enumerate(ids.tolist(), start=1):
                    fused[eid] = fused.get(eid, 0.0) + 1.0 / (RRF_K + rank)
            order = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
            return (
                np.array([e for e, _ in order], dtype=np.int64),
                np.array([v for _, v in order], dtype=np.float64),
                kw_all and sem_all,
            )

        return {"keyword": keyword, "semantic": semantic, "hybrid": hybrid}[mode]

    def keyword(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """(explanation ids, BM25 scores, whether these are all matches) of the k best keyword matches."""
        return self.ranker(query, "keyword")(k)

    def semantic(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """(explanation ids, cosine similarities, whether these are all labels) of the k nearest labels."""
        return self.ranker(query, "semantic")(k)

    def hybrid(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray, bool]:
        return self.ranker(query, "hybrid")(k)

    def _embed_query(self, query: str) -> np.ndarray:
        """One short text embeds fastest on one thread: with more, torch's threads contend with DuckDB's
        (measured 11 ms on one thread, 20-500 ms on two, on a 2-core machine). Recent queries are cached
        (the next page of a search embeds nothing)."""
        cached = self._query_vectors.get(query)
        if cached is not None:
            return cached
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            vector = np.asarray(self.embed([query])[0], dtype=np.float32)
        finally:
            torch.set_num_threads(threads)
        if len(self._query_vectors) >= QUERY_CACHE:
            self._query_vectors.pop(next(iter(self._query_vectors)))
        self._query_vectors[query] = vector
        return vector

    def clear_query_cache(self) -> None:
        self._query_vectors.clear()

    def narrow(self, ids: np.ndarray, source_ids: list[int] | None) -> np.ndarray:
        """Positions of the ids whose label belongs to one of `source_ids` (all when None)."""
        if source_ids is None:
            return np.arange(len(ids))
        return np.flatnonzero(np.isin(self._source_of[ids], source_ids))

    def first_per_feature(self, ids: np.ndarray) -> np.ndarray:
        """Positions of each feature's first (best-ranked) label among ranked ids."""
        keys = self._source_of[ids].astype(np.int64) << 32 | self._feature_of[ids]
        _, first = np.unique(keys, return_index=True)
        return np.sort(first)


def _check_density(low: float | None, high: float | None) -> None:
    for value in (low, high):
        if value is not None and not 0.0 <= value <= 1.0:
            raise AutointerpError(f"a density bound is a fraction of tokens, between 0 and 1, not {value}")
    if low is not None and high is not None and low > high:
        raise AutointerpError(f"the density range is inverted: from {low} to {high}; give the lower bound first")


def _matching_sources(con: duckdb.DuckDBPyConnection, filters: SearchFilters) -> list[int] | None:
    """Source ids the source, model and layer filters allow (None: no such filter); a filter no source
    matches is an error, not an empty page."""
    if filters.source is None and filters.model is None and filters.layer is None:
        return None
    if filters.source is not None:
        get_source(con, filters.source)  # unknown source: the error lists the known ones
    found = q.source_ids_matching(con, filters.source, filters.model, filters.layer)
    if not found:
        known = "; ".join(f"{s.name} (model {s.model}, layer {s.layer})" for s in list_sources(con)) or "none"
        asked = ", ".join(f"{k} {v!r}" for k, v in (("source", filters.source), ("model", filters.model),
                                                   ("layer", filters.layer)) if v is not None)
        raise AutointerpError(f"no source matches {asked}; sources in this store: {known}")
    return found


def search(
    con: duckdb.DuckDBPyConnection,
    index: SearchIndex,
    query: str,
    *,
    mode: str = "hybrid",
    filters: SearchFilters | None = None,
    limit: int = 20,
    offset: int = 0,
) -> SearchResults:
    """One page of features whose labels match `query`, best first, one hit per feature (its best-matching
    label). An empty query lists labeled features by source and feature. `index` must have been built."""
    start = time.perf_counter()
    filters = filters or SearchFilters()
    if mode not in MODES:
        raise AutointerpError(f"unknown search mode {mode!r}; use one of {', '.join(MODES)}")
    if filters.review is not None and filters.review not in REVIEW_STATES:
        raise AutointerpError(f"unknown review state {filters.review!r}; use one of {', '.join(REVIEW_STATES)}")
    if not 1 <= limit <= MAX_LIMIT or offset < 0:
        raise AutointerpError(f"limit must be 1..{MAX_LIMIT} and offset >= 0 (got limit {limit}, offset {offset})")
    min_score = parse_min_score(con, filters.min_score)
    _check_density(filters.density_min, filters.density_max)
    source_ids = _matching_sources(con, filters)
    # Filters on scores, density or review state need the store; source, model and layer do not.
    in_sql = {"density_min": filters.density_min, "density_max": filters.density_max, "review": filters.review}
    needs_sql = min_score is not None or any(v is not None for v in in_sql.values())
    rule = ranking.sql_parameters()
    query = query.strip()
    if not query:
        every = {"source": filters.source, "model": filters.model, "layer": filters.layer, **in_sql}
        rows = q.list_feature_hits(con, rule=rule, filters=every, min_score=min_score, limit=limit, offset=offset)
    else:
        if index.version is None:
            index.build(con)
        rank = index.ranker(query, mode)
        k = max(MIN_CANDIDATES, CANDIDATES_PER_RESULT * (offset + limit)) * (SQL_FILTER_FACTOR if needs_sql else 1)
        while True:
            ids, scores, complete = rank(k)
            keep = index.narrow(ids, source_ids)
            ids, scores = ids[keep], scores[keep]
            if needs_sql:
                rows = q.filter_candidates(
                    con, ids, scores, rule=rule, filters=in_sql, min_score=min_score, limit=limit, offset=offset
                )
                if len(rows) == limit or complete:
                    break
            else:
                first = index.first_per_feature(ids)
                if len(first) >= offset + limit or complete:
                    page = first[offset : offset + limit]
                    rows = q.filter_candidates(
                        con, ids[page], scores[page], rule=rule, filters={}, min_score=None, limit=limit, offset=0
                    )
                    break
            k *= 4
    hits = [SearchHit(*row) for row in rows]
    scores = scores_by_label(con, [h.explanation_id for h in hits])
    for hit in hits:
        both = ranking.side_by_side(scores.get(hit.explanation_id, []))
        hit.input_score, hit.output_score = HeadlineScore.of(both["input"]), HeadlineScore.of(both["output"])
    return SearchResults(
        query=query,
        mode=mode,
        limit=limit,
        offset=offset,
        hits=hits,
        n_labels=index.n_labels,
        stale=index.stale,
        seconds=time.perf_counter() - start,
        filters=filters,
    )
