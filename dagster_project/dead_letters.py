"""Dead letters written from inside a run (stage `process`), in the contract's format.

The header names and their meaning are the ones `service/dlq.py` writes; the
code location never imports `service`, so the little logic is repeated here.
A dead letter keeps the original key, value, headers and timestamp byte for
byte and adds the `dlq.*` headers.
"""

from __future__ import annotations

from datetime import UTC, datetime

from dagster_project.resources import KafkaMessage

STAGE = "process"
PREFIX = "dlq."
MAX_ERROR_MESSAGE_CHARS = 1024


def dlq_headers(original: KafkaMessage, *, topic: str, partition: int, error_class: str, error_message: str,
                run_id: str, now: datetime | None = None) -> tuple[tuple[str, bytes], ...]:
    """The record's own headers followed by `dlq.*` headers for a record its run could not process."""
    failed_at = (now or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    added = {
        "dlq.topic": topic,
        "dlq.partition": str(partition),
        "dlq.offset": str(original.offset),
        "dlq.stage": STAGE,
        "dlq.error.class": error_class,
        "dlq.error.message": truncate(error_message),
        "dlq.attempts": "1",
        "dlq.failed_at": failed_at,
        "dlq.run_id": run_id,
    }
    own = tuple((k, v) for k, v in original.headers if not k.startswith(PREFIX))
    return own + tuple((k, v.encode()) for k, v in added.items())


def dead_letter(original: KafkaMessage, *, topic: str, partition: int, error_class: str, error_message: str,
                run_id: str, now: datetime | None = None) -> KafkaMessage:
    """The DLQ message for `original`."""
    headers = dlq_headers(original, topic=topic, partition=partition, error_class=error_class,
                          error_message=error_message, run_id=run_id, now=now)
    return KafkaMessage(original.offset, original.timestamp_ms, original.key, original.value, headers)


def truncate(text: str, limit: int = MAX_ERROR_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
