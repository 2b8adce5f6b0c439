"""Proofs of partition ownership asked while one is on its way go out together, in one commit.

Before each launch the worker commits the partition's offset in its current
generation (the fence: `service.delivery.launcher`). The commit is a round
trip through Faust's consumer thread to the group coordinator; when the
batches of several partitions close together (a backlog, the end of a
burst), their proofs used to queue behind each other there, one round trip
each. Here the first proof goes out at once, alone; the proofs asked while it
is on its way wait for it, then go out together as one commit of all their
partitions. A proof is never delayed beyond the round trip ahead of it.

A commit of many partitions is accepted or refused as a whole by the
coordinator when the reason is the member's generation, but a partition
revoked meanwhile, or a topic the ACLs refuse, fails the whole request: the
commit function then answers each partition alone (`ConsumerThread`), so no
partition is told it is fenced because of another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

# One commit of many partitions: each partition's verdict (owned or not), or the error raised for it.
CommitMany = Callable[[Mapping[K, int]], Awaitable[Mapping[K, bool | BaseException]]]


class OwnershipProofs(Generic[K]):
    """`prove(tp, offset)`: True when the coordinator accepted the commit; the commits of proofs asked
    together are one call of `commit_many`. Callers hold their partition's commit lock: one proof per
    partition at a time."""

    def __init__(self, commit_many: CommitMany[K]) -> None:
        self._commit_many = commit_many
        self._waiting: dict[K, tuple[int, asyncio.Future[bool]]] = {}
        self._sending: asyncio.Task[None] | None = None

    async def prove(self, tp: K, offset: int) -> bool:
        if tp in self._waiting:
            raise RuntimeError(f"a proof of {tp} is already waiting: hold the partition's commit lock")
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting[tp] = (offset, answer)
        if self._sending is None or self._sending.done():
            self._sending = asyncio.ensure_future(self._send_while_waiting())
        try:
            return await asyncio.shield(answer)
        finally:
            if not answer.done():  # the caller was cancelled: nobody waits for its verdict
                if self._waiting.get(tp, (0, None))[1] is answer:
                    del self._waiting[tp]
                answer.cancel()

    async def _send_while_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, {}
            try:
                verdicts = await self._commit_many({tp: offset for tp, (offset, _) in batch.items()})
            except BaseException as exc:  # each waiting proof gets it; a cancel ends the loop too
                for _, answer in batch.values():
                    if not answer.done():
                        answer.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for tp, (_, answer) in batch.items():
                if answer.done():
                    continue
                verdict = verdicts[tp]
                if isinstance(verdict, BaseException):
                    answer.set_exception(verdict)
                else:
                    answer.set_result(verdict)
