"""Batch labeling at scale against the batch APIs' double (autointerp/bench/batch_double.py, in a child
process so that its work stays out of the measurement): client CPU time, bytes uploaded, number of batches,
and the cost ratio batch / streaming read from the ledgers.

    python -m autointerp.bench.batch [--features 10000] [--compare 300] [--rows 4000000]

The batch job labels `--features` features of a synthetic store, one step after the other until done (the
double ends every batch at its first poll). The cost ratio compares a streaming job and a batch job over the
same `--compare` features: the same requests and the same deterministic answers, billed at list and at batch
prices. Explainer openai:gpt-4o-mini (priced), k=1, detection scoring.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from autointerp.batch_job import run_batch_job
from autointerp.bench.ingest import build_store
from autointerp.bench.latency_server import server_process
from autointerp.bench.pipeline_throughput import BENCH_SAMPLING, BENCH_SCORERS, SOURCE, eligible_features
from autointerp.config import JobConfig
from autointerp.embeddings import embed_texts
from autointerp.errors import AutointerpError
from autointerp.llm.local import free_port
from autointerp.pipeline import run_label_job
from autointerp.store import Store
from autointerp.store.bench_queries import store_totals

MODEL = "openai:gpt-4o-mini"


@contextlib.contextmanager
def double_process() -> Iterator[str]:
    """The batch double in a child process; yields its OpenAI base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with server_process(["-m", "autointerp.bench.batch_double", "--port", str(port)], f"{url}/v1/batches", "the batch double"):
        yield f"{url}/v1"


def job(base_url: str, features: list[int]) -> JobConfig:
    return JobConfig(
        source=SOURCE, features=",".join(map(str, features)), explainer=MODEL, scorers=BENCH_SCORERS,
        sampling=BENCH_SAMPLING, concurrency=64, base_url=base_url,
    )


def ledger(db: Path) -> dict[str, float]:
    with Store(db, read_only=True) as store:
        return store_totals(store.con)


def batch_run(db: Path, cfg: JobConfig) -> tuple[int, float, float]:
    """(steps, client CPU seconds, wall seconds) of the batch job run to the end."""
    cpu, wall = time.process_time(), time.perf_counter()
    store = Store(db)
    for steps in range(1, 50):
        if run_batch_job(store, cfg, progress=False).done:
            return steps, time.process_time() - cpu, time.perf_counter() - wall
    raise AutointerpError("the batch job did not finish in 50 steps")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=10_000, help="features of the batch job (default 10000)")
    parser.add_argument("--compare", type=int, default=300, help="features of the streaming/batch cost comparison")
    parser.add_argument("--rows", type=int, default=4_000_000, help="activation rows of the synthetic store")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp:
        work = Path(tmp)
        base = work / "base.duckdb"
        built = build_store(base, args.rows, source=SOURCE)
        pool = eligible_features(base, args.features)
        embed_texts(["warm-up"])
        print(f"synthetic store: {built['contexts']} contexts, {built['rows']:,} activation rows, {len(pool)} features")
        with double_process() as base_url:
            for name in ("stream", "batch-compare", "batch"):
                shutil.copy(base, work / f"{name}.duckdb")
            compare = pool[: args.compare]
            t = time.perf_counter()
            run_label_job(Store(work / "stream.duckdb"), job(base_url, compare), progress=False)
            stream_s = time.perf_counter() - t
            batch_run(work / "batch-compare.duckdb", job(base_url, compare))
            stream, batched = ledger(work / "stream.duckdb"), ledger(work / "batch-compare.duckdb")
            print(
                f"cost over the same {len(compare)} features: streaming ${stream['cost']:.4f} ({stream['calls']} calls, "
                f"{stream_s:.0f} s), batch ${batched['cost']:.4f} ({batched['calls']} answers); tokens {stream['tokens']:,} vs "
                f"{batched['tokens']:,}; ratio batch/streaming {batched['cost'] / stream['cost']:.3f}"
            )
            steps, cpu_s, wall_s = batch_run(work / "batch.duckdb", job(base_url, pool))
            big = ledger(work / "batch.duckdb")
            print(
                f"batch job, {len(pool)} features: {big['labeled']} labeled in {steps} steps, {big['batches']} batches, "
                f"{big['calls']:,} answers, {big['bytes'] / 1e6:.1f} MB uploaded, client CPU {cpu_s:.0f} s "
                f"({cpu_s / len(pool) * 1000:.1f} ms per feature), wall {wall_s:.0f} s, cost ${big['cost']:.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
