"""The dead-letter record format, written by the worker and by the code location.

A dead letter keeps the original key, value, headers and timestamp byte for
byte and adds `dlq.*` headers saying where it came from and why it failed.
Error messages are truncated to a bound; secrets never reach them because
only exception text of our own making, or Dagster's answer, is used.

Pure (the standard library, `service.contract` and `service.batching`), so
that `dagster_project` writes its dead letters with `failure_headers` too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from service.contract import (
    HEADER_ATTEMPTS,
    HEADER_ERROR_CLASS,
    HEADER_ERROR_MESSAGE,
    HEADER_FAILED_AT,
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_PREFIX,
    HEADER_ROUTE,
    HEADER_RUN_ID,
    HEADER_STAGE,
    HEADER_TOPIC,
    REPLAY_HEADER,
    STAGE_DECODE,
    STAGE_LAUNCH,
    STAGE_VALIDATE,
    STAGES,
)
from service.errors import BadFraming, UndecodableValue, UnknownSchema
from service.frames import KEY_SCHEMA_ID_HEADER, read_frame, schema_id_header
from service.records import Record

PRE_LAUNCH_STAGES = (STAGE_DECODE, STAGE_VALIDATE, STAGE_LAUNCH)
# A framed value (or key) that named its writer schema but did not decode with it: `dlq inspect` shows the schema.
FRAMED_DECODE_ERRORS = (UnknownSchema.__name__, UndecodableValue.__name__)
MAX_ERROR_MESSAGE_CHARS = 1024
REPLAYED_SUFFIX = ".replayed"


@dataclass(frozen=True)
class Failure:
    """Why records are dead-lettered."""

    stage: str
    error_class: str
    error_message: str
    attempts: int = 1
    run_id: str | None = None
    route: str | None = None  # the route the record was dead-lettered for, when it was routed

    @classmethod
    def from_exception(cls, stage: str, exc: BaseException, attempts: int = 1,
                       run_id: str | None = None, route: str | None = None) -> Failure:
        error_class = getattr(exc, "typename", None) or type(exc).__name__
        return cls(stage, error_class, str(exc), attempts, run_id, route)


def utc_iso(moment: datetime | None = None, timespec: str = "milliseconds") -> str:
    """`moment` (default: now) in UTC as ISO-8601 ending in Z, as `dlq.failed_at` and the replay markers say it."""
    return (moment or datetime.now(UTC)).isoformat(timespec=timespec).replace("+00:00", "Z")


def dlq_headers(record: Record, failure: Failure, now: datetime | None = None) -> list[tuple[str, bytes]]:
    """The record's own headers followed by the `dlq.*` headers for `failure`."""
    return failure_headers(record.headers, record.topic, record.partition, record.offset, failure, now)


def failure_headers(own: Sequence[tuple[str, bytes]], topic: str, partition: int, offset: int, failure: Failure,
                    now: datetime | None = None) -> list[tuple[str, bytes]]:
    """`own` headers (less any `dlq.*`) followed by the `dlq.*` headers of the record at topic/partition/offset."""
    if failure.stage not in STAGES:
        raise ValueError(f"unknown DLQ stage {failure.stage!r}")
    failed_at = utc_iso(now)
    added = {
        HEADER_TOPIC: topic,
        HEADER_PARTITION: str(partition),
        HEADER_OFFSET: str(offset),
        HEADER_STAGE: failure.stage,
        HEADER_ERROR_CLASS: failure.error_class,
        HEADER_ERROR_MESSAGE: truncate(failure.error_message),
        HEADER_ATTEMPTS: str(failure.attempts),
        HEADER_FAILED_AT: failed_at,
    }
    if failure.route is not None:
        added[HEADER_ROUTE] = failure.route
    if failure.run_id is not None:
        added[HEADER_RUN_ID] = failure.run_id
    kept = [(k, v) for k, v in own if not k.startswith(HEADER_PREFIX)]
    return kept + [(k, v.encode()) for k, v in added.items()]


