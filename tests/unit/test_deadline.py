"""Steps before the wait: answered by their deadline, never cut short."""

from __future__ import annotations

import asyncio
import time

import pytest

from webhooks.deadline import Late, Outliving


async def step(seconds: float, result: str, made: list[str]) -> str:
    await asyncio.sleep(seconds)
    made.append(result)
    return result


def test_a_step_in_time_gives_its_result_and_nothing_is_left() -> None:
    async def main() -> None:
        steps, made, left = Outliving(), list[str](), list[str]()
        assert await steps.within(step(0.01, "claim", made), 1.0, left.append) == "claim"
        assert made == ["claim"] and left == [] and len(steps) == 0

    asyncio.run(main())


def test_a_step_past_its_deadline_is_late_and_still_runs_to_its_end() -> None:
    async def main() -> None:
        steps, made, left = Outliving(), list[str](), list[str]()
        began = time.monotonic()
        with pytest.raises(Late):
            await steps.within(step(0.3, "claim", made), 0.05, left.append)
        assert time.monotonic() - began < 0.25  # answered at the deadline
        assert made == [] and len(steps) == 1
        await asyncio.sleep(0.4)
        assert made == ["claim"] and left == ["claim"] and len(steps) == 0

    asyncio.run(main())


def test_a_step_whose_request_is_cancelled_still_runs_to_its_end() -> None:
    async def main() -> None:
        steps, made, left = Outliving(), list[str](), list[str]()
        request = asyncio.ensure_future(steps.within(step(0.2, "claim", made), 5.0, left.append))
        await asyncio.sleep(0.05)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        await steps.drain(1.0)
        assert made == ["claim"] and left == ["claim"]

    asyncio.run(main())


def test_a_step_failing_in_time_raises_its_own_error() -> None:
    async def fails() -> str:
        raise ConnectionError("refused")

    async def main() -> None:
        with pytest.raises(ConnectionError):
            await Outliving().within(fails(), 1.0, lambda _: None)

    asyncio.run(main())


def test_shutdown_waits_for_a_late_step() -> None:
    async def main() -> None:
        steps, made = Outliving(), list[str]()
        with pytest.raises(Late):
            await steps.within(step(0.2, "undo", made), 0.01, lambda _: None)
        await steps.drain(2.0)
        assert made == ["undo"]

    asyncio.run(main())
