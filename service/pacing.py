"""Items sent at a rate: in groups of those due, so per-item waits do not add up (produce, dlq replay)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

T = TypeVar("T")

PACE_TICK_S = 0.05  # paced sends go out in the records due every tick
_END = object()


async def paced(items: Iterable[T], rate: float, tick_s: float = PACE_TICK_S) -> AsyncIterator[list[T]]:
    """`items` in order, in groups of those due: the n-th is due n / rate seconds after the first.

    A group goes out at most every `tick_s` (every 1 / rate at low rates); a
    caller slower than the pace gets larger groups and catches up, so the rate
    holds on average and per-item waits (an acknowledgement each) do not add up.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    iterator = iter(items)
    head = next(iterator, _END)
    taken = 0
    while head is not _END:
        due = math.floor((loop.time() - started) * rate) + 1
        group: list[T] = []
        while head is not _END and taken < due:
            group.append(head)  # type: ignore[arg-type]
            taken += 1
            head = next(iterator, _END)
        if group:
            yield group
        if head is not _END:
            await asyncio.sleep(max(tick_s, started + taken / rate - loop.time()))
