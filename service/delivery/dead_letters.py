"""Dead letters: records written to the DLQ with the contract's headers, retried through what Kafka refuses
(a refusal pauses the route, reason `dlq_write`, or `kafka_authorization` when an ACL denies the write,
until the DLQ takes the record)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import partial

from service.delivery.config import DeliverySettings
from service.delivery.links import DeadLetterSink
from service.dlq import Failure, dlq_headers
from service.errors import KafkaRefused, KafkaRejected
from service.metrics import Metrics
from service.pauses import RoutePauses
from service.records import Record
from service.retry import OWN_PAUSE, Refusal, Retrying, until_accepted

logger = logging.getLogger(__name__)

DLQ_WRITE = "dlq_write"  # a route's pause reason: the DLQ topic refused a dead letter


class DeadLetterWriter:
    """Writes dead letters, one at a time, each until the DLQ topic takes it."""

    def __init__(self, settings: DeliverySettings, sink: DeadLetterSink, pauses: RoutePauses, retrying: Retrying,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.sink = sink
        self.pauses = pauses
        self.retrying = retrying
        self.metrics = metrics

    async def write(self, records: Iterable[Record], failure: Failure) -> None:
        """Write records to the DLQ, retrying what Kafka refuses."""
        for record in records:
            await self._send_until_accepted(record, failure)
            self.metrics.dlq_messages.labels(record.topic, failure.stage).inc()
            logger.warning("dead-lettered %s/%d offset %d at stage %s: %s: %s", record.topic,
                           record.partition, record.offset, failure.stage, failure.error_class,
                           failure.error_message)

    async def _send_until_accepted(self, record: Record, failure: Failure) -> None:
        """Send one dead letter; a broker that refuses it (e.g. for its size) pauses its route, reason dlq_write."""

        def refusal(exc: Exception) -> Refusal | None:
            if not isinstance(exc, KafkaRejected):
                return None
            refused = (f"the DLQ topic {self.settings.dlq_topic} refused a dead letter of "
                       f"{record.topic}/{record.partition} offset {record.offset}: {exc}")
            if isinstance(exc, KafkaRefused):  # an ACL: not the record's fault, and no size limit to raise
                return Refusal(exc.reason, refused, exc.hint)
            return Refusal(DLQ_WRITE, refused,
                           "raise the DLQ topic's max.message.bytes (or the broker's message.max.bytes)")

        await until_accepted(partial(self.retrying.transient, partial(self._send_dead_letter, record, failure),
                                     "dead-letter"),
                             pauses=self.pauses, route=failure.route or record.topic, resumes=OWN_PAUSE,
                             refusal=refusal, backoff=self.retrying.route_backoff())

    async def _send_dead_letter(self, record: Record, failure: Failure) -> None:
        headers = dlq_headers(record, failure)
        await self.sink.send(self.settings.dlq_topic, record.key, record.value, headers, record.timestamp_ms)
