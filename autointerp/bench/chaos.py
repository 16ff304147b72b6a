"""Chaos benchmark: a labeling job against a provider that faults, killed with SIGKILL at random moments and
run again until it finishes. Does it lose a feature, store one twice, or pay for an answer twice?

    python -m autointerp.bench.chaos [--features 1000] [--kills 20] [--fault-rate 0.3] [--provider openai]

The provider is the latency server (`autointerp.bench.latency_server`, a child process) with `Faults`: 429
with Retry-After, HTTP 500 and 200 answers whose body is not JSON (together `--fault-rate` of requests), and
slow answers; OpenAI-compatible, or Anthropic-shaped with `--provider anthropic`. The job is the real
`autointerp label` command in a child process, on a synthetic store (`autointerp.bench.ingest`). Each
kill waits until the job has made its first LLM call, then a random time, then sends SIGKILL; after the last
kill the command runs to its end (and again while it exits 1 with failed features, at most 3 times).

Reported: features labeled, stored twice (duplicates) and lost (neither labeled nor reported too sparse);
calls paid twice = well-formed answers the server sent minus answers kept in llm_calls, against the bound
kills x concurrency (only calls in flight at a kill may be paid again); the API key's presence in the store
or the job's output; wall time against the same job on a fault-free server with no kills.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from autointerp.bench.ingest import build_store
from autointerp.bench.latency_server import Faults, latency_server_process
from autointerp.bench.pipeline_throughput import BENCH_SAMPLING, BENCH_SCORERS, SOURCE, eligible_features
from autointerp.errors import AutointerpError
from autointerp.store import Store
from autointerp.store.bench_queries import label_counts
from autointerp.store.journal import jobs_dir

FAKE_KEY = "sk-chaos-NOT-A-REAL-KEY-0123456789"
FINAL_RUNS = 3


@dataclass
class ChaosResult:
    features: int
    kills: int
    concurrency: int
    labeled: int
    sparse: int
    duplicates: int
    lost: int
    paid: int
    kept: int
    key_leaked: bool
    runs: int
    seconds: float
    baseline_seconds: float | None

    @property
    def paid_twice(self) -> int:
        return self.paid - self.kept

    @property
    def bound(self) -> int:
        return self.kills * self.concurrency

    @property
    def ok(self) -> bool:
        return (
            self.labeled + self.sparse == self.features
            and self.duplicates == 0
            and self.lost == 0
            and self.paid_twice <= self.bound
            and not self.key_leaked
        )


def job_toml(features: list[int], provider: str, base_url: str, concurrency: int) -> str:
    explainer = f"{provider}:chaos"
    if provider == "anthropic":
        base_url = base_url.removesuffix("/v1")
    sampling = "\n".join(f"{k} = {v}" for k, v in vars(BENCH_SAMPLING).items())
    return (
        f'source = "{SOURCE}"\nfeatures = "{",".join(map(str, features))}"\nexplainer = "{explainer}"\n'
        f"scorers = {list(BENCH_SCORERS)!r}\nconcurrency = {concurrency}\nbase_url = \"{base_url}\"\n"
        f"\n[sampling]\n{sampling}\n"
    ).replace("'", '"')


def label_command(db: Path, config: Path) -> list[str]:
    return [sys.executable, "-m", "autointerp.cli", "label", "--db", str(db), "--config", str(config), "--quiet"]


def _env() -> dict[str, str]:
    return {**os.environ, "OPENAI_API_KEY": FAKE_KEY, "ANTHROPIC_API_KEY": FAKE_KEY, "HF_HUB_OFFLINE": "1"}


def _journals(db: Path) -> set[Path]:
    return set(jobs_dir(db).glob("*.jsonl"))


def _calls_started(db: Path, before: set[Path]) -> bool:
    """The job has made an LLM call: a journal that was not there before it started holds a row."""
    for path in _journals(db) - before:
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size > 0:
                return True
    return False


def _checked(code: int, log_path: Path) -> int:
    """The job's exit status; a user error (2) or a crash stops the benchmark with the job's last lines."""
    if code not in (0, 1):
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-10:])
        raise AutointerpError(f"the label command exited {code} (see {log_path}):\n{tail}")
    return code


def run_killed(command: list[str], db: Path, delay_s: float, log_path: Path) -> int | None:
    """Start the job, wait for its first call and `delay_s` more, SIGKILL it: None, or its exit status when it
    ended first."""
    before = _journals(db)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env())
    while not _calls_started(db, before) and proc.poll() is None:
        time.sleep(0.05)
    deadline = time.monotonic() + delay_s
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if proc.poll() is not None:
        return _checked(proc.returncode, log_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return None


def run_to_end(command: list[str], log_path: Path) -> int:
    with open(log_path, "ab") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env()).returncode
    return _checked(code, log_path)


def paid_answers(base_url: str) -> int:
    return httpx.get(base_url.removesuffix("/v1") + "/stats", timeout=10).json()["paid"]


def chaos_run(
    work: Path,
    base: Path,
    features: list[int],
    *,
    provider: str,
    kills: int,
    concurrency: int,
    faults: Faults,
    latency_s: float,
    kill_spread_s: float,
    seed: int,
) -> tuple[Path, int, int, int, float]:
    """The killed job on a fresh copy of `base`: (its store, kills done, runs, paid answers, seconds)."""
    db = work / f"chaos-{faults.seed}-{kills}.duckdb"
    shutil.copy(base, db)
    rng = random.Random(seed)
    with latency_server_process(latency_s, lifetime_s=7200, label_first=True, faults=faults) as base_url:
        config = db.with_suffix(".toml")
        config.write_text(job_toml(features, provider, base_url, concurrency))
        command = label_command(db, config)
        log = db.with_suffix(".log")
        started = time.monotonic()
        done = runs = 0
        while done < kills:
            runs += 1
            if runs > 2 * kills + FINAL_RUNS:  # the job keeps ending before a kill: something fails every time
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
                raise AutointerpError(f"the label command ended {runs - 1 - done} times before a kill (see {log}):\n{tail}")
            code = run_killed(command, db, rng.uniform(0, kill_spread_s), log)
            if code is None:
                done += 1
            elif code == 0:  # it finished before this kill: the remaining kills have nothing to hit
                break
        for _ in range(FINAL_RUNS):
            runs += 1
            if run_to_end(command, log) == 0:
                break
        seconds = time.monotonic() - started
        paid = paid_answers(base_url)
    return db, done, runs, paid, seconds


def tally(db: Path, features: list[int], log: Path) -> tuple[int, int, int, int, int, bool]:
    """(labeled, too sparse, duplicates, lost, answers kept, key leaked) as the store and the job's output say."""
    with Store(db) as store, store.reading() as con:
        counts = label_counts(con, SOURCE, features)
    labeled = sum(1 for n in counts.labels.values() if n > 0)
    duplicates = sum(n - 1 for n in counts.labels.values() if n > 1)
    lost = len(set(features) - set(counts.labels) - counts.sparse)
    leaked = any(FAKE_KEY.encode() in p.read_bytes() for p in [db, log] if p.exists())
    return labeled, len(counts.sparse), duplicates, lost, counts.answers_kept, leaked


