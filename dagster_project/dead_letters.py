"""Dead letters written from inside a run (stage `process`), in the contract's format.

The headers are the ones the worker writes: `service.dlq.failure_headers`,
the one home of the format (a pure module: no Faust, no Kafka client). A dead
letter keeps the original key, value, headers and timestamp byte for byte and
adds the `dlq.*` headers.
"""

from __future__ import annotations

from datetime import datetime

from dagster_project.resources import KafkaMessage
from service.contract import STAGE_PROCESS
from service.dlq import Failure, failure_headers


def dlq_headers(original: KafkaMessage, *, topic: str, partition: int, error_class: str, error_message: str,
                run_id: str, now: datetime | None = None) -> tuple[tuple[str, bytes], ...]:
    """The record's own headers followed by `dlq.*` headers for a record its run could not process."""
    failure = Failure(STAGE_PROCESS, error_class, error_message, run_id=run_id)
    return tuple(failure_headers(original.headers, topic, partition, original.offset, failure, now))


def dead_letter(original: KafkaMessage, *, topic: str, partition: int, error_class: str, error_message: str,
                run_id: str, now: datetime | None = None) -> KafkaMessage:
    """The DLQ message for `original`."""
    headers = dlq_headers(original, topic=topic, partition=partition, error_class=error_class,
                          error_message=error_message, run_id=run_id, now=now)
    return KafkaMessage(original.offset, original.timestamp_ms, original.key, original.value, headers)
