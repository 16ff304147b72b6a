"""What keeping each feature's best label costs a write, as the catalog grows: wall ms (median, p95) and
CPU ms (median; this process, all its threads) per refresh of 32 features' stored best labels
(`catalog_queries.refresh_best`, the hook every write of labels, scores or reviews calls), for 32 features
drawn at random and for 32 consecutive ones, and per 32-label `catalog.write_labels` (what a labeling job's
`write` stage does per transaction: labels, scores, embeddings and that refresh), at 100k and 1M labels.

    python -m autointerp.bench.refresh_best [--sizes 100000,1000000] [--repeats 30] [--keep DIR]

Synthetic store: one label per feature with one detection score (bulk-loaded with random unit vectors: no
MiniLM), and reviews (accept, reject, edit) of 1% of the labels. Each refresh runs in its own transaction,
as the hook does, and is committed. Each timed write relabels 32 random features (a second label each),
with a given embedding, as a job does once its labels are embedded. --keep DIR writes each store there once
and reuses it (a copy per run), so that two versions of the code can be timed on the same stores.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from autointerp.catalog import NewLabel, write_labels
from autointerp.embeddings import EMBEDDING_DIM, EMBEDDING_MODEL
from autointerp.records import Explanation, Score
from autointerp.store import Store
from autointerp.store import catalog_queries as q
from autointerp.store.activations import create_source

SOURCE = "bench-best"
CHUNK = 100_000
KEYS = 32
REVIEWED = 0.01
VERDICTS = ("accept", "reject", "edit")


def unit_vectors(rng: np.random.Generator, m: int) -> np.ndarray:
    v = rng.standard_normal((m, EMBEDDING_DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def write_store(path: Path, n: int, seed: int = 0) -> float:
    """Write the benchmark's store of n labels; the seconds it took."""
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    with Store(path, create=True) as store:
        with store.writing() as con:
            source = create_source(con, SOURCE, model="bench", hookpoint="synthetic", layer=0,
                                   feature_kind="synthetic", width=n, context_len=None, config={"seed": seed})
        for low in range(0, n, CHUNK):
            m = min(CHUNK, n - low)
            table = pa.table({
                "feature": np.arange(low, low + m, dtype=np.int32),
                "label": [f"synthetic label {f}" for f in range(low, low + m)],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(unit_vectors(rng, m).ravel()), EMBEDDING_DIM),
                "scorer": ["detection"] * m,
                "metric": ["auroc"] * m,
                "value": rng.random(m),
                "n": np.full(m, 40, dtype=np.int32),
            })
            with store.writing() as con:
                q.bulk_insert_labels(con, source.source_id, table, EMBEDDING_MODEL, "bench")
        reviewed = rng.choice(np.arange(1, n + 1), int(n * REVIEWED), replace=False)  # ids start at 1
        with store.writing() as con:
            for i, explanation_id in enumerate(reviewed.tolist()):
                verdict = VERDICTS[i % len(VERDICTS)]
                q.insert_review(con, explanation_id, verdict, "edited" if verdict == "edit" else None, None)
            q.refresh_best(con)
    return time.perf_counter() - start


def stats(timings: list[tuple[float, float]]) -> str:
    """Wall ms median and p95, then CPU ms median (this process, all its threads: what machine load does
    not inflate)."""
    wall, cpu = (np.asarray(t) * 1000 for t in zip(*timings))
    return f"{np.percentile(wall, 50):7.1f} {np.percentile(wall, 95):7.1f} {np.percentile(cpu, 50):6.1f}"


class Timer:
    """Wall and CPU seconds of the block, appended to `out`."""

    def __init__(self, out: list[tuple[float, float]]):
        self.out = out

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def __exit__(self, *exc):
        self.out.append((time.perf_counter() - self.wall, time.process_time() - self.cpu))


def time_refreshes(store: Store, key_sets: list[list[tuple[int, int]]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for keys in key_sets:
        with Timer(out), store.writing() as con:
            q.refresh_best(con, keys)
    return out


def time_writes(store: Store, feature_sets: list[np.ndarray], rng: np.random.Generator) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for features in feature_sets:
        vectors = unit_vectors(rng, len(features))
        labels = [
            NewLabel(Explanation(SOURCE, int(f), f"relabeled {f}"),
                     [Score("detection", "auroc", float(rng.random()), 0.4, 0.9, 40)],
                     "bench-run", None, None, None, vectors[i])
            for i, f in enumerate(features)
        ]
        with Timer(out), store.writing() as con:
            write_labels(con, labels)
    return out


def bench_size(path: Path, n: int, repeats: int) -> dict[str, list[tuple[float, float]]]:
    rng = np.random.default_rng(n)
    with Store(path) as store:  # opening applies any migration the kept store lacks, outside the timings
        source_id = store.con.execute("SELECT source_id FROM sources WHERE name = ?", [SOURCE]).fetchone()[0]
        random_keys = [[(source_id, int(f)) for f in rng.choice(n, KEYS, replace=False)] for _ in range(repeats)]
        runs = [[(source_id, int(f)) for f in range(s, s + KEYS)] for s in rng.integers(0, n - KEYS, repeats)]
        time_refreshes(store, random_keys[:3])  # warm-up: the first statements read the blocks they need
        return {
            "random": time_refreshes(store, random_keys),
            "consecutive": time_refreshes(store, runs),
            "write": time_writes(store, [rng.choice(n, KEYS, replace=False) for _ in range(repeats)], rng),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="labels per store (default 100000,1000000)")
    parser.add_argument("--repeats", type=int, default=30, help="timed refreshes and writes of each kind (default 30)")
    parser.add_argument("--keep", type=Path, help="write each store here once and reuse it (copied per run)")
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at start; "
          f"{KEYS} features per refresh and per write, {args.repeats} of each; wall ms median and p95, CPU ms median")
    print(f"{'labels':>9} {'store s':>8} | {'refresh, random':>22} | {'refresh, consecutive':>22} | {'write_labels':>22}")
    with tempfile.TemporaryDirectory(prefix="refresh-best-") as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            path = Path(tmp) / f"best-{n}.duckdb"
            if args.keep:
                kept = args.keep / f"best-{n}.duckdb"
                write_s = float("nan")  # written by an earlier run
                if not kept.exists():
                    args.keep.mkdir(parents=True, exist_ok=True)
                    write_s = write_store(kept.with_suffix(".partial"), n)
                    kept.with_suffix(".partial").rename(kept)
                shutil.copyfile(kept, path)
            else:
                write_s = write_store(path, n)
            row = bench_size(path, n, args.repeats)
            print(f"{n:>9} {write_s:>8.1f} | {stats(row['random']):>22} | {stats(row['consecutive']):>22} | "
                  f"{stats(row['write']):>22}", flush=True)
            path.unlink()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"load average {os.getloadavg()[0]:.1f} at the end; peak RSS {peak_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
