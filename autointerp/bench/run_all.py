"""`make bench`: every benchmark at a small default size, then one Markdown summary for the README.

Performance benchmarks run as child processes (`python -m autointerp.bench.<name> ARGS`), each with a time
limit, their output kept verbatim; a failing one is reported and the rest still run. Then the planted-feature
suite, and the label-quality benchmark with data/bench.toml on the demo store (`make demo`), or, when there
is no demo store, on the planted suite's store (its rule-based features stand in for a model's).

    python -m autointerp.bench.run_all [--out bench-out] [--only NAME,...] [--skip NAME,...] [--db demo/demo.duckdb]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from autointerp.errors import AutointerpError

# name -> arguments at the small size `make bench` uses (each module's own defaults are larger)
PERFORMANCE: dict[str, list[str]] = {
    "ingest": ["--rows", "2_000_000"],
    "sampling": ["--rows", "10_000_000", "--features", "200"],
    "collection": ["--tokens", "16384"],
    "output_evidence": ["--features", "8"],
    "cli_startup": ["--repeats", "3"],
    "llm_throughput": ["--latency", "0.5", "--concurrency", "1,8,32", "--waves", "2"],
    "pipeline_throughput": ["--latency", "0.5", "--levels", "1,8,32", "--seconds", "10", "--rows", "1000000"],
    # the same module at zero latency: features/s bound by client CPU, and CPU per feature by stage
    "pipeline_throughput:zero_latency": [
        "--latency", "0", "--levels", "128", "--features", "200", "--sampling", "default", "--rows", "1000000",
    ],
    "tokens": ["--features", "4"],
    "prompt_tokens": ["--rules", "file_words,digits,negation,inside_parentheses"],
    "search": ["--sizes", "10000,100000", "--queries", "30"],
    "busy_store": ["--sessions", "20"],
    "chaos": ["--features", "1000", "--kills", "20", "--fault-rate", "0.3"],
    "ray_collection": ["--tokens", "8192", "--chunk-tokens", "2048"],
    "ray_label": ["--latency", "0.5", "--features", "48", "--concurrency", "8"],
}
QUALITY = ("planted", "quality")
TIME_LIMIT_S = 1200


@dataclass
class Outcome:
    name: str
    command: str
    seconds: float
    ok: bool
    output: str  # the Markdown section for the summary


def run_module(name: str, args: list[str], time_limit_s: float = TIME_LIMIT_S) -> Outcome:
    """One performance benchmark in a child process; its stdout becomes the section body. `name` is the
    module, or module:case for a second configuration of the same module."""
    module = name.split(":")[0]
    command = [sys.executable, "-m", f"autointerp.bench.{module}", *args]
    shown = f"python -m autointerp.bench.{module} {' '.join(args)}".strip()
    started = time.monotonic()
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=time_limit_s, stdin=subprocess.DEVNULL,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        ok, out = proc.returncode == 0, proc.stdout.strip()
        if not ok:
            out += f"\n\nexit status {proc.returncode}; last error lines:\n" + "\n".join(proc.stderr.strip().splitlines()[-8:])
    except subprocess.TimeoutExpired as exc:
        ok, out = False, f"{exc.stdout or ''}\n\nstopped after {time_limit_s:.0f} s"
    return Outcome(name, shown, round(time.monotonic() - started, 1), ok, "```\n" + out.strip() + "\n```")


def run_planted_suite(out: Path) -> tuple[Outcome, Path]:
    """The planted suite with its defaults (embedding on every rule, the bundled model's scorers on a subset)."""
    from autointerp.bench import planted

    started = time.monotonic()
    result = planted.run_planted(out / "planted" / "planted.duckdb", planted.PlantedConfig(), out / "planted")
    section = planted.markdown(result).split("\n", 1)[1].strip()  # the summary adds its own heading
    return (
        Outcome("planted", "python -m autointerp.bench.planted", round(time.monotonic() - started, 1), True, section),
        out / "planted" / "planted.duckdb",
    )


def run_quality_bench(db: Path, fallback_db: Path | None, out: Path) -> Outcome:
    from autointerp.bench import quality

    cfg = quality.load_config()
    note = ""
    if not db.exists():
        if fallback_db is None or not fallback_db.exists():
            raise AutointerpError(f"no store at {db} for the quality benchmark: run `make demo` first")
        note = (
            f"_No demo store at `{db}` (`make demo` builds one), so this ran on the planted suite's store: "
            "rule-based features over real text instead of the bundled model's neurons._\n\n"
        )
        cfg = dataclasses.replace(cfg, source="")
        db = fallback_db
    started = time.monotonic()
    result = quality.run_quality(db, cfg, out / "quality")
    section = note + quality.markdown(result).split("\n", 1)[1].strip()
    return Outcome("quality", f"autointerp bench quality --db {db}", round(time.monotonic() - started, 1), True, section)


def summary_markdown(outcomes: list[Outcome], seconds: float) -> str:
    cpus = os.cpu_count()
    lines = [
        "# Benchmarks",
        "",
        f"`make bench` on {platform.machine()} with {cpus} CPU cores, Python {platform.python_version()}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d}; {seconds / 60:.1f} min in all. Sizes are the small defaults of "
        "`autointerp.bench.run_all`; each module takes larger ones (see its --help).",
        "",
        "| benchmark | command | seconds | status |",
        "|---|---|---|---|",
        *(f"| {o.name} | `{o.command}` | {o.seconds} | {'ok' if o.ok else 'FAILED'} |" for o in outcomes),
        "",
    ]
    for o in outcomes:
        lines += [f"## {o.name}", "", o.output, ""]
    return "\n".join(lines)


def run_all(out: Path, names: list[str], db: Path) -> tuple[list[Outcome], Path]:
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    outcomes: list[Outcome] = []
    planted_db: Path | None = None
    for name in names:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            if name == "planted":
                outcome, planted_db = run_planted_suite(out)
            elif name == "quality":
                outcome = run_quality_bench(db, planted_db or out / "planted" / "planted.duckdb", out)
            else:
                outcome = run_module(name, PERFORMANCE[name])
        except AutointerpError as exc:
            outcome = Outcome(name, name, 0.0, False, f"error: {exc}")
        outcomes.append(outcome)
        print(f"[bench] {name}: {'ok' if outcome.ok else 'FAILED'} in {outcome.seconds} s", file=sys.stderr, flush=True)
    summary = out / "summary.md"
    summary.write_text(summary_markdown(outcomes, time.monotonic() - started))
    return outcomes, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autointerp.bench.run_all", description=__doc__.splitlines()[0])
    known = [*PERFORMANCE, *QUALITY]
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="folder for summary.md, tables and figures")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(known)}")
    parser.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    parser.add_argument("--db", type=Path, default=Path("demo/demo.duckdb"), help="store for the quality benchmark")
    args = parser.parse_args(argv)
    only = [n for n in args.only.split(",") if n] or known
    skip = {n for n in args.skip.split(",") if n}
    unknown = sorted((set(only) | skip) - set(known))
    if unknown:
        print(f"error: unknown benchmark(s) {unknown}; choose from {', '.join(known)}", file=sys.stderr)
        return 2
    outcomes, summary = run_all(args.out, [n for n in known if n in only and n not in skip], args.db)
    print(summary.read_text())
    print(f"wrote {summary}", file=sys.stderr)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
