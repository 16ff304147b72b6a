"""Collection on Ray (1 and 2 workers) against the in-process collection, on the same corpus and settings.

    python -m autointerp.bench.ray_collection [--tokens 32768] [--chunk-tokens 4096] [--repeats 1]

One local Ray cluster serves every Ray run (its start-up is timed once). Each Ray worker gets one CPU and
runs torch on one thread, so the like-for-like baseline is the in-process collection on one thread; the
in-process run on all of this machine's threads is printed too. Throughput is the chunk loop (forward
passes, shard tables, storing) without model loading and finalize; the workers' start-up (loading the model
in each) is reported apart, as Ray's fixed cost per job. Every Ray run's stored rows are checked against the
in-process ones. Last, the one writer's rate on synthetic 1M-row chunks: plain appends against the validated
import path each Ray shard goes through, which caps what any number of workers can store.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from autointerp.collect.collector import CollectConfig, collect
from autointerp.collect.models import load_subject_model
from autointerp.collect.ray_collect import collect_on_ray, store_shard
from autointerp.ray_cluster import AUTO, connected
from autointerp.store import Store
from autointerp.store.activations import append_chunk, create_source


def _rows(store: Store) -> tuple:
    con = store.con
    return (
        con.execute("SELECT * FROM contexts ORDER BY context_id").fetchall(),
        con.execute("SELECT * FROM activations ORDER BY ALL").fetchall(),
    )


def writer_rows_per_second(n_chunks: int = 3, n_contexts: int = 512, context_len: int = 64, k: int = 32) -> dict[str, float]:
    """Rows/s of the one writer on synthetic chunks of 32-neuron rows (1M rows each by default): the plain
    `append_chunk` the in-process collector uses, and the validated import path every Ray shard takes."""
    rng = np.random.default_rng(0)
    n_tokens = n_contexts * context_len

    def chunk(first: int) -> tuple[pa.Table, pa.Table]:
        ids = rng.integers(0, 49152, size=n_tokens).astype(np.int32)
        offsets = pa.array(np.arange(n_contexts + 1, dtype=np.int32) * context_len)
        contexts = pa.table({
            "context_id": pa.array(np.arange(first, first + n_contexts, dtype=np.int64)),
            "token_ids": pa.ListArray.from_arrays(offsets, pa.array(ids)),
            "tokens": pa.ListArray.from_arrays(offsets, pa.array([f"t{i}" for i in ids.tolist()], pa.string())),
            "document_id": pa.array(np.zeros(n_contexts, np.int64)),
            "doc_offset": pa.array(np.arange(n_contexts, dtype=np.int32) * context_len),
        })
        rows = np.repeat(np.arange(n_tokens), k)
        features = (np.arange(k) * (1536 // k) + rng.integers(0, 1536 // k, size=(n_tokens, k))).reshape(-1)  # k distinct
        activations = pa.table({
            "feature": pa.array(features.astype(np.int32)),
            "context_id": pa.array((rows // context_len + first).astype(np.int64)),
            "pos": pa.array((rows % context_len).astype(np.int16)),
            "value": pa.array(rng.random(len(rows), dtype=np.float32) + 0.1),
        })
        return contexts, activations

    chunks = [chunk(i * n_contexts) for i in range(n_chunks)]
    cfg = CollectConfig(context_len=context_len)
    out = {}
    for how in ("append_chunk", "import path"):
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(Path(tmp) / "w.duckdb", create=True)
            with store.writing() as con:
                source_id = create_source(
                    con, "w", model=None, hookpoint=None, layer=None, feature_kind="neurons", width=1536,
                    context_len=context_len, config={},
                ).source_id
            start = time.perf_counter()
            for i, (contexts, activations) in enumerate(chunks):
                if how == "append_chunk":
                    with store.writing() as con:
                        append_chunk(con, source_id, i, contexts, activations, n_tokens, {})
                else:
                    store_shard(store, source_id, i, contexts, activations, {}, Path(tmp), cfg)
            out[how] = sum(a.num_rows for _, a in chunks) / (time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--context-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--chunk-tokens", type=int, default=4096, help="small enough that two workers share the job")
    parser.add_argument("--workers", default="1,2", help="Ray worker counts to run (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each setup; medians are printed")
    args = parser.parse_args(argv)
    cfg = CollectConfig(
        model=args.model,
        layer=args.layer,
        tokens=args.tokens,
        context_len=args.context_len,
        batch_size=args.batch_size,
        chunk_tokens=args.chunk_tokens,
        device="cpu",
        dtype="float32",
    )
    tokens = cfg.tokens // cfg.context_len * cfg.context_len
    threads = torch.get_num_threads()
    print(
        f"{cfg.model} layer {cfg.layer} neurons, {tokens:,} tokens of {cfg.dataset}, batches of "
        f"{cfg.batch_size}x{cfg.context_len}, chunks of {cfg.chunk_tokens} tokens; {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    subject = load_subject_model(cfg.model, cfg.device, cfg.dtype)
    results: dict[str, list[float]] = {}
    startup: dict[str, list[float]] = {}
    reference = None

    def record(name: str, report, start_s: float | None = None) -> None:
        results.setdefault(name, []).append(report.seconds)
        if start_s is not None:
            startup.setdefault(name, []).append(start_s)

    t0 = time.perf_counter()
    with connected(AUTO, num_cpus=max(2, max(int(w) for w in args.workers.split(",")))):
        cluster_s = time.perf_counter() - t0
        for _ in range(args.repeats):
            for n_threads in sorted({1, threads}):
                torch.set_num_threads(n_threads)
                with tempfile.TemporaryDirectory() as tmp:
                    store = Store(Path(tmp) / "in.duckdb", create=True)
                    record(f"in-process, {n_threads} thread(s)", collect(store, cfg, subject=subject, progress=False))
                    reference = reference or _rows(store)
            torch.set_num_threads(threads)
            for workers in (int(w) for w in args.workers.split(",")):
                with tempfile.TemporaryDirectory() as tmp:
                    store = Store(Path(tmp) / "ray.duckdb", create=True)
                    t1 = time.perf_counter()
                    report = collect_on_ray(store, cfg, workers=workers, progress=False)
                    total = time.perf_counter() - t1
                    record(f"Ray, {workers} worker(s)", report, total - report.seconds - report.finalize_seconds)
                    same = _rows(store) == reference
                    if not same:
                        raise SystemExit(f"Ray with {workers} worker(s) stored different rows than the in-process run")

    base = statistics.median(results["in-process, 1 thread(s)"])
    print(f"local Ray cluster start-up: {cluster_s:.1f} s (once per process)")
    print(f"{'setup':<28}{'tokens/s':>10}{'vs in-process 1 thread':>24}{'worker start-up':>18}")
    for name, seconds in results.items():
        s = statistics.median(seconds)
        start = f"{statistics.median(startup[name]):.1f} s" if name in startup else ""
        print(f"{name:<28}{tokens / s:>10,.0f}{base / s:>23.2f}x{start:>18}")
    writer = writer_rows_per_second()
    print(
        f"the one writer, 1M-row chunks of 32-neuron rows: append_chunk {writer['append_chunk'] / 1e6:.2f}M rows/s, "
        f"validated import path (Parquet + every import rule) {writer['import path'] / 1e6:.2f}M rows/s "
        f"= {writer['import path'] / 32:,.0f} tokens/s of 32-neuron rows, the most any number of workers can store"
    )
    if "Ray, 1 worker(s)" in results:
        one = statistics.median(results["Ray, 1 worker(s)"])
        print(
            f"Ray's overhead on the chunk loop (1 worker vs in-process, both 1 thread): {one / base - 1:+.1%}; "
            "every Ray run stored the same contexts and activations as the in-process run"
        )


if __name__ == "__main__":
    main()
