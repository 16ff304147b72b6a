"""The measurement behind the search engine's choice of ANN library: HNSW in usearch, faiss-cpu and hnswlib,
and faiss's PQ fast scan with exact re-ranking (what autointerp.vector_index uses), on the search
benchmark's synthetic label vectors (real MiniLM word vectors, Zipf-like word mix, noise).

    python -m autointerp.bench.ann_libs [--n 200000] [--queries 60] [--libs usearch,faiss,hnswlib,faiss-pq]

Per library, HNSW with the same settings (M=16, ef_construction=128, ef_search=EF_SEARCH) on 2 threads:
build seconds, recall@10 against exact cosine, query p50/p95 (one query at a time, as search() asks),
filtered search (10% and 1% of labels allowed: recall against exact cosine over the allowed set, p95),
incremental add of 1,000 labels and removal of 1,000, resident memory added, bytes on disk. Only the
installed libraries run; the others are reported as missing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from autointerp.bench.search import make_queries, percentiles, synthetic_labels, vocabulary
from autointerp.embeddings import EMBEDDING_DIM, embed_texts

M, EF_CONSTRUCTION, EF_SEARCH, K, THREADS = 16, 128, 96, 10, 2


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


class Usearch:
    name = "usearch"

    def build(self, keys, vectors):
        from usearch.index import Index

        self.index = Index(ndim=EMBEDDING_DIM, metric="cos", dtype="f16", connectivity=M,
                           expansion_add=EF_CONSTRUCTION, expansion_search=EF_SEARCH)
        self.index.add(keys, vectors, threads=THREADS)

    def search(self, query, k):
        return np.asarray(self.index.search(query, k).keys)

    def filtered(self, query, k, allowed_keys, allowed_mask):
        # usearch's Python binding has no predicate search: over-fetch and drop, growing the pool
        pool = k * 4
        while True:
            keys = np.asarray(self.index.search(query, pool).keys)
            keep = keys[allowed_mask[keys]]
            if len(keep) >= k or pool >= len(self.index):
                return keep[:k]
            pool *= 4

    def add(self, keys, vectors):
        self.index.add(keys, vectors, threads=1)

    def remove(self, keys):
        self.index.remove(keys)

    def save(self, path):
        self.index.save(str(path))


class Faiss:
    name = "faiss"

    def build(self, keys, vectors):
        import faiss

        faiss.omp_set_num_threads(THREADS)
        hnsw = faiss.IndexHNSWFlat(EMBEDDING_DIM, M, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = EF_CONSTRUCTION
        self.index = faiss.IndexIDMap2(hnsw)
        self.index.add_with_ids(vectors, keys.astype(np.int64))
        self.faiss = faiss

    def search(self, query, k):
        params = self.faiss.SearchParametersHNSW(efSearch=EF_SEARCH)
        return self.index.search(query[None], k, params=params)[1][0]

    def filtered(self, query, k, allowed_keys, allowed_mask):
        selector = self.faiss.IDSelectorBatch(allowed_keys.astype(np.int64))
        params = self.faiss.SearchParametersHNSW(efSearch=max(EF_SEARCH, k), sel=selector)
        return self.index.search(query[None], k, params=params)[1][0]

    def add(self, keys, vectors):
        self.index.add_with_ids(vectors, keys.astype(np.int64))

    def remove(self, keys):
        self.index.remove_ids(keys.astype(np.int64))  # HNSW cannot remove: this raises

    def save(self, path):
        self.faiss.write_index(self.index, str(path))


class Hnswlib:
    name = "hnswlib"

    def build(self, keys, vectors):
        import hnswlib

        self.index = hnswlib.Index(space="cosine", dim=EMBEDDING_DIM)
        self.index.init_index(max_elements=len(keys) + 10_000, ef_construction=EF_CONSTRUCTION, M=M,
                              allow_replace_deleted=True)
        self.index.set_num_threads(THREADS)
        self.index.add_items(vectors, keys)
        self.index.set_ef(EF_SEARCH)

    def search(self, query, k):
        return self.index.knn_query(query, k, num_threads=1)[0][0]

    def filtered(self, query, k, allowed_keys, allowed_mask):
        self.index.set_ef(max(EF_SEARCH, k))
        return self.index.knn_query(query, k, num_threads=1, filter=lambda key: allowed_mask[key])[0][0]

    def add(self, keys, vectors):
        self.index.add_items(vectors, keys, replace_deleted=True)

    def remove(self, keys):
        for key in keys:
            self.index.mark_deleted(int(key))

    def save(self, path):
        self.index.save_index(str(path))


class FaissPQ:
    """What autointerp uses: a 4-bit PQ fast scan over every label, its best candidates re-ranked exactly."""

    name = "faiss-pq"

    def build(self, keys, vectors):
        from autointerp.vector_index import VectorIndex

        self.index = VectorIndex.build(EMBEDDING_DIM, keys.astype(np.int64), vectors)

    def search(self, query, k):
        return self.index.search(query, k)[0]

    def filtered(self, query, k, allowed_keys, allowed_mask):
        return self.index.search(query, k, allowed_keys)[0]

    def add(self, keys, vectors):
        self.index.add(keys.astype(np.int64), vectors)

    def remove(self, keys):
        self.index.remove(keys.astype(np.int64))

    def save(self, path):
        self.index.save_codes(path)
        self.index.save_vectors(path.with_name(path.name + ".vectors"))
        self.index.save_rows(path.with_name(path.name + ".rows"))


LIBS = {"usearch": Usearch, "faiss": Faiss, "hnswlib": Hnswlib, "faiss-pq": FaissPQ}


def recall(found, truth) -> float:
    return len(set(np.asarray(found).tolist()) & set(truth.tolist())) / len(truth)


def exact_top(vectors, query, k, rows=None):
    sims = vectors @ query if rows is None else vectors[rows] @ query
    top = np.argsort(-sims)[:k]
    return top if rows is None else rows[top]


def measure(lib, vectors, queries, folder: Path) -> dict:
    n = len(vectors)
    keys = np.arange(n, dtype=np.uint64)
    row: dict = {}
    before = rss_mb()
    start = time.perf_counter()
    lib.build(keys[:-1000], vectors[:-1000])
    row["build_s"] = time.perf_counter() - start
    row["rss_mb"] = rss_mb() - before
    base = vectors[:-1000]
    truths = [exact_top(base, q, K) for q in queries]
    found, seconds = [], []
    for q in queries:
        t = time.perf_counter()
        found.append(lib.search(q, K))
        seconds.append(time.perf_counter() - t)
    row["recall"] = float(np.mean([recall(f, t) for f, t in zip(found, truths)]))
    row["p50"], row["p95"] = percentiles(seconds)
    rng = np.random.default_rng(1)
    for share in (0.1, 0.01):
        allowed = np.flatnonzero(rng.random(n - 1000) < share)
        mask = np.zeros(n, dtype=bool)
        mask[allowed] = True
        found, seconds = [], []
        for q in queries:
            t = time.perf_counter()
            found.append(lib.filtered(q, K, allowed, mask))
            seconds.append(time.perf_counter() - t)
        row[f"filtered{share}"] = (
            float(np.mean([recall(f, exact_top(base, q, K, allowed)) for f, q in zip(found, queries)])),
            percentiles(seconds)[1],
        )
    start = time.perf_counter()
    lib.add(keys[-1000:], vectors[-1000:])
    row["add1k_s"] = time.perf_counter() - start
    try:
        start = time.perf_counter()
        lib.remove(keys[:1000])
        row["remove1k_s"] = time.perf_counter() - start
    except Exception as exc:  # a library that cannot remove reports why
        row["remove1k_s"] = f"no ({type(exc).__name__})"
    path = folder / f"{lib.name}.index"
    lib.save(path)
    row["disk_mb"] = sum(p.stat().st_size for p in folder.glob(path.name + "*")) / 2**20
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--libs", default="usearch,faiss,hnswlib,faiss-pq")
    args = parser.parse_args(argv)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; {args.n} labels, "
          f"M={M} ef_construction={EF_CONSTRUCTION} ef_search={EF_SEARCH}, {THREADS} build threads")
    words = vocabulary()
    word_vectors = embed_texts(words)
    _, vectors = synthetic_labels(np.random.default_rng(0), args.n, words, word_vectors)
    queries = np.stack([embed_texts([t])[0] for t in make_queries(np.random.default_rng(123), words, args.queries)])
    with tempfile.TemporaryDirectory(prefix="autointerp-bench-ann-") as folder:
        for name in args.libs.split(","):
            try:
                row = measure(LIBS[name](), vectors, queries, Path(folder))
            except ImportError:
                print(f"{name:<8} not installed")
                continue
            f10, f1 = row["filtered0.1"], row["filtered0.01"]
            remove = row["remove1k_s"]
            print(
                f"{name:<8} build {row['build_s']:6.1f}s  recall@10 {row['recall']:.3f}  p50 {row['p50']:5.2f} ms  "
                f"p95 {row['p95']:5.2f} ms  filtered 10%: recall {f10[0]:.3f} p95 {f10[1]:6.2f} ms  "
                f"1%: recall {f1[0]:.3f} p95 {f1[1]:6.2f} ms  add 1k {row['add1k_s']:.2f}s  remove 1k "
                f"{remove if isinstance(remove, str) else f'{remove:.3f}s'}  RSS +{row['rss_mb']:.0f} MB  "
                f"disk {row['disk_mb']:.0f} MB",
                flush=True,
            )
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