def truncate(text: str, limit: int = MAX_ERROR_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class DeadLetter:
    """A record read back from the DLQ topic, with its `dlq.*` headers parsed."""

    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None
    headers: list[tuple[str, bytes]]
    dlq: dict[str, str]
    dlq_offset: int = -1

    @classmethod
    def parse(cls, key: bytes | None, value: bytes | None, timestamp_ms: int | None,
              headers: Sequence[tuple[str, bytes]], dlq_offset: int = -1) -> DeadLetter:
        own = [(k, v) for k, v in headers if not k.startswith(HEADER_PREFIX)]
        dlq = {k: v.decode("utf-8", "replace") for k, v in headers if k.startswith(HEADER_PREFIX)}
        return cls(key, value, timestamp_ms, own, dlq, dlq_offset)

    @property
    def origin(self) -> tuple[str, int, int]:
        return self.dlq[HEADER_TOPIC], int(self.dlq[HEADER_PARTITION]), int(self.dlq[HEADER_OFFSET])

    @property
    def stage(self) -> str:
        return self.dlq.get(HEADER_STAGE, "")

    @property
    def failed_at_ms(self) -> int | None:
        """When it was dead-lettered (`dlq.failed_at`; the record's own timestamp is the original's)."""
        try:
            return int(datetime.fromisoformat(self.dlq[HEADER_FAILED_AT]).timestamp() * 1000)
        except (KeyError, ValueError):
            return None


class Selection:
    """Which dead letters a `dlq` command takes, one at a time: those matching the filters, one per
    (origin, stage) (a worker killed between writing a dead letter and committing writes it again).

    Only the keys of the letters taken are remembered, so a DLQ of any size streams through it.
    """

    def __init__(self, stage: str | None = None, source_topic: str | None = None,
                 since_ms: int | None = None) -> None:
        """`since_ms`: only dead letters whose `dlq.failed_at` is at or after it (epoch milliseconds)."""
        self.stage = stage
        self.source_topic = source_topic
        self.since_ms = since_ms
        self.seen: set[str] = set()

    def takes(self, letter: DeadLetter) -> bool:
        if HEADER_TOPIC not in letter.dlq:
            return False  # not a dead letter: nothing says where it came from
        if self.stage and letter.stage != self.stage:
            return False
        if self.source_topic and letter.dlq.get(HEADER_TOPIC) != self.source_topic:
            return False
        if self.since_ms is not None and (letter.failed_at_ms or 0) < self.since_ms:
            return False
        key = identity(letter)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def select(letters: Sequence[DeadLetter], stage: str | None = None,
           source_topic: str | None = None) -> list[DeadLetter]:
    """Dead letters matching the filters, one per (origin, stage): duplicates are dropped."""
    selection = Selection(stage, source_topic)
    return [letter for letter in letters if selection.takes(letter)]


def identity(letter: DeadLetter) -> str:
    """`<topic>/<partition>/<offset>/<stage>` of the original record: one dead letter, however often written.

    The key of `kafka-dagster dlq replay`'s record of what it replayed (`replayed_topic`).
    """
    topic, partition, offset = letter.origin
    return f"{topic}/{partition}/{offset}/{letter.stage}"


def replayed_topic(dlq_topic: str) -> str:
    """The compacted topic next to the DLQ naming every dead letter replayed (key: `identity`)."""
    return dlq_topic + REPLAYED_SUFFIX


def replay_headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    """The original headers, plus where the replayed record came from."""
    topic, partition, offset = letter.origin
    return [*letter.headers, (REPLAY_HEADER, f"{topic}/{partition}/{offset}".encode())]


def describe(letter: DeadLetter) -> str:
    """One line per dead letter, for `kafka-dagster dlq inspect`."""
    topic, partition, offset = letter.origin
    run = f" run={letter.dlq[HEADER_RUN_ID]}" if HEADER_RUN_ID in letter.dlq else ""
    return (f"{letter.dlq_offset}\t{topic}/{partition}/{offset}\t{letter.stage}\t"
            f"{letter.dlq.get(HEADER_ERROR_CLASS, '')}: {letter.dlq.get(HEADER_ERROR_MESSAGE, '')}{run}"
            f"{_schema(letter)}")


def _schema(letter: DeadLetter) -> str:
    ref = schema_ref(letter)
    return f" {schema_field(letter)}={ref}" if ref is not None else ""


def schema_ref(letter: DeadLetter) -> str | None:
    """The writer schema (id, or `guid ...`) a framed value (or key: `schema_field`) named that failed to
    decode with it."""
    if letter.stage != STAGE_DECODE or letter.dlq.get(HEADER_ERROR_CLASS) not in FRAMED_DECODE_ERRORS:
        return None
    try:
        if _key_failed(letter):
            frame = read_frame(letter.key, schema_id_header(letter.headers, KEY_SCHEMA_ID_HEADER), what="key")
        else:
            frame = read_frame(letter.value, schema_id_header(letter.headers))
    except BadFraming:
        return None
    return str(frame.ref)


def schema_field(letter: DeadLetter) -> str:
    """What `dlq inspect` calls the writer schema `schema_ref` names: `schema` (a value's) or `key_schema`."""
    return "key_schema" if _key_failed(letter) else "schema"


def _key_failed(letter: DeadLetter) -> bool:
    """The letter's framed key did not decode (`key_format`): its message says "key" first."""
    return letter.dlq.get(HEADER_ERROR_MESSAGE, "").startswith("key ")
