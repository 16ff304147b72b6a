"""Search over the catalog's labels: keyword (BM25), semantic (cosine over label embeddings) and hybrid
(reciprocal rank fusion of the two; the default).

The indexes are derived from the store and kept as files beside it (`<store>.search/`), so a process
opens them instead of rebuilding, and a damaged or missing set is rebuilt from the store:
- keyword: `autointerp.keyword_index` (DuckDB's fts tokenizer, BM25 scored as DuckDB's `match_bm25`),
  updated incrementally;
- semantic: `autointerp.vector_index` (faiss: a product-quantized fast scan re-ranked by exact cosine;
  approximate above 20k labels, recall@10 against exact cosine in `python -m autointerp.bench.search`),
  updated incrementally.
`SearchIndex.update` adds labels written since the index last looked and drops deleted ones, in
milliseconds for a few labels; `rebuild_indexes` rebuilds from scratch. Searching reads the store
read-only, so it never needs the store's write lock (a labeling job may hold it).

Filters run inside the ranking, not after it: the labels passing them (source, model and layer from the
index's own per-label source; scores, density and review state from one store query, remembered until the
index changes) are handed to both rankers, which only ever return allowed labels; so a filtered page is
never short. One hit per feature: its best-ranked label. An empty query lists features, each by its best
label (`autointerp.ranking`) when that passes the filters. A score filter counts only reliable scores; a
filter that cannot match by mistake (unknown source, scorer or metric; inverted density range) is an
error, not an empty page.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import duckdb
import numpy as np
import pyarrow as pa

from autointerp import index_files, ranking
from autointerp.catalog import REVIEW_STATES, resolve_metric, scores_by_label
from autointerp.embeddings import EMBEDDING_DIM, EMBEDDING_MODEL, embed_texts
from autointerp.errors import AutointerpError
from autointerp.keyword_index import KeywordIndex, Postings, QueryTokenizer, tokenize
from autointerp.rwlock import ReadWriteLock
from autointerp.store import catalog_queries as q
from autointerp.store.activations import get_source, list_sources
from autointerp.vector_index import VectorIndex, unit_rows, write_rows

log = logging.getLogger(__name__)

MODES = ("hybrid", "keyword", "semantic")
RRF_K = 60
LOAD_BATCH = 65_536
MAX_LIMIT = 500
QUERY_CACHE = 256
ALLOWED_CACHE = 16
SAVE_AFTER = 10_000  # an update saves the files once this many labels (or 5% of them) changed since the last save
MIN_CANDIDATES = 64  # the first candidate pool is the larger of this and CANDIDATES_PER_RESULT * (offset + limit);
CANDIDATES_PER_RESULT = 4  # it grows 4x while several labels of one feature leave the page short


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


def _top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, best first."""
    if k >= len(scores):
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


@dataclass
class _Change:
    """What an update read from the store, before it touches the index."""

    version: tuple[int, ...]
    labels: Any  # Arrow table of new labels (explanation_id, source_id, feature, label)
    postings: Postings
    removed_labels: np.ndarray
    vector_ids: np.ndarray
    vectors: np.ndarray
    removed_vectors: np.ndarray

    @property
    def size(self) -> int:
        return len(self.postings.ids) + len(self.removed_labels) + len(self.vector_ids) + len(self.removed_vectors)


@dataclass
class StoreSnapshot:
    """The labels and label vectors a full index build reads from the store."""

    version: tuple[int, ...]
    labels: Any  # pyarrow table of label texts
    vectors: tuple[np.ndarray, np.ndarray]  # explanation ids, [n, dim] unit float16 rows (in memory or mapped)
    folder: Path | None  # where the index files go
    read_seconds: float
    staged: Path | None = None  # the file the rows map, in `folder`, until the build's save moves it in


