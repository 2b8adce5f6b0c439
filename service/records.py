"""What the worker consumes: one Kafka record, and the topic-partition it comes from.

Pure, like `service.batching`: no Faust and no aiokafka imports. Faust's own
`TP` is a NamedTuple of the same two fields, so the two compare and hash
alike; `TP.of` turns any (topic, partition) object into this one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol


class _HasTopicPartition(Protocol):
    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...


class TP(NamedTuple):
    topic: str
    partition: int

    @classmethod
    def of(cls, tp: _HasTopicPartition) -> TP:
        """This module's TP for Faust's or aiokafka's topic-partition."""
        return cls(tp.topic, tp.partition)


@dataclass(slots=True)
class Record:
    """One consumed Kafka record, raw bytes kept for the run and the DLQ."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()
    epoch: int = 0  # the partition's assignment epoch when the record was consumed
    # A framed value (`service.wire`), decoded before routing: a `wire.Decoded`, or the RecordError saying
    # why it cannot be; None for a JSON route's record, whose value is parsed where it is read.
    decoded: Any = None
    # A framed key, decoded the same way (`key_format`): a `wire.Decoded` or the RecordError; None when the
    # route reads keys as they are.
    decoded_key: Any = None

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)

    @property
    def match_key(self) -> bytes | None:
        """The key as `match`, `partition_key` and the run read it: a framed key's decoded value as UTF-8 text
        (a string as it is, anything else as its JSON text), else the key's own bytes."""
        decoded = self.decoded_key
        if decoded is None or isinstance(decoded, Exception):
            return self.key
        value = decoded.value
        return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(decoded.json)

    @property
    def size(self) -> int:
        return len(self.value or b"") + len(self.key or b"")
