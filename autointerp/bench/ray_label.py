"""Labeling on Ray (1 and 2 workers) against the in-process job, against the latency server.

    python -m autointerp.bench.ray_label [--latency 0.5] [--features 48] [--concurrency 8]

The job is that of `autointerp.bench.pipeline_throughput` (sample, explain, detection scoring, write-back,
ledger) against the latency server in a child process, whose chat answers open with a `Label:` line so that
every feature is labeled. Each run labels the same features on a fresh copy of one synthetic store (an empty
ledger). `--concurrency` is the features in flight of the in-process job and of each Ray worker, so the
2-worker run has twice as many in flight; the in-process job at that doubled concurrency is printed too.
Ideal = features in flight / (requests per feature * latency).

Ray's overhead, stated apart: the local cluster's start-up (once per process), and the fixed cost per job
(starting the workers, each importing the job's modules and loading the embedding model) measured as a
1-feature Ray job minus a 1-feature in-process job. The Ray rows' seconds include that fixed cost.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

from autointerp.bench.ingest import build_store
from autointerp.bench.latency_server import latency_server_process
from autointerp.bench.pipeline_throughput import BENCH_SAMPLING, bench_job, eligible_features
from autointerp.config import JobConfig
from autointerp.embeddings import embed_texts
from autointerp.pipeline import JobSummary, run_label_job
from autointerp.ray_cluster import AUTO, connected
from autointerp.store import Store

REQUESTS_PER_FEATURE = 1 + -(
    -(BENCH_SAMPLING.n_test_positives + BENCH_SAMPLING.n_test_random_negatives + BENCH_SAMPLING.n_test_hard_negatives) // 5
)


def run(base: Path, work: Path, job: JobConfig, name: str) -> JobSummary:
    db = work / f"{name}.duckdb"
    shutil.copy(base, db)
    summary = run_label_job(Store(db), job, progress=False)
    db.unlink()
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.5, help="seconds before each answer (default 0.5)")
    parser.add_argument("--features", type=int, default=48, help="features per run (default 48)")
    parser.add_argument("--concurrency", type=int, default=8, help="features in flight in process and per Ray worker (default 8)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="activation rows of the synthetic store")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ray-label-") as tmp:
        work = Path(tmp)
        base = work / "base.duckdb"
        built = build_store(base, args.rows)
        pool = eligible_features(base, args.features)
        embed_texts(["warm-up"])  # the in-process job's embedding model, loaded outside the timings
        print(
            f"synthetic store: {built['rows']:,} activation rows, {len(pool)} features per run; server latency "
            f"{args.latency:g} s; {REQUESTS_PER_FEATURE} requests per feature (detection)"
        )
        started = time.perf_counter()
        with connected(AUTO, num_cpus=2) as ray:
            cluster_s = time.perf_counter() - started
            cpus = int(ray.cluster_resources().get("CPU", 0))
            with latency_server_process(args.latency, lifetime_s=1800.0, label_first=True) as base_url:
                c = args.concurrency
                one = bench_job(base_url, c, pool[:1])
                fixed = run(base, work, dataclasses.replace(one, ray=AUTO, ray_workers=1), "fixed-ray").seconds
                fixed -= run(base, work, one, "fixed-here").seconds
                runs = [("in process", 1, c, bench_job(base_url, c, pool)), ("in process", 1, 2 * c, bench_job(base_url, 2 * c, pool))]
                runs += [(f"Ray, {n} worker{'s' if n > 1 else ''}", n, n * c, dataclasses.replace(bench_job(base_url, c, pool), ray=AUTO, ray_workers=n))
                         for n in (1, 2)]
                print(
                    f"{'path':<16} {'in flight':>9} {'labeled':>7} {'seconds':>8} {'features/s':>10} {'tokens/s':>9} "
                    f"{'ideal/s':>8} {'ratio':>6} {'features/s less fixed cost':>26}"
                )
                for name, n, in_flight, job in runs:
                    s = run(base, work, job, name.replace(" ", "-").replace(",", ""))
                    tokens = s.usage.prompt_tokens + s.usage.completion_tokens
                    ideal = in_flight / (REQUESTS_PER_FEATURE * args.latency)
                    per_s = len(pool) / s.seconds
                    steady = len(pool) / max(s.seconds - fixed, 1e-9) if job.ray else per_s
                    print(
                        f"{name:<16} {in_flight:>9} {len(s.with_status('done')):>7} {s.seconds:>8.1f} {per_s:>10.2f} "
                        f"{tokens / s.seconds:>9,.0f} {ideal:>8.2f} {per_s / ideal:>6.2f} {steady:>26.2f}"
                    )
        print(
            f"Ray overhead: local cluster start-up {cluster_s:.1f} s (once); fixed cost per job {fixed:.1f} s (workers "
            f"starting, importing the job's modules, loading the embedding model; included in the Ray rows); cluster of {cpus} CPUs"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
