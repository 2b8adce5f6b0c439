"""Resources of the code location: Kafka, dead letters, notifications, metrics.

Every resource is a `dg.ConfigurableResource`, configured in `definitions.py`
from the environment (`dg.EnvVar`), never from module globals. Kafka errors are
translated here, at the aiokafka edge: ops only ever see `KafkaUnavailable`
(transient: worth a `RetryRequested`).

TLS and SASL settings are read and mapped to aiokafka by the worker's own code
(`service.settings.load_kafka_security`, `service.kafka.security`), and a batch given as an offset range is read
back by the worker's own range reader (`service.kafka.read_range`, which
skips records retention deleted). Besides these, the code location imports
only pure modules of the worker: the contract's names (`service.contract`),
the dead-letter format (`service.dlq`) and the routes' match patterns
(`service.matching`); never the worker itself (Faust, httpx).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from service import kafka
from service.contract import DEFAULT_DLQ_TOPIC
from service.errors import BrokerUnavailable, KafkaRejected
from service.kafka.security import KafkaSecurity, aiokafka_kwargs, as_env
from service.records import Record
from service.settings import load_kafka_security

logger = logging.getLogger(__name__)

DEFAULT_NOTIFICATIONS_TOPIC = "kafka-dagster.notifications"


class KafkaUnavailable(Exception):
    """The broker could not be reached or did not answer in time; a later attempt may succeed."""


@dataclass(frozen=True)
class KafkaMessage:
    """One Kafka record, byte for byte: what is read back and what is published."""

    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = field(default=())
    # A value the worker decoded from the Confluent wire format: `value` is then its JSON text, and these
    # name its writer schema (the registry id, or "guid <uuid>") and the registry's subject for it.
    value_schema_id: str | None = None
    value_subject: str | None = None
    # The same for a framed key (`key_format`): `key` is then its decoded text (a string as it is, else JSON).
    key_schema_id: str | None = None
    key_subject: str | None = None


class KafkaResource(dg.ConfigurableResource):
    """The Kafka cluster the batches come from, and where dead letters and notifications go.

    Large batches reach a run as an offset range only; `read_range` reads the
    records back from the partition, so run config stays small. TLS and SASL
    take the worker's settings (`KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_*`,
    `KAFKA_SSL_*`), checked and mapped to aiokafka by the same code.
    """

    bootstrap_servers: str
    request_timeout_s: float = 30.0
    client_id: str = "kafka-dagster-code-location"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def security(self) -> KafkaSecurity:
        """The TLS/SASL settings, checked by the worker's own code."""
        return load_kafka_security(as_env(KafkaSecurity(
            self.security_protocol, self.sasl_mechanism, self.sasl_username, self.sasl_password, self.ssl_cafile,
            self.ssl_certfile, self.ssl_keyfile)))

    def schema_registry(self) -> Any:
        """The schema registry client for framed values read back (`dagster_project.framed`); None: the
        worker's settings from the environment, read when a run needs them."""
        return None

    def client_kwargs(self) -> dict[str, Any]:
        """bootstrap_servers, client_id and the TLS/SASL arguments every aiokafka client here is made with."""
        return {"bootstrap_servers": self.bootstrap_servers, "client_id": self.client_id,
                **aiokafka_kwargs(self.security())}

    def read_range(self, topic: str, partition: int, start: int, end: int) -> list[KafkaMessage]:
        """Records of `topic`/`partition` with offsets in [start, end] still held by the broker."""
        return self._run(self._read_range(topic, partition, start, end), f"reading {topic}/{partition}")

    def end_offsets(self, topics: Sequence[str]) -> dict[str, dict[int, int]]:
        """Per existing topic, each partition's end offset (the offset the next record will get)."""
        return self._run(self._end_offsets(list(topics)), "reading end offsets")

    def publish(self, topic: str, messages: Sequence[KafkaMessage]) -> None:
        """Send `messages` to `topic` (created when missing) and wait for every acknowledgement."""
        self._run(self._publish(topic, list(messages)), f"publishing to {topic}")

    def _run(self, coro: Any, what: str) -> Any:
        try:
            return asyncio.run(coro)
        except (KafkaError, BrokerUnavailable, KafkaRejected, OSError, TimeoutError) as exc:
            raise KafkaUnavailable(f"{what} on {self.bootstrap_servers}: {exc!r}") from exc

    def _consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            **self.client_kwargs(),
            enable_auto_commit=False,
            isolation_level=kafka.READ_COMMITTED,
            request_timeout_ms=int(self.request_timeout_s * 1000),
            fetch_max_wait_ms=100,
        )

    async def _read_range(self, topic: str, partition: int, start: int, end: int) -> list[KafkaMessage]:
        records = await kafka.read_range(self.bootstrap_servers, topic, partition, start, end,
                                         timeout_s=self.request_timeout_s, security=self.security())
        return [_message(r) for r in records]

    async def _end_offsets(self, topics: list[str]) -> dict[str, dict[int, int]]:
        partitions = await kafka.topic_partitions(self.bootstrap_servers, topics, self.security())
        tps = [TopicPartition(topic, p) for topic, numbers in partitions.items() for p in numbers]
        result: dict[str, dict[int, int]] = {topic: {} for topic in partitions}
        if not tps:
            return result
        consumer = self._consumer()
        try:
            await consumer.start()
            ends = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
        for tp, offset in ends.items():
            result[tp.topic][tp.partition] = offset
        return result

    async def _publish(self, topic: str, messages: list[KafkaMessage]) -> None:
        await self._ensure_topic(topic)
        producer = AIOKafkaProducer(**self.client_kwargs(), acks="all",
                                    request_timeout_ms=int(self.request_timeout_s * 1000))
        try:
            await producer.start()
            sent = [
                await producer.send(topic, key=m.key, value=m.value, headers=list(m.headers) or None,
                                    timestamp_ms=m.timestamp_ms)
                for m in messages
            ]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()

    async def _ensure_topic(self, topic: str) -> None:
        admin = AIOKafkaAdminClient(**self.client_kwargs())
        try:
            await admin.start()
            if topic not in set(await admin.list_topics()):
                try:
                    await admin.create_topics([NewTopic(topic, 1, 1)])
                except TopicAlreadyExistsError:
                    pass
                logger.info("created topic %s", topic)
        finally:
            await admin.close()


