"""Client CPU per stage of a labeling job, for the throughput benchmark: which stage (sampling, explaining,
scoring, metrics, the LLM client, embeddings, store writes) the job's CPU time goes to.

Code marks its stage with `with stage("name"):` (a context variable: free when no clock runs, and each
asyncio task keeps its own). While `StageClock.running()` is active, every task created on the event loop is
wrapped so that each of its steps (the CPU work between two awaits) is timed with the thread's CPU clock and
charged to the stage marked in that task at that moment; work in worker threads started through
`in_thread` is charged to the stage of the caller. What no marked stage covers (the event loop itself,
transport callbacks, library threads) is left for the caller to show as total minus charged.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")

_stage: ContextVar[str] = ContextVar("autointerp_stage", default="unmarked")
_clock: StageClock | None = None


class StageClock:
    """Seconds of CPU per stage while `running()`; one clock runs at a time."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self._lock = threading.Lock()
        self._mark = 0.0  # thread CPU time when the current task step (or stage) began
        self._thread = 0  # the event loop's thread, the only one whose steps are charged by mark

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.cpu[name] = self.cpu.get(name, 0.0) + seconds

    def _charge(self) -> None:
        """Charge the main thread's CPU since the last mark to the running task's stage."""
        now = time.thread_time()
        self.add(_stage.get(), now - self._mark)
        self._mark = now

    @contextlib.asynccontextmanager
    async def running(self):
        """Time the tasks created on this event loop until the block ends."""
        global _clock
        if _clock is not None:
            raise RuntimeError("a StageClock is already running")
        loop = asyncio.get_running_loop()
        previous = loop.get_task_factory()

        def factory(loop, coro, **kwargs):
            return asyncio.Task(_TimedCoroutine(coro, self), loop=loop, **kwargs)

        loop.set_task_factory(factory)
        self._thread = threading.get_ident()
        self._mark = time.thread_time()
        _clock = self
        try:
            yield self
        finally:
            _clock = None
            loop.set_task_factory(previous)


class _TimedCoroutine(collections.abc.Coroutine):
    """A coroutine whose every step (send / throw) is charged to its task's stage."""

    __slots__ = ("_coro", "_clock")

    def __init__(self, coro, clock: StageClock):
        self._coro = coro
        self._clock = clock

    def send(self, value):
        self._clock._mark = time.thread_time()
        try:
            return self._coro.send(value)
        finally:
            self._clock._charge()

    def throw(self, typ, val=None, tb=None):
        self._clock._mark = time.thread_time()
        try:
            return self._coro.throw(typ, val, tb) if val is not None or tb is not None else self._coro.throw(typ)
        finally:
            self._clock._charge()

    def close(self):
        return self._coro.close()

    def __await__(self):
        return self._coro.__await__()

    def __getattr__(self, name: str) -> Any:  # __name__, __qualname__, cr_frame... for asyncio's reprs
        return getattr(self._coro, name)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Mark the code in the block as stage `name` (nested blocks: the innermost wins, then the outer resumes)."""
    clock = _clock
    if clock is not None and clock._thread != threading.get_ident():
        clock = None  # a worker thread: `in_thread` charges its time
    if clock is not None:
        clock._charge()
    token = _stage.set(name)
    try:
        yield
    finally:
        if clock is not None and clock is _clock:
            clock._charge()
        _stage.reset(token)


def staged(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a coroutine function (or a plain one) so that its whole run is stage `name`."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if asyncio.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with stage(name):
                    return await fn(*args, **kwargs)

            return run_async

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with stage(name):
                return fn(*args, **kwargs)

        return run

    return decorate


def in_thread(fn: Callable[..., T]) -> Callable[..., T]:
    """`fn` for asyncio.to_thread: its CPU in the worker thread is charged to the caller's stage (the worker
    runs in a copy of the caller's context)."""

    def timed(*args: Any, **kwargs: Any) -> T:
        clock = _clock
        if clock is None:
            return fn(*args, **kwargs)
        started = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            clock.add(_stage.get(), time.thread_time() - started)

    return timed