def run_chaos(
    work: Path,
    n_features: int = 1000,
    kills: int = 20,
    fault_rate: float = 0.3,
    slow: float = 0.05,
    concurrency: int = 16,
    latency_s: float = 0.2,
    kill_spread_s: float = 5.0,
    provider: str = "openai",
    rows: int = 1_000_000,
    baseline: bool = True,
    seed: int = 0,
) -> ChaosResult:
    base = work / "base.duckdb"
    build_store(base, rows, source=SOURCE)
    features = eligible_features(base, n_features)
    baseline_seconds = None
    if baseline:
        calm = Faults(seed=seed)
        _, _, _, _, baseline_seconds = chaos_run(
            work, base, features, provider=provider, kills=0, concurrency=concurrency, faults=calm,
            latency_s=latency_s, kill_spread_s=kill_spread_s, seed=seed,
        )
    faults = Faults.total(fault_rate, slow=slow, seed=seed + 1)
    db, done, runs, paid, seconds = chaos_run(
        work, base, features, provider=provider, kills=kills, concurrency=concurrency, faults=faults,
        latency_s=latency_s, kill_spread_s=kill_spread_s, seed=seed,
    )
    labeled, sparse, duplicates, lost, kept, leaked = tally(db, features, db.with_suffix(".log"))
    return ChaosResult(
        len(features), done, concurrency, labeled, sparse, duplicates, lost, paid, kept, leaked, runs, seconds,
        baseline_seconds,
    )


def report(r: ChaosResult) -> str:
    lines = [
        f"features labeled   {r.labeled} of {r.features} ({r.sparse} too sparse to label)",
        f"stored twice       {r.duplicates}",
        f"lost               {r.lost}",
        f"calls paid twice   {r.paid_twice} (bound: {r.kills} kills x concurrency {r.concurrency} = {r.bound}); "
        f"{r.paid} answers paid, {r.kept} kept in llm_calls",
        f"API key in store or output: {'YES' if r.key_leaked else 'no'}",
        f"wall time          {r.seconds:.0f} s in {r.runs} runs of the command"
        + ("" if r.baseline_seconds is None else f"; fault-free, never killed: {r.baseline_seconds:.0f} s "
           f"(x{r.seconds / r.baseline_seconds:.1f})"),
        f"verdict            {'PASS' if r.ok else 'FAIL'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--fault-rate", type=float, default=0.3, help="share of requests answered 429, 500 or non-JSON")
    parser.add_argument("--slow", type=float, default=0.05, help="share of answers 2 s slower")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds before each answer")
    parser.add_argument("--kill-spread", type=float, default=5.0, help="kill within this many seconds of the first call")
    parser.add_argument("--provider", choices=("openai", "anthropic"), default="openai")
    parser.add_argument("--rows", type=lambda s: int(s.replace("_", "")), default=1_000_000)
    parser.add_argument("--no-baseline", action="store_true", help="skip the fault-free run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one, removed after)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="chaos-") as tmp:
        result = run_chaos(
            Path(tmp), args.features, args.kills, args.fault_rate, args.slow, args.concurrency, args.latency,
            args.kill_spread, args.provider, args.rows, not args.no_baseline, args.seed,
        )
    print(
        f"{args.provider}-shaped server: {args.fault_rate:.0%} of requests fault (429 with Retry-After, 500, non-JSON "
        f"200), {args.slow:.0%} slow; latency {args.latency:g} s; concurrency {args.concurrency}; {args.kills} SIGKILLs"
    )
    print(report(result))
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
