"""Labeling-job throughput: features/min of the real job (sample, explain, detection scoring, write-back,
ledger) against an OpenAI-compatible server that answers every request after a fixed latency, at several
concurrency levels, as a ratio to the ideal concurrency * 60 / (requests per feature * latency); and the
job's client CPU per feature (this process's user + sys time), broken down by stage (`autointerp.stage_clock`).

    python -m autointerp.bench.pipeline_throughput [--latency 1] [--levels 1,8,32,128] [--seconds 30]
    python -m autointerp.bench.pipeline_throughput --latency 0 --levels 128 --features 300 --sampling default

With `--latency 0` the server answers at once: features/s is then bound by the client's CPU (and by the
server's, which shares the machine), and CPU per feature is the figure that does not depend on machine load.
The timed runs are the job as users run it, with nothing measuring it from inside; the breakdown by stage
comes from a second run of each level with the stage clock on (it reads the thread's CPU clock, a system
call, around every asyncio task step), made with `--latency 0` only, where CPU is what the run measures.
Its features/s is printed beside the breakdown: on a quiet machine it stays within the runs' spread.

The server (in a child process, so its work stays out of this process's measurement) is the latency server
of `autointerp.bench.latency_server`, with chat answers that begin with a `Label:` line, so that every
explanation parses and every feature is scored: the labeling path, not the failure path, is measured.
Each level runs on a fresh copy of one synthetic store (an empty ledger: no cache hits).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from autointerp.bench.ingest import build_store
from autointerp.bench.latency_server import latency_server_process
from autointerp.config import JobConfig, SamplingConfig
from autointerp.embeddings import embed_texts
from autointerp.pipeline import label_job
from autointerp.stage_clock import StageClock
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
SAMPLINGS = {"bench": BENCH_SAMPLING, "default": SamplingConfig()}
# Stages as `autointerp.stage_clock` charges them, in the order shown; "loop and other" is the rest of the CPU.
STAGES = {
    "sample": "DuckDB reads, splits",
    "explain": "prompt, parse (LLM calls apart)",
    "score": "prompts, parsing (LLM calls apart)",
    "metrics": "metrics and bootstrap CIs",
    "baseline": "non-LLM baseline label",
    "embed": "MiniLM embeddings (labels, windows)",
    "llm": "LLM client: HTTP, JSON, ledger, journal",
    "write": "labels, scores, items, ledger flush",
    "store": "sessions: open, close, checkpoint",
}


@dataclass
class Level:
    concurrency: int
    features: int
    labeled: int
    requests: int
    seconds: float
    latency_s: float
    cpu_s: float = 0.0  # this process's user + sys time during the job
    stage_cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.features / self.seconds

    @property
    def cpu_ms_per_feature(self) -> float:
        return 1000 * self.cpu_s / max(self.features, 1)

    def stage_ms_per_feature(self) -> dict[str, float]:
        """CPU ms per feature by stage, with "loop and other" the CPU no marked stage took."""
        out = {name: 1000 * self.stage_cpu_s.get(name, 0.0) / max(self.features, 1) for name in STAGES}
        out["loop and other"] = self.cpu_ms_per_feature - sum(out.values())
        return out

    @property
    def requests_per_feature(self) -> float:
        return self.requests / max(self.features, 1)

    @property
    def per_minute(self) -> float:
        return self.features / self.seconds * 60

    @property
    def ideal_per_minute(self) -> float | None:
        if not self.latency_s:
            return None
        return self.concurrency * 60 / (self.requests_per_feature * self.latency_s)

    @property
    def ratio(self) -> float | None:
        return self.per_minute / self.ideal_per_minute if self.ideal_per_minute else None


def bench_job(base_url: str, concurrency: int, features: list[int], sampling: SamplingConfig = BENCH_SAMPLING) -> JobConfig:
    return JobConfig(
        source=SOURCE,
        features=",".join(map(str, features)),
        explainer="openai:bench",
        scorers=BENCH_SCORERS,
        sampling=sampling,
        concurrency=concurrency,
        base_url=base_url,
    )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _run_job(store: Store, job: JobConfig, clock: StageClock | None):
    if clock is None:
        return await label_job(store, job, progress=False)
    async with clock.running():
        return await label_job(store, job, progress=False)


def measure(
    base: Path,
    work: Path,
    base_url: str,
    concurrency: int,
    features: list[int],
    latency_s: float,
    sampling: SamplingConfig = BENCH_SAMPLING,
    clocked: bool = False,
) -> Level:
    """One job on a fresh copy of the store; `clocked`: with the stage clock on, for the breakdown by stage."""
    db = work / f"c{concurrency}-l{latency_s:g}{'-clocked' if clocked else ''}.duckdb"
    shutil.copy(base, db)
    clock = StageClock() if clocked else None
    cpu = _cpu_seconds()
    summary = asyncio.run(_run_job(Store(db), bench_job(base_url, concurrency, features, sampling), clock))
    cpu = _cpu_seconds() - cpu
    return Level(
        concurrency, len(features), len(summary.with_status("done")), summary.usage.calls, summary.seconds, latency_s,
        cpu, dict(clock.cpu) if clock else {},
    )


def eligible_features(db: Path, n: int, sampling: SamplingConfig = BENCH_SAMPLING) -> list[int]:
    with Store(db, read_only=True) as store:
        source = get_source(store.con, SOURCE)
        return select_features(store.con, source.source_id, n, 0, max(sampling.min_active_contexts, 24))


def _requests_per_feature(sampling: SamplingConfig, batch_size: int = 5) -> int:
    """1 explanation + the test contexts in detection prompts of `batch_size` each."""
    n_test = sampling.n_test_positives + sampling.n_test_random_negatives + sampling.n_test_hard_negatives
    return 1 + -(-n_test // batch_size)


def print_stages(levels: list[Level]) -> None:
    print("\nclient CPU per feature by stage (ms; this process, user + sys, all threads; a second run of each level,")
    print("with the stage clock on; its features/s: " + ", ".join(f"{lv.per_second:.1f}" for lv in levels) + "):")
    print(f"{'stage':<48}" + "".join(f"{f'c={lv.concurrency} l={lv.latency_s:g}':>14}" for lv in levels))
    rows = [lv.stage_ms_per_feature() for lv in levels]
    for name, text in [*STAGES.items(), ("loop and other", "event loop, transport, other threads")]:
        print(f"{name + ': ' + text:<48}" + "".join(f"{row[name]:>14.1f}" for row in rows))
    print(f"{'total':<48}" + "".join(f"{lv.cpu_ms_per_feature:>14.1f}" for lv in levels))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=1.0, help="seconds before each answer; 0: at once (default 1)")
    parser.add_argument("--levels", default="1,8,32,128", help="concurrency levels (default 1,8,32,128)")
    parser.add_argument("--seconds", type=float, default=30.0, help="ideal duration of each level (default 30)")
    parser.add_argument("--features", type=int, default=300, help="features per level when --latency is 0 (default 300)")
    parser.add_argument("--sampling", choices=sorted(SAMPLINGS), default="bench",
                        help="bench: 20 test contexts (5 requests a feature, default); default: the job's defaults")
    parser.add_argument("--rows", type=int, default=8_000_000, help="activation rows of the synthetic store")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    sampling = SAMPLINGS[args.sampling]
    requests_per_feature = _requests_per_feature(sampling)

    with tempfile.TemporaryDirectory(prefix="pipeline-throughput-") as tmp:
        work = Path(tmp)
        base = work / "base.duckdb"
        built = build_store(base, args.rows, source=SOURCE)
        if args.latency > 0:
            wanted = {c: max(2 * c, round(c * args.seconds / (requests_per_feature * args.latency))) for c in levels}
        else:
            wanted = {c: args.features for c in levels}
        pool = eligible_features(base, max(wanted.values()), sampling)
        embed_texts(["warm-up"])  # load the embedding model once, outside the timings
        load = os.getloadavg()
        print(
            f"synthetic store: {built['contexts']} contexts, {built['rows']:,} activation rows, {len(pool)} eligible features; "
            f"server latency {args.latency:g} s; scorers {','.join(BENCH_SCORERS)}; sampling {args.sampling} "
            f"({requests_per_feature} requests a feature); {os.cpu_count()} CPU cores, load average {load[0]:.1f} at start"
        )
        print(
            f"{'concurrency':>11} {'features':>8} {'labeled':>7} {'req/feature':>11} {'seconds':>8} {'features/s':>10} "
            f"{'features/min':>12} {'ideal':>8} {'ratio':>6} {'CPU ms/feature':>14}"
        )
        clocked = []
        with latency_server_process(args.latency, lifetime_s=1800.0, label_first=True) as base_url:
            for c in levels:
                features = pool[: wanted[c]]
                lv = measure(base, work, base_url, c, features, args.latency, sampling)
                if args.latency == 0:
                    clocked.append(measure(base, work, base_url, c, features, args.latency, sampling, clocked=True))
                ideal = f"{lv.ideal_per_minute:>8.1f}" if lv.ideal_per_minute else f"{'-':>8}"
                ratio = f"{lv.ratio:>6.2f}" if lv.ratio is not None else f"{'-':>6}"
                print(
                    f"{lv.concurrency:>11} {lv.features:>8} {lv.labeled:>7} {lv.requests_per_feature:>11.2f} {lv.seconds:>8.1f} "
                    f"{lv.per_second:>10.1f} {lv.per_minute:>12.1f} {ideal} {ratio} {lv.cpu_ms_per_feature:>14.1f}"
                )
        if clocked:
            print_stages(clocked)
    print(
        f"\nload average {os.getloadavg()[0]:.1f} at the end. ideal = concurrency * 60 / (requests per feature * latency); "
        "the whole job is timed, setup included; the server runs in a child process on the same cores."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
