"""Client-side limits: concurrency cap, requests/minute and tokens/minute buckets, through a real HTTP server."""

from __future__ import annotations

import asyncio
import time

import pytest

from autointerp.bench.latency_server import LatencyServer
from autointerp.errors import AutointerpError
from autointerp.llm import RateLimits, make_llm
from autointerp.llm.limits import RateLimiter


def test_concurrency_cap_through_make_llm():
    with LatencyServer(latency_s=0.3) as server:
        llm = make_llm("openai:fake", base_url=server.base_url, limits=RateLimits(max_concurrency=3))

        async def burst():
            async with llm:
                started = time.perf_counter()
                await asyncio.gather(*(llm.chat([{"role": "user", "content": str(i)}], max_tokens=2) for i in range(9)))
                return time.perf_counter() - started

        elapsed = asyncio.run(burst())
        assert server.requests_answered == 9
    assert 0.85 <= elapsed < 2.0  # 9 requests, 3 at a time, 0.3 s each: 3 waves


def test_concurrency_cap_is_never_exceeded():
    limiter = RateLimiter(RateLimits(max_concurrency=4))
    inside, peak = 0, 0

    async def one():
        nonlocal inside, peak
        async with limiter.slot(10):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    async def many():
        await asyncio.gather(*(one() for _ in range(40)))

    asyncio.run(many())
    asyncio.run(many())  # a second event loop: the limiter rebinds
    assert peak == 4


def test_requests_per_minute():
    limiter = RateLimiter(RateLimits(max_concurrency=100, rpm=60))  # a full bucket of 60, then one a second

    async def take(n):
        for _ in range(n):
            async with limiter.slot(1):
                pass

    started = time.perf_counter()
    asyncio.run(take(62))
    assert 1.8 <= time.perf_counter() - started < 3.0


def test_tokens_per_minute_and_settling_with_actual_usage():
    limiter = RateLimiter(RateLimits(tpm=60_000))  # 1000 tokens a second

    async def take(tokens):
        async with limiter.slot(tokens):
            pass

    started = time.perf_counter()
    asyncio.run(take(60_000))
    asyncio.run(take(1_000))  # must wait for ~1 s of refill
    assert 0.9 <= time.perf_counter() - started < 2.0
    limiter.settle(estimated=50_000, actual=1_000)  # the estimate was far too high: 49k given back
    started = time.perf_counter()
    asyncio.run(take(40_000))
    assert time.perf_counter() - started < 0.2


@pytest.mark.parametrize("bad", [{"max_concurrency": 0}, {"rpm": 0}, {"tpm": -5}])
def test_invalid_limits_are_user_errors(bad):
    with pytest.raises(AutointerpError):
        RateLimits(**bad)
