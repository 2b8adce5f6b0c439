"""Offset commits in the consumer group's current membership, sent from the app's loop: the fence's fast way.

Before each launch the worker proves it owns the partition by committing an
offset in its current generation (`service.ownership_proofs`). The consumer's
own commit runs on Faust's consumer thread, whose loop unpacks a whole fetch
at a time: measured on Apache Kafka, a proof waited 15-40 ms there, of which
the coordinator's answer took 2-4 ms; the rest was the hop to that thread and
back, and the GIL passed between the two threads.

Here the same OffsetCommit request (the group id, the member id and the
generation aiokafka's group coordinator holds, as aiokafka's own commit sends
them) goes to the group's coordinator over a client on the app's loop. Only an
accepted commit is an answer: anything else (no membership yet, the
coordinator unknown or moved, a refused generation, an ACL, a lost connection)
leaves the partition to the consumer's own commit, whose handling of each case
(rejoining, finding the coordinator again, pausing on an ACL) is the
worker's, and which is as slow as before only then.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka.client import AIOKafkaClient, ConnectionGroup
from aiokafka.errors import KafkaError
from aiokafka.protocol.commit import OffsetCommitRequest

from service.kafka.security import PLAINTEXT, KafkaSecurity, aiokafka_kwargs

logger = logging.getLogger(__name__)

NO_ERROR = 0


@dataclass(frozen=True)
class Membership:
    """The consumer's place in its group, as its group coordinator (aiokafka's) holds it now."""

    group_id: str
    generation: int
    member_id: str
    coordinator_id: int


class GroupCommits:
    """`accepted(membership, offsets)`: the partitions whose offsets the group's coordinator accepted from
    this member in this generation; started on first use, on the loop that first uses it."""

    def __init__(self, bootstrap_servers: str, security: KafkaSecurity = PLAINTEXT,
                 timeout_s: float = 10.0) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.security = security
        self.timeout_s = timeout_s
        self._client: AIOKafkaClient | None = None
        self._starting = asyncio.Lock()
        self._stopped = False

    async def accepted(self, membership: Membership, offsets: Mapping[Any, int]) -> set[Any]:
        """The keys of `offsets` (anything with `topic` and `partition`) the coordinator accepted; none when
        the request failed as a whole."""
        if self._stopped:  # the worker is shutting down: the consumer's own commit answers
            return set()
        by_partition = {(tp.topic, tp.partition): tp for tp in offsets}
        request = OffsetCommitRequest(membership.group_id, membership.generation, membership.member_id,
                                      OffsetCommitRequest.DEFAULT_RETENTION_TIME, _topics(offsets))
        try:
            client = await self._started()
            response = await asyncio.wait_for(
                client.send(membership.coordinator_id, request, group=ConnectionGroup.COORDINATION),
                self.timeout_s)
        except (KafkaError, OSError, TimeoutError) as exc:
            logger.debug("offset commit from the app's loop failed (%r); the consumer's own commit answers", exc)
            return set()
        return {by_partition[(topic, partition)]
                for topic, partitions in response.topics for partition, error_code in partitions
                if error_code == NO_ERROR and (topic, partition) in by_partition}

    async def connect(self, coordinator_id: int) -> None:
        """Open the connection to the group's coordinator now (at an assignment), not at the first proof."""
        if self._stopped:
            return
        try:
            client = await self._started()
            await asyncio.wait_for(client.ready(coordinator_id, group=ConnectionGroup.COORDINATION), self.timeout_s)
        except (KafkaError, OSError, TimeoutError) as exc:
            logger.debug("connecting to the group coordinator from the app's loop failed (%r)", exc)

    async def _started(self) -> AIOKafkaClient:
        async with self._starting:
            if self._client is None:
                client = AIOKafkaClient(bootstrap_servers=self.bootstrap_servers,
                                        request_timeout_ms=int(self.timeout_s * 1000),
                                        **aiokafka_kwargs(self.security))
                try:
                    await client.bootstrap()
                except BaseException:
                    await client.close()
                    raise
                self._client = client
        return self._client

    async def stop(self) -> None:
        self._stopped = True
        async with self._starting:
            if self._client is not None:
                await self._client.close()
                self._client = None


def _topics(offsets: Mapping[Any, int]) -> list[tuple[str, list[tuple[int, int, str]]]]:
    by_topic: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for tp, offset in offsets.items():
        by_topic[tp.topic].append((tp.partition, offset, ""))
    return list(by_topic.items())
