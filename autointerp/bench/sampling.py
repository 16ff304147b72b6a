"""Sampling speed on a large synthetic store: features/s and per-feature latency (p50 / p95).

    python -m autointerp.bench.sampling [--rows 100_000_000] [--features 300] [--dir DIR] [--keep]

Builds the store (see autointerp.bench.ingest for the data: 32768 features, log-uniform densities, 64-token
contexts) in a temporary folder, or reuses DIR/sampling-<rows>.duckdb when --keep left one there, then
samples random features that fire in enough contexts on one held read connection: one at a time with
`sample` (per-feature latency), then other features with `sample_many` (throughput, as a labeling job reads
them). Target on 2 cores: p95 < 50 ms and >= 200 features/s. Also prints the CPU time per feature, which
other processes sharing the machine do not inflate.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from autointerp.bench.ingest import build_store
from autointerp.config import SamplingConfig
from autointerp.records import FeatureExamples
from autointerp.sampling import sample, sample_many
from autointerp.store import Store
from autointerp.store.activations import get_source, list_feature_stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=lambda s: int(s.replace("_", "")), default=100_000_000)
    parser.add_argument("--features", type=int, default=300, help="features to sample")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the store in --dir and reuse it next time")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.keep and args.dir is None:
        parser.error("--keep needs --dir")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = (args.dir if args.keep else Path(tmp)) / f"sampling-{args.rows}.duckdb"
        if not path.exists():
            built = build_store(path, args.rows, seed=args.seed)
            build_s = built["generate_s"] + built["append_s"] + built["finalize_s"]
            print(
                f"built store: {built['rows']:,} activation rows, {built['contexts']:,} contexts, "
                f"{path.stat().st_size / 2**30:.2f} GiB in {build_s:.0f} s "
                f"(generate {built['generate_s']:.0f} s, append {built['append_s']:.0f} s, finalize {built['finalize_s']:.0f} s)"
            )
        run(path, args.features, args.seed)


def run(path: Path, n_features: int, seed: int) -> None:
    """Two disjoint random feature sets, so neither run finds the other's data in DuckDB's buffer pool: one
    sampled a feature at a time with `sample` (per-feature latency), one with `sample_many` (a job's throughput)."""
    cfg = SamplingConfig()
    with Store(path, read_only=True) as store:
        source = get_source(store.con, "bench")
        (n_rows,) = store.con.execute("SELECT count(*) FROM activations").fetchone()
        eligible = [s.feature for s in list_feature_stats(store.con, source.source_id) if s.n_active_contexts >= cfg.min_active_contexts]
        drawn = random.Random(seed).sample(eligible, min(2 * n_features + 1, len(eligible)))
        first, one_by_one, many = drawn[0], drawn[1 : n_features + 1], drawn[n_features + 1 :]
        t = time.perf_counter()
        sample(store, "bench", first, cfg)
        first_s = time.perf_counter() - t
        latencies = []
        started, cpu_started = time.perf_counter(), time.process_time()
        for feature in one_by_one:
            t = time.perf_counter()
            sample(store, "bench", feature, cfg)
            latencies.append(time.perf_counter() - t)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        started, cpu_started = time.perf_counter(), time.process_time()
        for _, got in sample_many(store, "bench", many, cfg):
            if not isinstance(got, FeatureExamples):
                raise got
        wall_many, cpu_many = time.perf_counter() - started, time.process_time() - cpu_started
    ms = np.array(latencies) * 1000
    print(f"store: {n_rows:,} activation rows; {len(eligible):,} features fire in >= {cfg.min_active_contexts} contexts")
    print(f"first sample (loads the source's tokens once): {first_s * 1000:.0f} ms")
    print(
        f"sample(), {len(latencies)} features one at a time: {len(latencies) / wall:.0f} features/s, "
        f"p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms, max {ms.max():.1f} ms; "
        f"CPU {cpu / len(latencies) * 1000:.1f} ms per feature"
    )
    print(
        f"sample_many() (what a labeling job uses), {len(many)} other features: {len(many) / wall_many:.0f} features/s, "
        f"CPU {cpu_many / len(many) * 1000:.1f} ms per feature"
    )
    print(
        f"targets: p95 < 50 ms ({np.percentile(ms, 95) / 50:.2f} of it), "
        f">= 200 features/s ({len(many) / wall_many / 200:.2f} of it with sample_many, {len(latencies) / wall / 200:.2f} one at a time)"
    )


if __name__ == "__main__":
    main()
