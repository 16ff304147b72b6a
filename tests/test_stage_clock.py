"""The per-stage CPU counter of the throughput benchmark: CPU is charged to the stage of the task that spent it."""

import asyncio

import pytest

from autointerp.stage_clock import StageClock, in_thread, stage, staged


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def test_each_task_step_is_charged_to_its_own_stage():
    async def idle() -> None:
        with stage("idle"):  # waits while the other task works: none of that work is its own
            for _ in range(20):
                await asyncio.sleep(0)

    async def busy(name: str, n: int) -> None:
        with stage(name):
            for _ in range(20):
                _spin(n)
                await asyncio.sleep(0)

    @staged("threaded")
    async def threaded() -> None:
        await asyncio.to_thread(in_thread(_spin), 400_000)

    async def main() -> StageClock:
        clock = StageClock()
        async with clock.running():
            await asyncio.gather(idle(), busy("small", 10_000), busy("large", 40_000), threaded())
        return clock

    cpu = asyncio.run(main()).cpu
    assert cpu["large"] > 2 * cpu["small"] > 0
    assert cpu["idle"] < 0.1 * cpu["small"]
    assert cpu["threaded"] > cpu["small"]  # the worker thread's CPU, charged to the caller's stage


def test_stages_nest_and_cost_nothing_without_a_clock():
    async def main() -> StageClock:
        clock = StageClock()
        async with clock.running():

            async def work() -> None:
                with stage("outer"):
                    _spin(20_000)
                    with stage("inner"):
                        _spin(80_000)
                    _spin(20_000)

            await asyncio.create_task(work())
        return clock

    cpu = asyncio.run(main()).cpu
    assert cpu["inner"] > cpu["outer"] > 0

    async def unclocked() -> str:
        with stage("x"):
            return "ran"

    assert asyncio.run(unclocked()) == "ran"


def test_one_clock_at_a_time():
    async def main() -> None:
        async with StageClock().running():
            async with StageClock().running():
                pass

    with pytest.raises(RuntimeError):
        asyncio.run(main())
