"""The measurement behind the keyword index's choice: autointerp's own BM25 postings (`keyword_index`,
tokenized by DuckDB's fts extension) against tantivy, on the search benchmark's synthetic label texts.

    python -m autointerp.bench.keyword_libs [--n 1000000] [--queries 60]

tantivy runs twice: with DuckDB's exact terms (each label's stemmed terms, as our index holds them, indexed
with tantivy's whitespace tokenizer: the scores then differ from DuckDB's only by BM25's idf logarithm,
ln against log10, and by what tantivy counts, so a ranking can be compared), and with its own analyzer
set up as close to DuckDB's as it allows (letters-and-digits tokens, lower case, ASCII folding, DuckDB's
stopword list; its English stemmer is Snowball's Porter2, DuckDB's the original Porter). Per engine: build
seconds (tokenizing included), bytes on disk, resident memory added, p50/p95 of one query's top 80 (what
`search()` asks for a 20-result page) with its ids, adding 1,000 labels and deleting 1,000 until searchable,
and how often its top 10 equals ours (ids, and scores up to ln 10).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from autointerp.bench.search import (folder_mb, make_queries, memory, percentiles, synthetic_texts, time_calls,
                                     vocabulary)
from autointerp.keyword_index import KeywordIndex, QueryTokenizer, tokenize
from autointerp.search import _top_rows
from autointerp.store import catalog_queries as q

TOP = 80
CHANGE = 1000
WRITER_HEAP = 256 * 2**20


def label_table(texts: list[str], first_id: int = 1) -> pa.Table:
    return pa.table({"explanation_id": np.arange(first_id, first_id + len(texts), dtype=np.int64), "label": texts})


def term_texts(table: pa.Table) -> tuple[np.ndarray, list[str]]:
    """(ids, each label as its DuckDB terms joined by spaces, a term repeated as often as it occurs)."""
    postings = tokenize(table)
    docs: list[list[str]] = [[] for _ in range(len(postings.ids))]
    for row, term, tf in zip(postings.pair_rows.tolist(), postings.pair_terms, postings.pair_tf.tolist()):
        docs[row].extend([term] * int(tf))
    return postings.ids, [" ".join(d) for d in docs]


def above_ties(ids: list[int], scores: list[float]) -> set[int]:
    """The top 10's labels scoring clearly above its 10th (synthetic labels tie often; ties order freely)."""
    if len(scores) < 10:
        return set(ids)
    return {i for i, s in zip(ids[:10], scores[:10]) if s > scores[9] * (1 + 1e-4)}


def stopwords() -> list[str]:
    fts = q.open_fts_database()
    try:
        q.build_fts_index(fts, label_table(["x"]))
        return q.fts_stopwords(fts)
    finally:
        fts.close()


class Own:
    name = "own BM25 (DuckDB tokenizer)"

    def build(self, table: pa.Table, folder: Path) -> None:
        self.index = KeywordIndex.build(table)
        self.tokenizer = QueryTokenizer()
        self.index.save(folder / "keyword.npz")

    def search(self, query: str, k: int) -> tuple[list[int], list[float]]:
        ids, scores = self.index.scores(self.tokenizer.terms(query))
        top = _top_rows(scores, min(k, len(scores)))
        return ids[top].tolist(), scores[top].tolist()

    def add(self, table: pa.Table) -> None:
        self.index.add(tokenize(table))

    def delete(self, ids: np.ndarray) -> None:
        self.index.remove(ids)


