"""Handled run outcomes: which runs that did not succeed are dealt with, shared by every worker.

A run that ends FAILURE or CANCELED is settled once (`service.verdicts`): its
records copied to the DLQ (stage `run`), its batch launched again, or nothing
when another run of its batch keeps the records. The worker watching it does
that; but a run may end while no worker watches it (its worker was killed),
and then its partition's next owner finds it terminal at reconcile. To settle
it exactly once, whoever settles a run then writes the run id to a compacted
topic next to the DLQ (`<KAFKA_DAGSTER_DLQ_TOPIC>.outcomes`, key: run id,
value: what was done, e.g. its status once dead-lettered), and the next owner
settles only the runs that topic does not name. A run the duplicate rule
cancels is written (`DUPLICATE`) before it is cancelled, so every worker can
tell it from a run an operator cancelled. Dagster's GraphQL cannot tag a
finished run, so the record lives in Kafka.

Without transactions, a worker killed between the copy and the record copies
the run again after restart; `dlq inspect`/`replay` drop such duplicates.
With transactions, the partition's owner writes the copy and the record in one
transaction (`service.delivery.failed_runs`).
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition

from service.kafka import PLAINTEXT, READ_COMMITTED, Producer, ensure_topics, map_kafka_errors
from service.kafka.security import KafkaSecurity, aiokafka_kwargs

logger = logging.getLogger(__name__)

OUTCOMES_SUFFIX = ".outcomes"
# The value written for a run the duplicate rule cancelled: its batch's records are in another run.
DUPLICATE = "DUPLICATE"
COMPACTED = {"cleanup.policy": "compact"}


def outcomes_topic(dlq_topic: str) -> str:
    return dlq_topic + OUTCOMES_SUFFIX


class OutcomeLog:
    """The run ids whose failure is handled, read from and written to the outcomes topic.

    :param bootstrap_servers: the Kafka bootstrap servers
    :param topic: the outcomes topic (one partition, compacted)
    :param producer: the worker's DLQ producer, which writes the records too
    :param security: Kafka TLS/SASL settings
    """

    def __init__(self, bootstrap_servers: str, topic: str, producer: Producer,
                 security: KafkaSecurity = PLAINTEXT) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.producer = producer
        self.security = security
        self.handled_runs: dict[str, str] = {}  # run id -> what was done
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def handled(self, run_id: str) -> bool:
        """True when some worker has already settled this run (read up to the topic's end now)."""
        return await self.outcome(run_id) is not None

    async def outcome(self, run_id: str) -> str | None:
        """What some worker did with this run, if anything (read up to the topic's end now)."""
        await self.catch_up()
        return self.handled_runs.get(run_id)

    async def cancelled_as_duplicates(self) -> set[str]:
        """The run ids that the duplicate rule cancelled, by any worker."""
        await self.catch_up()
        return {run_id for run_id, done in self.handled_runs.items() if done == DUPLICATE}

    async def record(self, run_id: str, status: str) -> None:
        """Remember that the records of `run_id` (which ended `status`) are in the DLQ."""
        await self._start()
        await self.producer.send(self.topic, run_id.encode(), status.encode())
        self.remember(run_id, status)

    def remember(self, run_id: str, status: str) -> None:
        """What was done with `run_id`, written to the topic by someone else (a transaction of this worker's)."""
        self.handled_runs[run_id] = status

    async def catch_up(self) -> None:
        """Read every record the outcomes topic holds now."""
        async with self._lock:
            consumer = await self._start()
            tp = TopicPartition(self.topic, 0)
            with map_kafka_errors(f"reading {self.topic}"):
                end = (await consumer.end_offsets([tp]))[tp]
                while await consumer.position(tp) < end:
                    fetched = await consumer.getmany(tp, timeout_ms=500)
                    for message in fetched.get(tp, []):
                        if message.key is not None:
                            done = (message.value or b"").decode("utf-8", "replace")
                            self.handled_runs[message.key.decode("utf-8", "replace")] = done

    async def _start(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            await ensure_topics(self.bootstrap_servers, {self.topic: 1}, self.security, configs=COMPACTED)
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False,
                                        auto_offset_reset="earliest", isolation_level=READ_COMMITTED,
                                        **aiokafka_kwargs(self.security))
            try:
                with map_kafka_errors(f"reading {self.topic}"):
                    await consumer.start()
                    consumer.assign([TopicPartition(self.topic, 0)])
                    await consumer.seek_to_beginning(TopicPartition(self.topic, 0))
            except BaseException:
                await consumer.stop()
                raise
            self._consumer = consumer
        return self._consumer

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
