"""Retries with tenacity: exponential backoff with jitter on 429, 5xx, timeouts and dropped connections,
honouring Retry-After; never on auth or other client errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from autointerp.errors import AutointerpError
from autointerp.llm.errors import SendError

T = TypeVar("T")


@dataclass(frozen=True)
class Retries:
    """max_attempts counts the first try. A server's Retry-After is honoured up to max_wait_s."""

    max_attempts: int = 6
    min_wait_s: float = 1.0
    max_wait_s: float = 60.0
    timeout_s: float = 120.0  # per attempt

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.timeout_s <= 0 or self.min_wait_s < 0 or self.max_wait_s < self.min_wait_s:
            raise AutointerpError(f"invalid retry settings {self}: need max_attempts >= 1, timeout_s > 0, 0 <= min <= max wait")


def _wait(retries: Retries):
    backoff = wait_exponential_jitter(multiplier=retries.min_wait_s, max=retries.max_wait_s, jitter=retries.min_wait_s)

    def wait(state) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, SendError) and exc.retry_after is not None:
            return min(exc.retry_after, retries.max_wait_s)
        return backoff(state)

    return wait


async def with_retries(attempt: Callable[[], Awaitable[T]], retries: Retries) -> T:
    """Run `attempt` until it succeeds, raises a non-retryable error, or max_attempts is used up (then re-raise)."""
    async for state in AsyncRetrying(
        stop=stop_after_attempt(retries.max_attempts),
        wait=_wait(retries),
        retry=retry_if_exception(lambda exc: isinstance(exc, SendError) and exc.retryable),
        reraise=True,
    ):
        with state:
            result = await attempt()
    return result
