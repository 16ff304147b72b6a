"""Labeling-job throughput: features/min of the real job (sample, explain, detection scoring, write-back,
ledger) against an OpenAI-compatible server that answers every request after a fixed latency, at several
concurrency levels, as a ratio to the ideal concurrency * 60 / (requests per feature * latency).

    python -m autointerp.bench.pipeline_throughput [--latency 1] [--levels 1,8,32,128] [--seconds 30]

The server (in a child process, so its work stays out of this process's measurement) is the latency server
of `autointerp.bench.latency_server`, with chat answers that begin with a `Label:` line, so that every
explanation parses and every feature is scored: the labeling path, not the failure path, is measured.
Each level runs on a fresh copy of one synthetic store (an empty ledger: no cache hits).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from autointerp.bench.ingest import build_store
from autointerp.bench.latency_server import latency_server_process
from autointerp.config import JobConfig, SamplingConfig
from autointerp.embeddings import embed_texts
from autointerp.pipeline import run_label_job
from autointerp.store import Store
from autointerp.store.activations import get_source, select_features

SOURCE = "bench"
BENCH_SAMPLING = SamplingConfig(
    n_train_top=5,
    n_train_quantile=5,
    n_train_hard_negatives=0,
    n_quantiles=2,
    n_valid_positives=2,
    n_valid_random_negatives=1,
    n_valid_hard_negatives=1,
    n_test_positives=10,
    n_test_random_negatives=5,
    n_test_hard_negatives=5,
)
# 1 explanation + 20 test contexts / 5 per detection prompt = 5 requests per feature
BENCH_SCORERS = ("detection",)


@dataclass
class Level:
    concurrency: int
    features: int
    labeled: int
    requests: int
    seconds: float
    latency_s: float

    @property
    def requests_per_feature(self) -> float:
        return self.requests / max(self.features, 1)

    @property
    def per_minute(self) -> float:
        return self.features / self.seconds * 60

    @property
    def ideal_per_minute(self) -> float:
        return self.concurrency * 60 / (self.requests_per_feature * self.latency_s)

    @property
    def ratio(self) -> float:
        return self.per_minute / self.ideal_per_minute


def bench_job(base_url: str, concurrency: int, features: list[int]) -> JobConfig:
    return JobConfig(
        source=SOURCE,
        features=",".join(map(str, features)),
        explainer="openai:bench",
        scorers=BENCH_SCORERS,
        sampling=BENCH_SAMPLING,
        concurrency=concurrency,
        base_url=base_url,
    )


def measure(base: Path, work: Path, base_url: str, concurrency: int, features: list[int], latency_s: float) -> Level:
    db = work / f"c{concurrency}.duckdb"
    shutil.copy(base, db)
    summary = run_label_job(Store(db), bench_job(base_url, concurrency, features), progress=False)
    return Level(
        concurrency, len(features), len(summary.with_status("done")), summary.usage.calls, summary.seconds, latency_s
    )


def eligible_features(db: Path, n: int) -> list[int]:
    with Store(db, read_only=True) as store:
        source = get_source(store.con, SOURCE)
        return select_features(store.con, source.source_id, n, 0, max(BENCH_SAMPLING.min_active_contexts, 24))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=1.0, help="seconds before each answer (default 1)")
    parser.add_argument("--levels", default="1,8,32,128", help="concurrency levels (default 1,8,32,128)")
    parser.add_argument("--seconds", type=float, default=30.0, help="ideal duration of each level (default 30)")
    parser.add_argument("--rows", type=int, default=8_000_000, help="activation rows of the synthetic store")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    requests_per_feature = 1 + -(
        -(
            BENCH_SAMPLING.n_test_positives
            + BENCH_SAMPLING.n_test_random_negatives
            + BENCH_SAMPLING.n_test_hard_negatives
        )
        // 5
    )

    with tempfile.TemporaryDirectory(prefix="pipeline-throughput-") as tmp:
        work = Path(tmp)
        base = work / "base.duckdb"
        built = build_store(base, args.rows, source=SOURCE)
        wanted = {c: max(2 * c, round(c * args.seconds / (requests_per_feature * args.latency))) for c in levels}
        pool = eligible_features(base, max(wanted.values()))
        embed_texts(["warm-up"])  # load the embedding model once, outside the timings
        print(
            f"synthetic store: {built['contexts']} contexts, {built['rows']:,} activation rows, {len(pool)} eligible features; "
            f"server latency {args.latency:g} s; scorers {','.join(BENCH_SCORERS)}"
        )
        print(
            f"{'concurrency':>11} {'features':>8} {'labeled':>7} {'req/feature':>11} {'seconds':>8} {'features/min':>12} {'ideal':>8} {'ratio':>6}"
        )
        with latency_server_process(args.latency, lifetime_s=1800.0, label_first=True) as base_url:
            for c in levels:
                features = pool[: wanted[c]]
                lv = measure(base, work, base_url, c, features, args.latency)
                print(
                    f"{lv.concurrency:>11} {lv.features:>8} {lv.labeled:>7} {lv.requests_per_feature:>11.2f} {lv.seconds:>8.1f} "
                    f"{lv.per_minute:>12.1f} {lv.ideal_per_minute:>8.1f} {lv.ratio:>6.2f}"
                )
    print("ideal = concurrency * 60 / (requests per feature * latency); the whole job is timed, setup included")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