def _message(record: Record) -> KafkaMessage:
    return KafkaMessage(record.offset, record.timestamp_ms, record.key, record.value, tuple(record.headers or ()))


class DeadLetterResource(dg.ConfigurableResource):
    """The dead-letter topic (`KAFKA_DAGSTER_DLQ_TOPIC`) the worker also writes to."""

    kafka: KafkaResource
    topic: str = DEFAULT_DLQ_TOPIC

    def send(self, messages: Sequence[KafkaMessage]) -> None:
        self.kafka.publish(self.topic, messages)


class NotificationsResource(dg.ConfigurableResource):
    """A Kafka topic of JSON notifications about batches and runs, for people and other systems."""

    kafka: KafkaResource
    topic: str = DEFAULT_NOTIFICATIONS_TOPIC

    def notify(self, event: str, **fields: Any) -> dict[str, Any]:
        """Publish one notification `{"event": ..., "at": ..., **fields}` keyed by its run id; return it."""
        body = {"event": event, "at": datetime.now(UTC).isoformat(timespec="milliseconds"), **fields}
        key = str(fields.get("run_id") or event).encode()
        self.kafka.publish(self.topic, [KafkaMessage(-1, None, key, json.dumps(body, default=str).encode())])
        return body


class MetricsResource(dg.ConfigurableResource):
    """Batch measurements rendered as typed metadata on materializations and observations.

    Prometheus export is left to the worker's `/metrics`; what is measured here
    travels on Dagster events, where the UI plots numeric metadata over time.
    """

    lag_budget_s: float = 300.0

    def batch_metadata(self, *, record_count: int, processing_time_s: float,
                       oldest_timestamp_ms: int | None, now_s: float | None = None) -> dict[str, dg.MetadataValue]:
        """processing_time_s, records_per_s, and the event lag of the batch's oldest record."""
        now_s = time.time() if now_s is None else now_s
        metadata: dict[str, dg.MetadataValue] = {
            "processing_time_s": dg.MetadataValue.float(round(processing_time_s, 6)),
            "records_per_s": dg.MetadataValue.float(
                round(record_count / processing_time_s, 1) if processing_time_s > 0 else 0.0),
        }
        if oldest_timestamp_ms:
            lag_s = max(0.0, now_s - oldest_timestamp_ms / 1000)
            metadata["event_lag_s"] = dg.MetadataValue.float(round(lag_s, 3))
            metadata["within_lag_budget"] = dg.MetadataValue.bool(lag_s <= self.lag_budget_s)
        return metadata


def env_or(name: str, default: str | None) -> Any:
    """`dg.EnvVar(name)` when the variable is set (resolved at run time, shown as such in the UI), else `default`."""
    return dg.EnvVar(name) if name in os.environ else default
