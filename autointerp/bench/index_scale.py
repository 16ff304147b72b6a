"""The search indexes alone at millions of labels, without a store: what `bench.search` measures end to end,
for sizes where writing the store takes longer than the measurement (5M labels: ~8 min quiet, over an
hour on a shared machine).

    python -m autointerp.bench.index_scale [--n 5000000] [--queries 60]

The benchmark's synthetic labels (`bench.search.synthetic_labels`: texts and vectors) are generated 100k at
a time and streamed into the index as a build streams them from a store: vectors into the float16 file
(`vector_index.write_rows`), texts tokenized by DuckDB's fts 500k at a time. Reported: build seconds, bytes on
disk per file, the building process's peak memory; then a new process that opens the files reports its
heap (anonymous) and mapped memory, semantic p50/p95 and recall@10 against exact cosine, keyword
(BM25 over the postings, the query tokenized by DuckDB) p50/p95, and adding / deleting 1,000 labels.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from autointerp.bench.search import make_queries, memory, percentiles, synthetic_labels, time_calls, vocabulary
from autointerp.embeddings import EMBEDDING_DIM, embed_texts
from autointerp.keyword_index import KeywordIndex, QueryTokenizer, tokenize
from autointerp.vector_index import VectorIndex, write_rows

CHUNK = 100_000
CHANGE = 1000


def build(n: int, folder: Path, words, word_vectors, query_vectors) -> dict:
    rng = np.random.default_rng(n)
    exact_sims = np.full((len(query_vectors), 10), -np.inf, dtype=np.float32)
    exact_ids = np.zeros((len(query_vectors), 10), dtype=np.int64)
    texts: list[pa.Table] = []

    def batches():
        nonlocal exact_sims, exact_ids
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            labels, vectors = synthetic_labels(rng, m, words, word_vectors)
            ids = np.arange(start + 1, start + m + 1, dtype=np.int64)
            texts.append(pa.table({"explanation_id": ids, "label": labels}))
            sims = np.concatenate([exact_sims, query_vectors @ vectors.T], axis=1)
            every = np.concatenate([exact_ids, np.broadcast_to(ids, (len(query_vectors), m))], axis=1)
            top = np.argsort(-sims, axis=1)[:, :10]
            exact_sims, exact_ids = np.take_along_axis(sims, top, axis=1), np.take_along_axis(every, top, axis=1)
            yield ids, vectors

    start = time.perf_counter()
    ids, rows = write_rows(folder / "vectors.f16", batches(), EMBEDDING_DIM)
    generate_s = time.perf_counter() - start
    start = time.perf_counter()
    vectors = VectorIndex.build_from_rows(EMBEDDING_DIM, ids, rows)
    vector_s = time.perf_counter() - start
    start = time.perf_counter()
    keyword = KeywordIndex.build(pa.concat_tables(texts))
    keyword_s = time.perf_counter() - start
    vectors.save_codes(folder / "vectors.faiss")
    vectors.save_rows(folder / "vectors.npz")
    keyword.save(folder / "keyword.npz")
    np.save(folder / "exact.npy", exact_ids)
    return {"generate_and_stream_s": generate_s, "vector_build_s": vector_s, "keyword_build_s": keyword_s,
            "files_mb": {p.name: p.stat().st_size / 2**20 for p in folder.iterdir() if p.name != "exact.npy"},
            "build_peak_gib": memory()["peak"] / 2**30}


def opened(folder: Path, queries: list[str], query_vectors: np.ndarray, words, word_vectors) -> dict:
    """In a new process: open the files and measure (what a server pays)."""
    before = memory()
    start = time.perf_counter()
    vectors = VectorIndex.load(folder / "vectors.faiss", folder / "vectors.f16", folder / "vectors.npz",
                               EMBEDDING_DIM)
    keyword = KeywordIndex.load(folder / "keyword.npz")
    out: dict = {"open_s": time.perf_counter() - start, "before_gib": gib(before), "opened_gib": gib(memory())}
    tokenizer = QueryTokenizer()
    exact = np.load(folder / "exact.npy")
    found = []

    def semantic(i: int) -> None:
        found.append(vectors.search(query_vectors[i], 80)[0][:10])

    out["semantic_ms"] = percentiles(time_calls(semantic, range(len(queries))))
    out["recall10"] = float(np.mean([len(set(f.tolist()) & set(e.tolist())) / 10 for f, e in zip(found, exact)]))
    out["keyword_ms"] = percentiles(time_calls(lambda t: keyword.scores(tokenizer.terms(t)), queries))
    out["searched_gib"] = gib(memory())
    n = len(vectors.labels)
    labels, new_vectors = synthetic_labels(np.random.default_rng(7), CHANGE, words, word_vectors)
    new_ids = np.arange(n + 1, n + CHANGE + 1, dtype=np.int64)
    start = time.perf_counter()
    vectors.add(new_ids, new_vectors)
    keyword.add(tokenize(pa.table({"explanation_id": new_ids, "label": labels})))
    out["add_1000_s"] = time.perf_counter() - start
    gone = np.random.default_rng(8).choice(n, CHANGE, replace=False) + 1
    start = time.perf_counter()
    vectors.remove(gone)
    keyword.remove(gone)
    out["delete_1000_s"] = time.perf_counter() - start
    out["peak_gib"] = memory()["peak"] / 2**30
    return out


def gib(figures: dict[str, int]) -> dict[str, float]:
    return {k: round(v / 2**30, 3) for k, v in figures.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5_000_000)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--open", type=Path, help=argparse.SUPPRESS)  # the new process's side
    args = parser.parse_args(argv)
    words = vocabulary()
    word_vectors = embed_texts(words)
    queries = make_queries(np.random.default_rng(123), words, args.queries)
    query_vectors = np.stack([embed_texts([t])[0] for t in queries])
    if args.open:
        print(json.dumps(opened(args.open, queries, query_vectors, words, word_vectors)))
        return 0
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; {args.n} labels", flush=True)
    with tempfile.TemporaryDirectory(prefix="autointerp-bench-index-scale-") as tmp:
        folder = Path(tmp)
        built = build(args.n, folder, words, word_vectors, query_vectors)
        print(json.dumps(built), f"load average {os.getloadavg()[0]:.1f}", flush=True)
        out = subprocess.run([sys.executable, "-m", "autointerp.bench.index_scale", "--n", str(args.n),
                              "--queries", str(args.queries), "--open", str(folder)],
                             check=True, capture_output=True, text=True).stdout
        print(out.strip().splitlines()[-1], f"load average {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
