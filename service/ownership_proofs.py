"""Proofs of partition ownership asked together go out together, in one commit; none waits for another.

Before each launch the worker commits the partition's offset in its current
generation (the fence: `service.delivery.launcher`). When the batches of
several partitions close together (a backlog, the end of a burst), their
proofs are asked in the same turn of the event loop: they go out as one
commit of all their partitions. A proof asked while another is on its way
goes out at once in a commit of its own: commits go from the app's loop
(`service.kafka.group_commits`), so a proof never waits for another's round
trip. (When commits went through Faust's consumer thread only, proofs asked
meanwhile waited for the one ahead, then went out together: measured on
Apache Kafka, that wait was most of a proof's cost once the hop was gone.)

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
    """`prove(tp, offset)`: True when the coordinator accepted the commit; the proofs asked in one turn of
    the event loop are one call of `commit_many`. Callers hold their partition's commit lock: one proof per
    partition at a time."""

    def __init__(self, commit_many: CommitMany[K]) -> None:
        self._commit_many = commit_many
        self._waiting: dict[K, tuple[int, asyncio.Future[bool]]] = {}  # asked this turn, not sent yet
        self._unanswered: set[K] = set()
        self._sending: set[asyncio.Task[None]] = set()

    async def prove(self, tp: K, offset: int) -> bool:
        if tp in self._unanswered:
            raise RuntimeError(f"a proof of {tp} is already under way: hold the partition's commit lock")
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bool] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._send_waiting)
        self._waiting[tp] = (offset, answer)
        self._unanswered.add(tp)
        try:
            return await asyncio.shield(answer)
        finally:
            self._unanswered.discard(tp)
            if not answer.done():  # the caller was cancelled: nobody waits for its verdict
                if self._waiting.get(tp, (0, None))[1] is answer:
                    del self._waiting[tp]
                answer.cancel()

    def _send_waiting(self) -> None:
        batch, self._waiting = self._waiting, {}
        if batch:
            sending = asyncio.ensure_future(self._send(batch))
            self._sending.add(sending)
            sending.add_done_callback(self._sending.discard)

    async def _send(self, batch: dict[K, tuple[int, asyncio.Future[bool]]]) -> None:
        try:
            verdicts = await self._commit_many({tp: offset for tp, (offset, _) in batch.items()})
        except BaseException as exc:  # each proof it carried gets it
            for _, answer in batch.values():
                if not answer.done():
                    answer.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for tp, (_, answer) in batch.items():
            if answer.done():
                continue
            verdict = verdicts[tp]
            if isinstance(verdict, BaseException):
                answer.set_exception(verdict)
            else:
                answer.set_result(verdict)
