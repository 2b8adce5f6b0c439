"""Record factory the unit tests share."""

from __future__ import annotations

from service.records import Record

RECORD_TIME_S = 1_700_000_000.0  # every record's default timestamp


def make_record(offset: int, *, topic: str = "orders", partition: int = 0, value: bytes | None = b"{}",
                key: bytes | None = None, timestamp_ms: int | None = int(RECORD_TIME_S * 1000),
                headers: list[tuple[str, bytes]] | None = None) -> Record:
    return Record(topic, partition, offset, timestamp_ms, key, value, list(headers or []))
