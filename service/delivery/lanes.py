"""A lane: one route's queue of closed batches and dead letters for one partition, worked in offset order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from service.batching import Batch
from service.dlq import Failure
from service.records import Record

logger = logging.getLogger(__name__)


@dataclass
class DeadLetters:
    """Records a pre-launch stage rejected, handled in order with the partition's batches."""

    records: list[Record]
    failure: Failure


class Lane:
    """One route's queue of closed batches and dead letters for one partition, worked in order.

    `first_pending` is the lowest offset handed to the lane and not yet
    launched or dead-lettered: what the partition's commit may not pass.
    """

    def __init__(self, name: str, maxsize: int, handle: Callable[[Batch | DeadLetters], Awaitable[None]],
                 on_done: Callable[[], None], on_fatal: Callable[[BaseException], Awaitable[None]]) -> None:
        self.name = name
        self.queue: asyncio.Queue[Batch | DeadLetters] = asyncio.Queue(maxsize)
        self.pending: deque[int] = deque()
        self._handle = handle
        self._on_done = on_done
        self._on_fatal = on_fatal
        self._task = asyncio.create_task(self._run(), name=f"lane-{name}")

    @property
    def first_pending(self) -> int | None:
        return self.pending[0] if self.pending else None

    async def put(self, item: Batch | DeadLetters) -> None:
        self.pending.append(_first_offset(item))  # pending while it waits for room, too
        await self.queue.put(item)

    def put_nowait(self, item: Batch | DeadLetters) -> None:
        self.pending.append(_first_offset(item))
        self.queue.put_nowait(item)

    def drain(self) -> list[Batch | DeadLetters]:
        """Take every queued item out, unhandled (the partition moved to another worker)."""
        items = []
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
            self.queue.task_done()
        self.pending.clear()
        return items

    async def _run(self) -> None:
        while True:
            item = await self.queue.get()
            try:
                await self._handle(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A bug, not a classified failure: the item is neither launched nor dead-lettered,
                # so the worker must stop and let a restart reconcile rather than skip it.
                logger.exception("lane %s failed; stopping the worker", self.name)
                await self._on_fatal(exc)
                raise
            finally:
                self.queue.task_done()
            if self.pending:
                self.pending.popleft()
            self._on_done()

    async def join(self, timeout_s: float) -> bool:
        """Wait until the lane is idle; False if `timeout_s` passed first."""
        try:
            await asyncio.wait_for(self.queue.join(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.drain()  # frees a producer blocked on a full queue


def _first_offset(item: Batch | DeadLetters) -> int:
    return item.offset_start if isinstance(item, Batch) else item.records[0].offset
