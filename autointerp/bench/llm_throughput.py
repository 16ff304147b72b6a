"""Requests per minute through make_llm (limits, retries, ledger included) against a server with a fixed
latency, at several concurrency levels, as a ratio to the ideal concurrency * 60 / latency.
Steady state: one warm-up request per level (client, connection pool, ledger index) is not timed.

python -m autointerp.bench.llm_throughput [--latency 1.0] [--concurrency 1,8,32,128] [--waves 3] [--no-ledger]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from dataclasses import dataclass

from autointerp.bench.latency_server import latency_server_process
from autointerp.llm import RateLimits, Retries, make_llm
from autointerp.store.db import Store
from autointerp.store.llm_calls import list_calls


@dataclass
class Throughput:
    concurrency: int
    requests: int
    seconds: float
    latency_s: float
    client_cpu_s: float  # CPU time this process spent (SDK, limits, ledger), not the server's

    @property
    def per_minute(self) -> float:
        return self.requests / self.seconds * 60

    @property
    def ideal_per_minute(self) -> float:
        return self.concurrency * 60 / self.latency_s

    @property
    def ratio(self) -> float:
        return self.per_minute / self.ideal_per_minute


async def measure(base_url: str, concurrency: int, requests: int, latency_s: float, store: Store | None) -> Throughput:
    llm = make_llm(
        "openai:bench",
        base_url=base_url,
        store=store,
        run_id=f"bench-c{concurrency}",
        limits=RateLimits(max_concurrency=concurrency),
        retries=Retries(max_attempts=1, timeout_s=latency_s * 10 + 30),
    )
    prompt = "Explain what this feature responds to, given these examples. " * 8  # ~120 tokens
    async with llm:
        await llm.chat([{"role": "user", "content": f"warm-up #{concurrency}"}], max_tokens=16)  # client, pool, ledger
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(
            *(llm.chat([{"role": "user", "content": f"{prompt} #{concurrency}-{i}"}], max_tokens=16) for i in range(requests))
        )
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return Throughput(concurrency, requests, seconds, latency_s, cpu)


def run(latency_s: float, levels: list[int], waves: int, ledger: bool) -> tuple[list[Throughput], Throughput | None]:
    """The levels, then (with the ledger) a rerun of the largest level, which the ledger must answer alone."""
    results = []
    replay = None
    with tempfile.TemporaryDirectory() as tmp, latency_server_process(latency_s) as base_url:
        store = Store(os.path.join(tmp, "bench.duckdb"), create=True) if ledger else None
        for concurrency in levels:
            results.append(asyncio.run(measure(base_url, concurrency, concurrency * waves, latency_s, store)))
        if store is not None:
            replay = asyncio.run(measure(base_url, levels[-1], levels[-1] * waves, latency_s, store))
            with store.reading() as con:
                calls = list_calls(con)
            assert len(calls) == sum(r.requests + 1 for r in [*results, replay]), "every request must be in the ledger"
            assert sum(c["cached"] for c in calls) == replay.requests + 1, "a rerun must make no HTTP call"
    return results, replay


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=1.0, help="server latency in seconds (default 1)")
    parser.add_argument("--concurrency", default="1,8,32,128", help="comma-separated levels (default 1,8,32,128)")
    parser.add_argument("--waves", type=int, default=3, help="requests per level = concurrency * waves (default 3)")
    parser.add_argument("--no-ledger", action="store_true", help="measure without a store (no ledger writes)")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",")]
    results, replay = run(args.latency, levels, args.waves, not args.no_ledger)
    print(f"LLM client throughput, server latency {args.latency:g} s, ledger {'off' if args.no_ledger else 'on'}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'concurrency':>11}  {'requests':>8}  {'seconds':>7}  {'req/min':>8}  {'ideal':>8}  {'ratio':>5}  {'client CPU ms/req':>17}")
    for r in results:
        print(
            f"{r.concurrency:>11}  {r.requests:>8}  {r.seconds:>7.2f}  {r.per_minute:>8.0f}  {r.ideal_per_minute:>8.0f}  "
            f"{r.ratio:>5.2f}  {r.client_cpu_s / r.requests * 1000:>17.1f}"
        )
    if replay is not None:
        print(
            f"rerun of the {replay.requests} requests at concurrency {replay.concurrency}: all answered by the ledger, "
            f"{replay.seconds:.2f} s ({replay.requests / replay.seconds:.0f} requests/s, no HTTP call)"
        )


if __name__ == "__main__":
    main()
