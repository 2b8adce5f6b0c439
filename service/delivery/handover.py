"""The hand-over: at a rebalance or a shutdown, what is open is launched (each launch fenced) within a bound,
then the partitions are dropped; what could not be launched in time stays uncommitted for the next owner.

With transactions, a partition's waiting dead letters are written with the commit of what it handled before
it is dropped (its transactional id is what fences it, not the group generation), so its next owner neither
loses nor writes them again; its transactional producer is then released."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from service.delivery.dead_letters import Flush
from service.delivery.intake import Intake
from service.delivery.ownership import OwnedPartition, Partitions
from service.records import TP

logger = logging.getLogger(__name__)


class HandOver:
    """:param flush: writes a partition's waiting dead letters with the commit that covers them (transactions)
    :param release: gives up the dropped partitions' transactional ids"""

    def __init__(self, partitions: Partitions, intake: Intake, flush: Flush | None = None,
                 release: Callable[[list[TP]], Awaitable[None]] | None = None) -> None:
        self.partitions = partitions
        self.intake = intake
        self.flush = flush
        self.release = release

    async def on_revoked(self, tps: Iterable[TP], timeout_s: float) -> None:
        """Rebalance: launch what is open for the revoked partitions (each launch fenced), then drop them.

        Revoked partitions are no longer marked done (their commits are Faust's
        no more); the next owner learns what was launched by reconciling with Dagster.
        Their dead letters, with transactions, are written with a commit of what was handled.
        """
        owned = [partition for tp in set(tps) if (partition := self.partitions.get(tp)) is not None]
        for partition in owned:
            partition.hand_over()
        await self._hand_over(owned, timeout_s)

    async def close(self, timeout_s: float) -> None:
        """Shutdown: launch and mark done what is open, within `timeout_s`, so the last commit covers it."""
        self.partitions.closing = True
        await self._hand_over(list(self.partitions), timeout_s)

    async def _hand_over(self, owned: list[OwnedPartition], timeout_s: float) -> None:
        for partition in owned:
            for share in partition.shares:
                for batch in share.batcher.drain({partition.tp}):
                    if share.lane.queue.full() or not partition.may_launch:
                        continue  # its records stay uncommitted: whoever consumes them next reconciles first
                    self.intake.count_closed(batch)
                    share.lane.put_nowait(batch)
        lanes = [lane for partition in owned for lane in partition.lanes]
        if lanes:
            done = await asyncio.gather(*(lane.join(timeout_s) for lane in lanes))
            if not all(done):
                logger.warning("%d lanes still launching after %.0fs; leaving their batches uncommitted",
                               done.count(False), timeout_s)
        if self.flush is not None:
            for partition in owned:
                await self.flush(partition)
        for partition in owned:
            await self.partitions.drop(partition)
        if self.release is not None:
            await self.release([partition.tp for partition in owned])