class Tantivy:
    """tantivy; `pretokenized`: fed DuckDB's terms (whitespace tokenizer), else its own analyzer."""

    def __init__(self, pretokenized: bool) -> None:
        self.pretokenized = pretokenized
        self.name = "tantivy, DuckDB's terms" if pretokenized else "tantivy, own analyzer"

    def build(self, table: pa.Table, folder: Path) -> None:
        import tantivy

        schema = tantivy.SchemaBuilder()
        schema.add_integer_field("id", stored=False, indexed=True, fast=True)
        schema.add_text_field("body", stored=False, index_option="freq",
                              tokenizer_name="whitespace" if self.pretokenized else "duck")
        self.index = tantivy.Index(schema.build(), path=str(folder))
        if not self.pretokenized:
            analyzer = (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.regex(r"[\p{L}\p{N}]+"))
                        .filter(tantivy.Filter.lowercase()).filter(tantivy.Filter.ascii_fold())
                        .filter(tantivy.Filter.custom_stopword(stopwords()))
                        .filter(tantivy.Filter.stemmer("english")).build())
            self.index.register_tokenizer("duck", analyzer)
        self.tokenizer = QueryTokenizer()
        self.writer = self.index.writer(heap_size=WRITER_HEAP, num_threads=1)
        self._write(table)

    def _write(self, table: pa.Table) -> None:
        import tantivy

        if self.pretokenized:
            ids, texts = term_texts(table)
        else:
            ids, texts = table.column("explanation_id").to_numpy(), table.column("label").to_pylist()
        for eid, text in zip(ids.tolist(), texts):
            self.writer.add_document(tantivy.Document(id=eid, body=text))
        self._commit()

    def _commit(self) -> None:
        self.writer.commit()
        self.index.reload()
        self.searcher = self.index.searcher()

    def search(self, query: str, k: int) -> tuple[list[int], list[float]]:
        import tantivy

        terms = self.tokenizer.terms(query) if self.pretokenized else None
        if terms is not None:
            if not terms:
                return [], []
            parsed = tantivy.Query.boolean_query(
                [(tantivy.Occur.Should, tantivy.Query.term_query(self.index.schema, "body", t)) for t in terms])
        else:
            parsed = self.index.parse_query_lenient(query, ["body"])[0]
        hits = self.searcher.search(parsed, k).hits
        ids = self._ids([address for _, address in hits])
        return ids, [score / math.log(10) for score, _ in hits]  # tantivy's idf is ln, DuckDB's log10

    def _ids(self, addresses) -> list[int]:
        """Explanation ids from the fast field (no stored document read)."""
        return [int(v) for v in self.searcher.fast_field_values("id", addresses)] if addresses else []

    def add(self, table: pa.Table) -> None:
        self._write(table)

    def delete(self, ids: np.ndarray) -> None:
        for eid in ids.tolist():
            self.writer.delete_documents_by_term("id", eid)
        self._commit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--engines", default="own,tantivy-terms,tantivy")
    args = parser.parse_args(argv)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; {args.n} labels")
    words = vocabulary()
    rng = np.random.default_rng(0)
    texts = []
    for start in range(0, args.n, 100_000):
        texts += synthetic_texts(rng, min(100_000, args.n - start), words)[0]
    table = label_table(texts)
    queries = make_queries(np.random.default_rng(123), words, args.queries)
    more = label_table(synthetic_texts(rng, CHANGE, words)[0], first_id=args.n + 1)
    gone = np.random.default_rng(1).choice(args.n, CHANGE, replace=False) + 1
    tokenizer = QueryTokenizer()
    p50, p95 = percentiles(time_calls(tokenizer.terms, queries))
    print(f"tokenizing a query with DuckDB (part of the first two engines' latency): p50 {p50:.1f} ms p95 {p95:.1f} ms")
    engines = {"own": Own, "tantivy-terms": lambda: Tantivy(True), "tantivy": lambda: Tantivy(False)}
    results = {}
    with tempfile.TemporaryDirectory(prefix="autointerp-bench-keyword-") as tmp:
        for key in args.engines.split(","):
            if key.startswith("tantivy") and importlib.util.find_spec("tantivy") is None:
                print(f"{key}: not installed (pip install tantivy; measured with 0.27.0)")
                continue
            engine = engines[key]()
            folder = Path(tmp) / key
            folder.mkdir()
            before = memory()["anon"]
            start = time.perf_counter()
            engine.build(table, folder)
            build_s = time.perf_counter() - start
            added_mb = (memory()["anon"] - before) / 2**20
            for text in queries[:3]:
                engine.search(text, TOP)
            seconds = []
            tops = []
            for text in queries:
                start = time.perf_counter()
                found = engine.search(text, TOP)
                seconds.append(time.perf_counter() - start)
                tops.append(found)
            results[key] = tops
            start = time.perf_counter()
            engine.add(more)
            add_s = time.perf_counter() - start
            start = time.perf_counter()
            engine.delete(gone)
            delete_s = time.perf_counter() - start
            p50, p95 = percentiles(seconds)
            print(f"{engine.name:<30} build {build_s:6.1f}s  disk {folder_mb(folder):7.1f} MB  memory +{added_mb:5.0f} MB  "
                  f"top {TOP} p50 {p50:6.1f} ms p95 {p95:6.1f} ms  add {CHANGE} {add_s:5.2f}s  delete {CHANGE} "
                  f"{delete_s:5.2f}s  load {os.getloadavg()[0]:.1f}", flush=True)
            shutil.rmtree(folder, ignore_errors=True)
            del engine
    if "own" in results:
        for key, tops in results.items():
            if key == "own":
                continue
            same_ids = same_scores = 0
            for (a_ids, a_scores), (b_ids, b_scores) in zip(results["own"], tops):
                a, b = a_scores[:10], b_scores[:10]
                same_scores += len(a) == len(b) and np.allclose(a, b, rtol=1e-3)
                same_ids += above_ties(a_ids, a_scores) == above_ties(b_ids, b_scores)
            print(f"top 10 against own BM25, {key}: same scores {same_scores}/{len(tops)} queries, same labels "
                  f"{same_ids}/{len(tops)} (those scoring above the 10th score: the labels tied with it may differ)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
