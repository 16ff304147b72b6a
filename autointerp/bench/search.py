"""Search latency at catalog scale: keyword, semantic and hybrid p50/p95 over 10k, 100k and 1M synthetic
labels, with filters (a broad one and a selective one), the index build, its files' size, opening them, the
incremental update (labels written, then searchable; labels deleted), the recall of the HNSW semantic
index against exact cosine, the empty-query listing (first, random and deep pages), `catalog.best_labels`
over the whole store, and the feature page's server time (request to rendered HTML, in-process client).

    python -m autointerp.bench.search [--sizes 10000,100000,1000000] [--queries 60]

Synthetic labels: three to four words drawn Zipf-like from the 3000 most frequent words of the Python
documentation (so common words sit in many labels, as real labels repeat "tokens", "words", "code"), in a
few templates. A label's vector is the normalised sum of its words' real MiniLM vectors plus noise; only
the 3000 words are embedded, so building 1M labels takes minutes, not hours. Queries are one to three
words drawn the same way, half from the frequent end. Latency is the whole `search()` call: query
embedding, ranking, the SQL that filters and pages, for 20 results.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from autointerp.catalog import best_labels
from autointerp.embeddings import EMBEDDING_DIM, EMBEDDING_MODEL, embed_texts
from autointerp.search import SearchFilters, SearchIndex, index_folder, search
from autointerp.store import Store
from autointerp.store import catalog_queries as q
from autointerp.store.activations import append_chunk, create_source, finalize_source, get_source
from autointerp.store.inventory_queries import delete_explanations

N_WORDS = 3000
CHUNK = 100_000
TEMPLATES = ("{a} {b}", "{a} {b} and {c}", "tokens about {a} in {b} {c}", "{a} {b} {c} {d}")
NOISE = 0.35
PAGE_SOURCE = "bench-activations"
PAGE_FEATURES = 300
PAGE_CONTEXTS = 2000
PAGE_CONTEXT_LEN = 64
DUCKDB_GB = 4  # the reading connection's buffer pool: reading every label would otherwise keep ~2 GB per 1M


def vocabulary() -> list[str]:
    from pydoc_data.topics import topics

    counts = collections.Counter(w for text in topics.values() for w in re.findall(r"[a-z]{4,}", text.lower()))
    return [w for w, _ in counts.most_common(N_WORDS)]


def zipf_choice(rng: np.random.Generator, n: int, size) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1)
    return rng.choice(n, size=size, p=weights / weights.sum())


def make_queries(rng: np.random.Generator, words: list[str], n: int) -> list[str]:
    out = []
    for i in range(n):
        k = 1 + i % 3
        idx = zipf_choice(rng, len(words), k) if i % 2 == 0 else rng.integers(0, len(words), k)
        out.append(" ".join(words[j] for j in idx))
    return out


def synthetic_labels(rng: np.random.Generator, m: int, words: list[str], word_vectors: np.ndarray):
    """m synthetic (label texts, unit vectors [m, 384])."""
    labels, picks, mask = synthetic_texts(rng, m, words)
    vectors = (word_vectors[picks] * mask[:, :, None]).sum(axis=1)
    vectors += NOISE * rng.standard_normal(vectors.shape).astype(np.float32) / np.sqrt(EMBEDDING_DIM)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return labels, vectors.astype(np.float32)


def synthetic_texts(rng: np.random.Generator, m: int, words: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """m synthetic label texts, with the words each used ([m, 4] indices into `words`, and which of the 4 count)."""
    picks = zipf_choice(rng, len(words), (m, 4))
    template = rng.integers(0, len(TEMPLATES), m)
    n_words = np.array([t.count("{") for t in TEMPLATES])[template]
    labels = [
        TEMPLATES[t].format(a=words[p[0]], b=words[p[1]], c=words[p[2]], d=words[p[3]])
        for t, p in zip(template, picks)
    ]
    return labels, picks, np.arange(4)[None, :] < n_words[:, None]


def label_table(features: np.ndarray, labels: list[str], vectors: np.ndarray, rng: np.random.Generator) -> pa.Table:
    m = len(features)
    return pa.table(
        {
            "feature": features.astype(np.int32),
            "label": labels,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), EMBEDDING_DIM),
            "scorer": ["detection"] * m,
            "metric": ["auroc"] * m,
            "value": rng.random(m),
            "n": np.full(m, 40, dtype=np.int32),
        }
    )


def write_labels(store: Store, n: int, words: list[str], word_vectors: np.ndarray, queries: np.ndarray, seed: int):
    """Bulk-write n synthetic labels; return the exact top-10 features per query (cosine, brute force)."""
    rng = np.random.default_rng(seed)
    with store.writing() as con:
        source = create_source(con, "bench-labels", model="bench", hookpoint="synthetic", layer=0,
                               feature_kind="synthetic", width=n, context_len=None, config={"seed": seed})
    best_sims = np.full((len(queries), 10), -np.inf, dtype=np.float32)
    best_features = np.zeros((len(queries), 10), dtype=np.int64)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        labels, vectors = synthetic_labels(rng, m, words, word_vectors)
        features = np.arange(start, start + m, dtype=np.int32)
        table = label_table(features, labels, vectors, rng)
        with store.writing() as con:
            q.bulk_insert_labels(con, source.source_id, table, EMBEDDING_MODEL, "bench")
        sims = queries @ vectors.T  # [n_queries, m]
        merged_sims = np.concatenate([best_sims, sims], axis=1)
        merged_features = np.concatenate([best_features, np.broadcast_to(features, sims.shape)], axis=1)
        top = np.argsort(-merged_sims, axis=1)[:, :10]
        best_sims = np.take_along_axis(merged_sims, top, axis=1)
        best_features = np.take_along_axis(merged_features, top, axis=1)
    return best_features


def write_activation_source(store: Store, words: list[str], seed: int) -> None:
    """A source with real contexts and activations for the feature-page timing, its features labeled too."""
    rng = np.random.default_rng(seed)
    with store.writing() as con:
        source = create_source(con, PAGE_SOURCE, model="bench", hookpoint="synthetic", layer=1, feature_kind="synthetic",
                               width=PAGE_FEATURES, context_len=PAGE_CONTEXT_LEN, config={"seed": seed})
    n_tok = PAGE_CONTEXTS * PAGE_CONTEXT_LEN
    tokens = zipf_choice(rng, len(words), n_tok)
    offsets = pa.array(np.arange(0, n_tok + 1, PAGE_CONTEXT_LEN, dtype=np.int32))
    contexts = pa.table(
        {
            "context_id": np.arange(PAGE_CONTEXTS, dtype=np.int64),
            "token_ids": pa.ListArray.from_arrays(offsets, pa.array(tokens.astype(np.int32))),
            "tokens": pa.ListArray.from_arrays(offsets, pa.array([words[t] for t in tokens], pa.string())),
            "document_id": np.arange(PAGE_CONTEXTS, dtype=np.int64),
            "doc_offset": np.zeros(PAGE_CONTEXTS, dtype=np.int32),
        }
    )
    n_act = n_tok // 4
    flat = rng.integers(0, n_tok, n_act)
    activations = pa.table(
        {
            "feature": (tokens[flat] % PAGE_FEATURES).astype(np.int32),
            "context_id": (flat // PAGE_CONTEXT_LEN).astype(np.int64),
            "pos": (flat % PAGE_CONTEXT_LEN).astype(np.int16),
            "value": rng.exponential(1.0, n_act).astype(np.float32),
        }
    )
    activations = activations.group_by(["feature", "context_id", "pos"]).aggregate([("value", "max")]).rename_columns(
        ["feature", "context_id", "pos", "value"]
    )
    texts = [f"{words[f]} tokens" for f in range(PAGE_FEATURES)]
    table = label_table(np.arange(PAGE_FEATURES), texts, embed_texts(texts), rng)
    with store.writing() as con:
        append_chunk(con, source.source_id, 0, contexts, activations, n_tok, {})
        finalize_source(con, source.source_id)
        q.bulk_insert_labels(con, source.source_id, table, EMBEDDING_MODEL, "bench")


def resident_bytes() -> int:
    """This process's resident memory now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory() -> dict[str, int]:
    """This process's resident memory now, in bytes: all of it, anonymous (heap: what the process holds) and
    file-backed (mapped index pages the kernel may drop and read again)."""
    fields = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file", "VmHWM:": "peak"}
    with open("/proc/self/status") as f:
        return {fields[p[0]]: int(p[1]) * 1024 for p in (line.split() for line in f) if p and p[0] in fields}


