"""The consumer's cheaper hand-off: a coroutine stepped by hand finishes, fails and cancels as if awaited."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.consumer import _Resumed


async def _stepped(coro: Any) -> asyncio.Future[Any]:
    """Step `coro` once by hand, as the hand-off does, and await the rest in a task."""
    pending = coro.send(None)
    return asyncio.ensure_future(_Resumed(coro, pending))


async def test_a_coroutine_stepped_by_hand_finishes_with_its_value() -> None:
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def work() -> int:
        first = await future
        await asyncio.sleep(0)
        return first + 1

    task = await _stepped(work())
    future.set_result(41)
    assert await task == 42


async def test_its_error_reaches_the_awaiter() -> None:
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def work() -> None:
        await future
        raise ValueError("boom")

    task = await _stepped(work())
    future.set_result(1)
    with pytest.raises(ValueError, match="boom"):
        await task


async def test_cancelling_the_awaiter_cancels_the_coroutine() -> None:
    gate = asyncio.Event()
    seen: list[str] = []

    async def work() -> None:
        try:
            await gate.wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    task = await _stepped(work())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled"]
