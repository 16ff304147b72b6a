"""Client-side limits: at most N requests in flight, and requests/tokens per minute as token buckets."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from autointerp.errors import AutointerpError


@dataclass(frozen=True)
class RateLimits:
    """max_concurrency: requests in flight at once. rpm / tpm: requests and tokens per minute (None: unlimited)."""

    max_concurrency: int = 8
    rpm: float | None = None
    tpm: float | None = None

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise AutointerpError(f"max_concurrency must be at least 1, got {self.max_concurrency}")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise AutointerpError(f"{name} must be positive or unset, got {value}")


def estimate_tokens(prompt_chars: int, max_tokens: int) -> int:
    """A request's token cost before we know it: ~4 characters a token, plus everything it may generate."""
    return prompt_chars // 4 + max_tokens


class TokenBucket:
    """Holds up to `per_minute` units and refills at per_minute/60 a second; starts full."""

    def __init__(self, per_minute: float):
        self.capacity = float(per_minute)
        self.level = float(per_minute)
        self._stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self._stamp) * self.capacity / 60.0)
        self._stamp = now

    def seconds_until(self, amount: float) -> float:
        self._refill()
        amount = min(amount, self.capacity)
        return max(0.0, (amount - self.level) * 60.0 / self.capacity)

    def take(self, amount: float) -> None:
        """Negative amounts give units back (a request used fewer tokens than estimated)."""
        self._refill()
        self.level = min(self.capacity, self.level - amount)


class RateLimiter:
    """Admits requests under RateLimits. Its asyncio primitives are remade when used from a new event loop."""

    def __init__(self, limits: RateLimits):
        self.limits = limits
        self.requests = TokenBucket(limits.rpm) if limits.rpm else None
        self.tokens = TokenBucket(limits.tpm) if limits.tpm else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._lock: asyncio.Lock | None = None

    def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._semaphore = asyncio.Semaphore(self.limits.max_concurrency)
            self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def slot(self, tokens: int) -> AsyncIterator[None]:
        """Wait for a concurrency slot and for rpm/tpm room for one request of `tokens` (estimated)."""
        self._bind()
        async with self._semaphore:
            if self.requests or self.tokens:
                async with self._lock:  # first come, first served while we wait for the buckets
                    while True:
                        wait = max(
                            self.requests.seconds_until(1) if self.requests else 0.0,
                            self.tokens.seconds_until(tokens) if self.tokens else 0.0,
                        )
                        if wait <= 0:
                            break
                        await asyncio.sleep(wait)
                    if self.requests:
                        self.requests.take(1)
                    if self.tokens:
                        self.tokens.take(tokens)
            yield

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token bucket once the response says how many tokens the request really used."""
        if self.tokens:
            self.tokens.take(actual - estimated)