class SearchIndex:
    """The search indexes of one store: keyword (`KeywordIndex`) and semantic (`VectorIndex`), plus each
    label's source and feature. Derived from the store and kept as files beside it (`index_folder`); a
    search opens them (or builds them when missing or damaged), `update` brings them up to date cheaply,
    `build` rebuilds them from scratch. Searches share the index; an update holds it alone only while it
    changes the in-memory arrays (reading the store and tokenizing happen before)."""

    def __init__(self, embedding_model: str = EMBEDDING_MODEL, embed: Callable[[list[str]], np.ndarray] = embed_texts,
                 *, persist: bool = True):
        self.embedding_model = embedding_model
        self.embed = embed
        self.persist = persist
        self.version: tuple[int, ...] | None = None
        self.seen_version: tuple[int, ...] | None = None
        self.build_seconds = 0.0
        self.built_at = 0.0
        self.update_seconds = 0.0
        self.synced_at = 0.0
        self.loaded_from: Path | None = None  # the folder the index was read from, when it was
        self._lock = ReadWriteLock()
        self._updating = threading.Lock()
        self._tokenizer: QueryTokenizer | None = None
        self._keyword = KeywordIndex()
        self._vectors = VectorIndex(EMBEDDING_DIM)
        self._source_of = np.zeros(1, dtype=np.int32)  # by explanation id
        self._feature_of = np.zeros(1, dtype=np.int64)
        self._label_max = 0  # highest label id indexed (keyword); embeddings: _vector_max
        self._vector_max = 0
        self._unsaved = 0
        self._allowed_cache: dict[tuple, np.ndarray] = {}
        self._query_vectors: dict[str, np.ndarray] = {}

    # ---- keeping the index in step with the store ----------------------------------------------------

    def _version(self, con: duckdb.DuckDBPyConnection) -> tuple[int, ...]:
        return q.index_version(con, self.embedding_model)

    def is_stale(self, con: duckdb.DuckDBPyConnection) -> bool:
        """Whether labels were added or deleted since the index last looked (one cheap query)."""
        self.seen_version = self._version(con)
        return self.version != self.seen_version

    @property
    def stale(self) -> bool:
        """Whether the last look at the store found labels the index lacks (or has that were deleted)."""
        return self.seen_version != self.version

    def build(self, con: duckdb.DuckDBPyConnection) -> float:
        """Rebuild both indexes from the store (and save them beside it); return the seconds it took."""
        return self.build_from(self.read_store(con))

    def read_store(self, con: duckdb.DuckDBPyConnection) -> StoreSnapshot:
        """What a build needs from the store, read in one snapshot. A caller that holds the store only for
        this read (the index keeper, the rebuild command) lets writers in again before the slow part."""
        start = time.perf_counter()
        folder = index_folder(con) if self.persist else None
        staged = _staging_file(folder)
        with _snapshot(con) as cur:
            version = self._version(cur)
            labels = q.label_texts(cur)
            batches = _vector_batches(cur, self.embedding_model)
            if staged is None:
                ids, vectors = _concat(list(batches))
                vectors = (ids, unit_rows(vectors))
            else:  # streamed to a file, a batch at a time: the build's memory does not grow with the labels
                try:
                    vectors = write_rows(staged, batches, EMBEDDING_DIM)
                except BaseException:
                    staged.unlink(missing_ok=True)
                    raise
        return StoreSnapshot(version, labels, vectors, folder, time.perf_counter() - start, staged)

    def build_from(self, snapshot: StoreSnapshot) -> float:
        """Build both indexes from a snapshot of the store (no store access) and save them beside it."""
        start = time.perf_counter()
        with self._updating:
            try:
                keyword = KeywordIndex.build(snapshot.labels)
                vectors = VectorIndex.build_from_rows(EMBEDDING_DIM, *snapshot.vectors, staged=snapshot.staged)
            except BaseException:
                if snapshot.staged is not None:
                    snapshot.staged.unlink(missing_ok=True)
                raise
            with self._lock.write():
                self._keyword, self._vectors = keyword, vectors
                self._source_of = np.zeros(1, dtype=np.int32)
                self._feature_of = np.zeros(1, dtype=np.int64)
                self._place(snapshot.labels)
                self._label_max = snapshot.version[1]
                self._vector_max = snapshot.version[4]
                self._allowed_cache.clear()
                self.version = self.seen_version = snapshot.version
            self._unsaved = 0
            self._save_to(snapshot.folder)
            vectors.discard_staged()  # a save that failed left it: the mapping stays valid
        self.build_seconds = snapshot.read_seconds + time.perf_counter() - start
        self.built_at = self.synced_at = time.time()
        return self.build_seconds

    def open(self, con: duckdb.DuckDBPyConnection) -> None:
        """Read the index files beside the store and catch up with it; rebuild when they are missing,
        damaged or made for another embedding model."""
        if self.load_files(con):
            self.update(con)
        else:
            self.build(con)

    def load_files(self, con: duckdb.DuckDBPyConnection) -> bool:
        """Read the index files beside the store; False when they are missing, damaged or for another model."""
        folder = index_folder(con) if self.persist else None
        return folder is not None and self._load(folder)

    def update(self, con: duckdb.DuckDBPyConnection) -> int:
        """Index labels added since the index last looked and drop deleted ones, keyword and semantic; return
        how many entries changed (a label's text and its embedding count one each). Cheap when little changed: the new labels are read by id, the whole id
        lists only when counts show a deletion. Opens (or builds) the index when it has none yet."""
        if self.version is None:
            self.open(con)
            return 0
        start = time.perf_counter()
        with self._updating:
            with _snapshot(con) as cur:
                change = self._read_change(cur)
            if change is None:
                self.seen_version = self.version
                return 0
            with self._lock.write():
                self._keyword.remove(change.removed_labels)
                self._keyword.add(change.postings)
                self._vectors.remove(change.removed_vectors)
                self._vectors.add(change.vector_ids, change.vectors)
                self._place(change.labels)
                self._label_max = max(self._label_max, change.version[1])
                self._vector_max = max(self._vector_max, change.version[4])
                self._allowed_cache.clear()
                self.version = self.seen_version = change.version
            self._unsaved += change.size
            if self._unsaved >= max(SAVE_AFTER, self.n_labels // 20):
                self._save(con)
        self.update_seconds = time.perf_counter() - start
        self.synced_at = time.time()
        return change.size

    def _read_change(self, cur: duckdb.DuckDBPyConnection) -> _Change | None:
        version = self._version(cur)
        if version == self.version:
            return None
        n_labels, _, _, n_vectors, _, _ = version
        labels = q.label_texts_after(cur, self._label_max)
        removed_labels = np.zeros(0, dtype=np.int64)
        if self._keyword.labels.n_alive + labels.num_rows != n_labels:  # a deletion, or a late commit
            removed_labels, missing = _difference(self._keyword.labels.live_ids, q.all_label_ids(cur),
                                                  labels.column("explanation_id").to_numpy())
            if len(missing):
                labels = pa.concat_tables([labels, q.label_texts_of(cur, missing)])
        vector_ids, vectors = _concat(list(_vector_batches(cur, self.embedding_model, after=self._vector_max)))
        removed_vectors = np.zeros(0, dtype=np.int64)
        if len(self._vectors) + len(vector_ids) != n_vectors:
            removed_vectors, missing = _difference(self._vectors.ids(),
                                                   q.embedded_label_ids(cur, self.embedding_model), vector_ids)
            if len(missing):
                more_ids, more = _concat(list(_vector_batches(cur, self.embedding_model, ids=missing)))
                vector_ids, vectors = np.concatenate([vector_ids, more_ids]), np.concatenate([vectors, more])
        return _Change(version, labels, tokenize(labels), removed_labels, vector_ids, vectors, removed_vectors)

    def refresh(self, con: duckdb.DuckDBPyConnection, min_interval_factor: float = 0.0) -> bool:
        """Open the index, or update it if labels changed; with min_interval_factor f, not sooner than f
        times the last update's (or build's) duration after it. Return whether it changed anything."""
        if self.version is None:
            self.open(con)
            return True
        if not self.is_stale(con):
            return False
        last = self.update_seconds or self.build_seconds
        if time.time() - self.synced_at < min_interval_factor * last:
            return False
        return self.update(con) > 0

    def _place(self, labels) -> None:
        """Record new labels' source and feature (by explanation id)."""
        if not labels.num_rows:
            return
        ids = labels.column("explanation_id").to_numpy()
        top = int(ids.max()) + 1
        if top > len(self._source_of):
            grow = top - len(self._source_of)
            self._source_of = np.concatenate([self._source_of, np.zeros(grow, dtype=np.int32)])
            self._feature_of = np.concatenate([self._feature_of, np.zeros(grow, dtype=np.int64)])
        self._source_of[ids] = labels.column("source_id").to_numpy()
        self._feature_of[ids] = labels.column("feature").to_numpy()

    # ---- the files beside the store ------------------------------------------------------------------

    def _save(self, con: duckdb.DuckDBPyConnection) -> None:
        self._save_to(index_folder(con) if self.persist else None)

    def _save_to(self, folder: Path | None) -> None:
        """Write the index beside the store (best effort: a folder that cannot be written leaves the index
        in memory only, and says so in the log)."""
        if folder is None:
            return
        try:
            with self._lock.read():
                writers = {
                    "keyword.npz": self._keyword.save,
                    "vectors.f16": self._vectors.save_vectors,
                    "vectors.npz": self._vectors.save_rows,
                    "features.npz": lambda path: _save_arrays(path, source_of=self._source_of,
                                                             feature_of=self._feature_of),
                }
                if not self._vectors.exact:
                    writers["vectors.faiss"] = self._vectors.save_codes
                generation = index_files.write(folder, self._manifest(), writers)
            with self._lock.write():  # the rows added since the last save are now in the file
                self._vectors.reopen(generation / "vectors.f16")
            self._unsaved = 0
        except OSError as exc:
            log.warning("search index kept in memory only: cannot write %s (%s)", folder, exc)

    def _manifest(self) -> dict:
        return {"embedding_model": self.embedding_model, "dim": EMBEDDING_DIM, "version": list(self.version),
                "label_max": self._label_max, "vector_max": self._vector_max}

    def _load(self, folder: Path) -> bool:
        """Read the index files; False (and a log line) when they are missing or damaged."""
        try:
            loaded = index_files.read(folder)
            if loaded is None:
                return False
            manifest, files = loaded
            if manifest["embedding_model"] != self.embedding_model or manifest["dim"] != EMBEDDING_DIM:
                return False
            keyword = KeywordIndex.load(files["keyword.npz"])
            vectors = VectorIndex.load(files.get("vectors.faiss"), files["vectors.f16"], files["vectors.npz"],
                                       EMBEDDING_DIM)
            with np.load(files["features.npz"], allow_pickle=False) as data:
                source_of, feature_of = data["source_of"], data["feature_of"]
        except Exception as exc:  # damaged files of any kind: the store rebuilds them
            log.warning("rebuilding the search index: cannot read %s (%s)", folder, exc)
            return False
        with self._lock.write():
            self._keyword, self._vectors = keyword, vectors
            self._source_of, self._feature_of = source_of, feature_of
            self._label_max, self._vector_max = manifest["label_max"], manifest["vector_max"]
            self.version = self.seen_version = tuple(manifest["version"])
            self._allowed_cache.clear()
        self.loaded_from = folder
        return True

    # ---- ranking --------------------------------------------------------------------------------------

    @property
    def needs_rebuild(self) -> bool:
        """Whether the semantic index grew past what it was built for (exact search over many labels, or many
        deleted labels still masked): `rebuild_indexes` in the background restores its speed."""
        return self._vectors.outgrown

    @property
    def n_labels(self) -> int:
        return self._keyword.labels.n_alive

    def _terms(self, query: str) -> list[str]:
        if self._tokenizer is None:
            self._tokenizer = QueryTokenizer()
        return self._tokenizer.terms(query)

    def ranker(self, query: str, mode: str, allowed: np.ndarray | None = None
               ) -> Callable[[int], tuple[np.ndarray, np.ndarray, bool]]:
        """A function k -> (explanation ids, scores, whether every match is in) for the k best labels in
        `mode`, among the labels `allowed` (explanation ids; all when None); the query is tokenized and
        embedded once, however often the caller asks for more."""
        terms = self._terms(query) if mode != "semantic" else []
        vector = self._embed_query(query) if mode != "keyword" else None
        matches: list = []

        def keyword(k: int) -> tuple[np.ndarray, np.ndarray, bool]:
            if not matches:
                with self._lock.read():
                    rows = None if allowed is None else self._keyword.labels.mask(allowed)
                    matches.append(self._keyword.scores(terms, rows))
            ids, scores = matches[0]
            top = _top_rows(scores, min(k, len(scores)))
            return ids[top], scores[top], k >= len(scores)

        def semantic(k: int) -> tuple[np.ndarray, np.ndarray, bool]:
            with self._lock.read():
                return self._vectors.search(vector, k, allowed)

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

    def allowed(self, key: tuple, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The allowed label ids of one set of filters, remembered until the index changes (the next page
        of a filtered search asks the store nothing)."""
        key = (key, self.version)
        found = self._allowed_cache.get(key)
        if found is None:
            found = compute()
            if len(self._allowed_cache) >= ALLOWED_CACHE:
                self._allowed_cache.pop(next(iter(self._allowed_cache)))
            self._allowed_cache[key] = found
        return found

    def labels_of_sources(self, source_ids: list[int]) -> np.ndarray:
        """Ids of the indexed labels of these sources (no store query)."""
        ids = self._keyword.labels.live_ids
        return np.sort(ids[np.isin(self._source_of[ids], source_ids)])

    def first_per_feature(self, ids: np.ndarray) -> np.ndarray:
        """Positions of each feature's first (best-ranked) label among ranked ids."""
        keys = self._source_of[ids].astype(np.int64) << 32 | self._feature_of[ids]
        _, first = np.unique(keys, return_index=True)
        return np.sort(first)


@contextlib.contextmanager
def _snapshot(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """A cursor reading one consistent snapshot of the store (its own transaction)."""
    cur = con.cursor()
    try:
        cur.begin()
        yield cur
    finally:
        cur.close()


def _vector_batches(cur, model: str, *, after: int = -1, ids=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for batch in q.label_vector_batches(cur, model, LOAD_BATCH, after=after, ids=ids):
        yield (batch.column(0).to_numpy(),
               batch.column(1).flatten().to_numpy().reshape(-1, EMBEDDING_DIM).astype(np.float32))


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _difference(indexed: np.ndarray, stored: np.ndarray, incoming: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids indexed but no longer stored, ids stored but neither indexed nor incoming)."""
    indexed = np.unique(indexed)
    removed = np.setdiff1d(indexed, stored, assume_unique=True)
    missing = np.setdiff1d(stored, np.union1d(indexed, incoming), assume_unique=True)
    return removed, missing


def _staging_file(folder: Path | None) -> Path | None:
    """A new file in the index folder for a build's vectors; None (the build holds them in memory) when there
    is no folder or it cannot be written."""
    if folder is None:
        return None
    path = folder / f"staging-{time.time_ns()}-{os.getpid()}.f16"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError as exc:
        log.warning("search index built in memory: cannot write %s (%s)", folder, exc)
        return None
    return path


def _save_arrays(path: Path, **arrays: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def index_folder(con: duckdb.DuckDBPyConnection) -> Path | None:
    """Where a store's search index files live: `<store>.search/` beside the DuckDB file (None in memory)."""
    path = q.database_path(con)
    return None if path is None else path.with_name(path.name + ".search")


def rebuild_indexes(store: str | Path | duckdb.DuckDBPyConnection) -> float:
    """Rebuild a store's search index files from the store (recovery, or after a bulk import); return the
    seconds it took. Reads the store only: a labeling job may keep writing meanwhile."""
    if isinstance(store, duckdb.DuckDBPyConnection):
        return SearchIndex().build(store)
    from autointerp.store import Store

    return rebuild_from_store(Store(Path(store), read_only=True))[1]


def rebuild_from_store(store: Any) -> tuple[StoreSnapshot, float]:
    """A full rebuild that holds `store` (an unopened `Store`) only while reading it: a job's writes wait for the
    read, not for the build. Returns what was read and the seconds the rebuild took."""
    index = SearchIndex()
    with store:
        snapshot = index.read_store(store.con)
    return snapshot, index.build_from(snapshot)


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


def _allowed_labels(
    con: duckdb.DuckDBPyConnection, index: SearchIndex, filters: SearchFilters,
    min_score: tuple[str, str, float] | None, source_ids: list[int] | None,
) -> np.ndarray | None:
    """Ids of the labels every filter allows (None: no filter). Source, model and layer alone need no
    store query: the index knows each label's source."""
    in_sql = {"density_min": filters.density_min, "density_max": filters.density_max, "review": filters.review}
    if min_score is None and all(v is None for v in in_sql.values()):
        if source_ids is None:
            return None
        return index.allowed(("sources", tuple(source_ids)), lambda: index.labels_of_sources(source_ids))
    every = {"source": filters.source, "model": filters.model, "layer": filters.layer, **in_sql}
    return index.allowed(
        (tuple(sorted(every.items())), min_score),
        lambda: q.allowed_label_ids(con, rule=ranking.sql_parameters(), filters=every, min_score=min_score),
    )


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
    label). An empty query lists labeled features by source and feature. An index not opened yet is opened
    (or built) from the store."""
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
    rule = ranking.sql_parameters()
    query = query.strip()
    if not query:
        every = {"source": filters.source, "model": filters.model, "layer": filters.layer,
                 "density_min": filters.density_min, "density_max": filters.density_max, "review": filters.review}
        rows = q.list_feature_hits(con, rule=rule, filters=every, min_score=min_score, limit=limit, offset=offset)
    else:
        if index.version is None:
            index.open(con)
        rank = index.ranker(query, mode, _allowed_labels(con, index, filters, min_score, source_ids))
        k = max(MIN_CANDIDATES, CANDIDATES_PER_RESULT * (offset + limit))
        while True:
            ids, scores, complete = rank(k)
            first = index.first_per_feature(ids)
            if len(first) >= offset + limit or complete:
                break
            k *= 4
        page = first[offset : offset + limit]
        rows = q.filter_candidates(con, ids[page], scores[page], limit=limit, offset=0)
    hits = [SearchHit(*row) for row in rows]
    scores = scores_by_label(con, [h.explanation_id for h in hits], details=False)  # a hit shows headlines only
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