def opened_memory(path: Path, queries: list[str]) -> dict:
    """Resident memory of a new process that opens the store and its index files, as a server does: after
    opening, then after the queries in every mode (run in a subprocess, its figures printed as JSON)."""
    code = ("import json, sys; from pathlib import Path; from autointerp.bench.search import _open_and_search; "
            "print(json.dumps(_open_and_search(Path(sys.argv[1]), json.loads(sys.argv[2]))))")
    out = subprocess.run([sys.executable, "-c", code, str(path), json.dumps(queries)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _open_and_search(path: Path, queries: list[str]) -> dict:
    embed_texts(["warm up"])  # the query encoder, loaded before the first figure (a server loads it too)
    before = memory()
    with Store(path, read_only=True) as reader:
        start = time.perf_counter()
        index = SearchIndex()
        index.open(reader.con)
        out = {"open_s": time.perf_counter() - start, "before": before, "opened": memory()}
        for mode in ("keyword", "semantic", "hybrid"):
            for text in queries:
                search(reader.con, index, text, mode=mode)
        out["searched"] = memory()
    out["peak_rss"] = memory()["peak"]  # not ru_maxrss: a child started by fork and exec inherits the parent's
    return out


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def time_calls(fn, items) -> list[float]:
    out = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        out.append(time.perf_counter() - start)
    return out


def gib(memory: dict[str, int]) -> str:
    return f"{memory['anon'] / 2**30:.2f} + {memory['file'] / 2**30:.2f}"


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def write_store(path: Path, n: int, words, word_vectors, query_vectors) -> tuple[np.ndarray, float]:
    """Write the benchmark's store of n labels (and the activation source); (exact top 10 per query, seconds)."""
    store = Store(path, create=True)
    start = time.perf_counter()
    exact = write_labels(store, n, words, word_vectors, query_vectors, seed=n)
    write_activation_source(store, words, seed=1)
    store.close()
    return exact, time.perf_counter() - start


def kept_store(stores: Path, n: int, words, word_vectors, query_vectors) -> tuple[Path, np.ndarray, float]:
    """A store written once into `stores` and reused by later runs (writing 5M labels takes many minutes):
    (its path, exact top 10 per query, the seconds its writing took)."""
    path = stores / f"labels-{n}.duckdb"
    meta = stores / f"labels-{n}.json"
    if not meta.exists():
        path.unlink(missing_ok=True)
        exact, seconds = write_store(path, n, words, word_vectors, query_vectors)
        np.save(stores / f"labels-{n}.exact.npy", exact)
        meta.write_text(json.dumps({"write_s": seconds}))
    exact = np.load(stores / f"labels-{n}.exact.npy")
    if len(exact) != len(query_vectors):
        raise SystemExit(f"{path} was written for {len(exact)} queries, not {len(query_vectors)}: use that --queries")
    return path, exact, json.loads(meta.read_text())["write_s"]


def bench_size(n: int, words, word_vectors, query_texts, query_vectors, folder: Path, stores: Path | None = None,
               best: bool = True) -> dict:
    path = folder / f"labels-{n}.duckdb"
    if stores is None:
        exact, write_s = write_store(path, n, words, word_vectors, query_vectors)
    else:
        kept, exact, write_s = kept_store(stores, n, words, word_vectors, query_vectors)
        for suffix in ("", ".wal"):  # the run adds and deletes labels: the kept store stays as written
            if kept.with_name(kept.name + suffix).exists():
                shutil.copyfile(kept.with_name(kept.name + suffix), path.with_name(path.name + suffix))
    row: dict = {"size": n, "write_s": write_s}
    store_files = (path, path.with_name(path.name + ".wal"))
    row["store_bytes"] = sum(p.stat().st_size for p in store_files if p.exists())
    with Store(path, read_only=True) as reader:
        con = reader.con
        q.limit_memory(con, DUCKDB_GB)
        rss_before = resident_bytes()
        index = SearchIndex()
        row["build_s"] = index.build(con)  # what recovery (`rebuild_indexes`) pays
        row["rss_bytes"], row["rss_index_bytes"] = resident_bytes(), resident_bytes() - rss_before
        row["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        row["built_memory"] = memory()
        row["disk_mb"] = folder_mb(index_folder(con))
        start = time.perf_counter()
        SearchIndex().open(con)
        row["open_s"] = time.perf_counter() - start  # what a new process pays instead of a rebuild
        progress(n, build_s=row["build_s"], disk_mb=row["disk_mb"], peak_mb=row["rss_mb"], open_s=row["open_s"],
                 built_gib={k: v / 2**30 for k, v in row["built_memory"].items()})
        row["opened"] = opened_memory(path, query_texts)
        progress(n, opened={k: v if k == "open_s" else {m: b / 2**30 for m, b in v.items()} if isinstance(v, dict)
                            else v / 2**30 for k, v in row["opened"].items()})
        for text in query_texts[:3]:
            search(con, index, text)  # warm-up

        def timed(mode: str, filters: SearchFilters | None = None) -> tuple[float, float]:
            index.clear_query_cache()  # every timed search embeds its query
            return percentiles(
                time_calls(lambda t: search(con, index, t, mode=mode, filters=filters, limit=20), query_texts)
            )

        for mode in ("keyword", "semantic", "hybrid"):
            row[mode] = timed(mode)
            progress(n, **{mode: row[mode]})
        broad = SearchFilters(min_score="detection:0.9", source="bench-labels")  # ~10% of labels
        selective = SearchFilters(min_score="detection:0.995", source="bench-labels")  # ~0.5%: exact path
        for name, filters in (("broad", broad), ("selective", selective)):
            start = time.perf_counter()
            search(con, index, query_texts[0], filters=filters)  # the first search of a filter asks the store
            row[f"{name}_first_ms"] = (time.perf_counter() - start) * 1000
        row["hybrid_filtered"] = timed("hybrid", broad)
        row["semantic_filtered"] = timed("semantic", broad)
        row["keyword_filtered"] = timed("keyword", broad)
        row["hybrid_selective"] = timed("hybrid", selective)
        progress(n, **{k: row[k] for k in ("hybrid_filtered", "semantic_filtered", "keyword_filtered", "hybrid_selective")})
        # an empty query lists each feature by its best label (read from `feature_best`): a first page, pages
        # anywhere, and deep pages (offsets among the last 1,000 features)
        n_features = n + PAGE_FEATURES
        rng = np.random.default_rng(n)
        for name, offsets in (
            ("listing_first", [0] * 10),
            ("listing", rng.integers(0, max(n_features - 20, 1), 30).tolist()),
            ("listing_deep", (n_features - 20 - rng.integers(0, min(1000, n_features - 20), 30)).tolist()),
        ):
            row[name] = percentiles(time_calls(lambda o: search(con, index, "", limit=20, offset=o), offsets))
        progress(n, **{k: row[k] for k in ("listing_first", "listing", "listing_deep")})
        if best:
            start = time.perf_counter()
            best_labels(con)
            row["best_labels_s"] = time.perf_counter() - start
        only_labels = SearchFilters(source="bench-labels")
        hits = [search(con, index, t, mode="semantic", filters=only_labels, limit=10).hits for t in query_texts]
        row["recall10"] = float(np.mean([
            len({h.feature for h in hs} & set(top.tolist())) / 10 for hs, top in zip(hits, exact)
        ]))
    progress(n, recall10=row["recall10"])
    row.update(update_times(path, index, words, word_vectors))
    progress(n, **{k: v for k, v in row.items() if k.startswith(("update_", "delete_"))})
    row["page"] = feature_page_times(path)
    path.unlink(missing_ok=True)
    return row


def progress(n: int, **figures) -> None:
    """Figures as soon as they are measured (a long run stopped early still leaves them)."""
    print(f"  [{n} labels, load average {os.getloadavg()[0]:.1f}] "
          + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()), flush=True)


def update_times(path: Path, index: SearchIndex, words, word_vectors) -> dict:
    """Labels written by a job become searchable by `update`, no rebuild: seconds for 1 and 1,000 new
    labels and for 1,000 deleted ones (the store reopened read-only each time, as a reader sees it)."""
    rng = np.random.default_rng(7)
    out = {}
    for batch, (name, m) in enumerate((("update_1_s", 1), ("update_1000_s", 1000))):
        labels, vectors = synthetic_labels(rng, m, words, word_vectors)
        labels[0] = f"zyzzyva {name}"  # a word no other label has
        with Store(path) as store, store.writing() as con:
            source = get_source(con, "bench-labels")
            q.bulk_insert_labels(con, source.source_id, label_table(np.arange(m) + 10**8 * (batch + 1), labels, vectors, rng),
                                 EMBEDDING_MODEL, "bench")
        with Store(path, read_only=True) as reader:
            start = time.perf_counter()
            changed = index.update(reader.con)
            out[name] = time.perf_counter() - start
            found = search(reader.con, index, f"zyzzyva {name}", mode="keyword", limit=1).hits
            assert changed == 2 * m and found and found[0].label == labels[0], (changed, found)
    with Store(path) as store, store.writing() as con:
        gone = con.execute("SELECT explanation_id FROM explanations ORDER BY random() LIMIT 1000").fetchnumpy()
        delete_explanations(con, gone["explanation_id"].tolist())
    with Store(path, read_only=True) as reader:
        start = time.perf_counter()
        changed = index.update(reader.con)
        out["delete_1000_s"] = time.perf_counter() - start
        assert changed == 2000, changed
    return out


def feature_page_times(path: Path) -> tuple[float, float]:
    from fastapi.testclient import TestClient

    from autointerp.web import create_app

    rng = np.random.default_rng(0)
    features = rng.choice(PAGE_FEATURES, 30, replace=False)
    with TestClient(create_app(path)) as client:
        client.app.state.index_keeper.current()  # steady state: the server's first index build is done
        client.get(f"/features/{PAGE_SOURCE}/{features[0]}")  # warm-up

        def get(feature):
            response = client.get(f"/features/{PAGE_SOURCE}/{feature}")
            assert response.status_code == 200, response.text

        return percentiles(time_calls(get, features))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--stores", type=Path, help="keep each size's written store in this folder and reuse it "
                        "in later runs (the run works on a copy)")
    parser.add_argument("--no-best-labels", action="store_true", help="skip timing catalog.best_labels (minutes at 5M)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    words = vocabulary()
    word_vectors = embed_texts(words)
    query_texts = make_queries(np.random.default_rng(123), words, args.queries)
    # one at a time, as search() embeds them (batched embedding differs in the last float digits)
    query_vectors = np.stack([embed_texts([t])[0] for t in query_texts])
    rows = []
    with tempfile.TemporaryDirectory(prefix="autointerp-bench-search-") as folder:
        for n in sizes:
            row = bench_size(n, words, word_vectors, query_texts, query_vectors, Path(folder), args.stores,
                             best=not args.no_best_labels)
            rows.append(row)
            print(
                f"{n:>9} labels  write {row['write_s']:6.1f}s  index build {row['build_s']:6.2f}s  "
                f"open from files {row['open_s']:5.2f}s  files {row['disk_mb']:6.0f} MB  peak RSS {row['rss_mb']:6.0f} MB  "
                f"load average {os.getloadavg()[0]:.1f}"
            )
            for key in ("keyword", "semantic", "hybrid", "keyword_filtered", "semantic_filtered", "hybrid_filtered",
                        "hybrid_selective", "listing_first", "listing", "listing_deep"):
                p50, p95 = row[key]
                print(f"           {key:<18} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms")
            print(f"           first search of a filter (asks the store): broad {row['broad_first_ms']:.0f} ms, "
                  f"selective {row['selective_first_ms']:.0f} ms")
            print(f"           semantic recall@10 vs exact cosine {row['recall10']:.3f}")
            print(f"           update: 1 new label {row['update_1_s'] * 1000:.0f} ms, 1,000 new {row['update_1000_s']:.2f}s, "
                  f"1,000 deleted {row['delete_1000_s']:.2f}s (then searchable / gone)")
            if "best_labels_s" in row:
                print(f"           best label of every feature (catalog.best_labels) {row['best_labels_s']:6.2f}s")
            print(f"           feature page       p50 {row['page'][0]:7.1f} ms  p95 {row['page'][1]:7.1f} ms")
            print(f"           store on disk {row['store_bytes'] / 2**30:6.2f} GiB  resident memory after the build "
                  f"{row['rss_bytes'] / 2**30:5.2f} GiB (+{row['rss_index_bytes'] / 2**30:5.2f} GiB; anonymous "
                  f"{row['built_memory']['anon'] / 2**30:5.2f}, mapped files {row['built_memory']['file'] / 2**30:5.2f})")
            opened = row["opened"]
            print(f"           a new process opening the files ({opened['open_s']:.2f}s), resident GiB "
                  f"(anonymous + mapped files): before {gib(opened['before'])}, opened {gib(opened['opened'])}, "
                  f"after {3 * len(query_texts)} searches {gib(opened['searched'])}; peak {opened['peak_rss'] / 2**30:.2f}")
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        print(f"\np95 ratio {last['size']} / {first['size']} labels:")
        for key in ("keyword", "semantic", "hybrid", "hybrid_filtered", "hybrid_selective", "listing", "listing_deep", "page"):
            print(f"  {key:<18} {last[key][1] / first[key][1]:6.2f}x")
        print(f"  index build      {last['build_s'] / first['build_s']:6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
