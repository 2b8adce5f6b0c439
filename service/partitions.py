"""Partitions from events: a route's `partition_key`, read from each record.

Pure (standard library only). A key is read from one place of the record:

    value.a.b            the JSON value's field a.b (a string as is; a number or boolean as JSON text)
    key                  the record key, as UTF-8 text (a framed key: its decoded text, `Record.match_key`)
    headers.NAME         the header NAME, as UTF-8 text
    timestamp:FORMAT     the record timestamp (UTC), formatted with strftime (e.g. timestamp:%Y-%m-%d)
    value.a.b:FORMAT     the field as an ISO-8601 date-time or epoch seconds, formatted with strftime

A record without one is a record failure (`PartitionKeyMissing`, stage
`validate`). Whether the key is a partition of the target's definition is
asked of Dagster (`service.delivery`), not here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service.errors import PartitionKeyMissing
from service.records import Record

SOURCES = ("value", "key", "headers", "timestamp")


class PartitionKeyError(ValueError):
    """A `partition_key` that is not one of the supported forms."""


@dataclass(frozen=True)
class PartitionKeySpec:
    """Where a route reads each record's partition key, compiled from its `partition_key`."""

    text: str
    source: str
    path: tuple[str, ...] = ()
    fmt: str | None = None

    def key_of(self, record: Record, value: Any) -> str:
        """The record's partition key; `PartitionKeyMissing` when it has none."""
        if self.source == "timestamp":
            if not record.timestamp_ms:
                raise PartitionKeyMissing(f"record has no timestamp for partition_key {self.text!r}")
            return _format(datetime.fromtimestamp(record.timestamp_ms / 1000, UTC), self.fmt)
        if self.source == "key":
            raw = record.match_key
        elif self.source == "headers":
            raw = next((v for k, v in record.headers if k == self.path[0]), None)
        else:
            raw = None
            found = _lookup(value, self.path)
            if found is not _MISSING and found is not None and not isinstance(found, dict | list):
                return self._field(found)
        if raw is None:
            raise PartitionKeyMissing(f"record has no partition key at {self.text}")
        return _checked(raw.decode("utf-8", "backslashreplace"), self.text)

    def _field(self, found: Any) -> str:
        if self.fmt is None:
            return _checked(found if isinstance(found, str) else json.dumps(found), self.text)
        try:
            if isinstance(found, int | float) and not isinstance(found, bool):
                moment = datetime.fromtimestamp(found, UTC)
            else:
                moment = datetime.fromisoformat(str(found))
        except (ValueError, OverflowError, OSError) as exc:
            raise PartitionKeyMissing(f"{self.text.split(':', 1)[0]} = {found!r} is not a date-time: {exc}") from None
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC)
        return _format(moment, self.fmt)


_MISSING = object()


def _lookup(value: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _format(moment: datetime, fmt: str | None) -> str:
    return moment.strftime(fmt or "%Y-%m-%d")


def _checked(key: str, where: str) -> str:
    if not key:
        raise PartitionKeyMissing(f"record has an empty partition key at {where}")
    return key


def compile_partition_key(text: str) -> PartitionKeySpec:
    """`text` as a `PartitionKeySpec`, or `PartitionKeyError` saying which forms exist."""
    where, colon, fmt = text.partition(":")
    forms = "value.<path>, key, headers.<name>, timestamp:<strftime format>, value.<path>:<strftime format>"
    source, _, rest = where.partition(".")
    path = tuple(rest.split(".")) if rest else ()
    if colon and not fmt:
        raise PartitionKeyError(f"partition_key {text!r}: give a strftime format after ':'")
    if source == "timestamp" and not path and colon:
        return PartitionKeySpec(text, "timestamp", (), fmt)
    if source == "value" and path and all(path):
        return PartitionKeySpec(text, "value", path, fmt or None)
    if source == "key" and not path and not colon:
        return PartitionKeySpec(text, "key")
    if source == "headers" and len(path) == 1 and path[0] and not colon:
        return PartitionKeySpec(text, "headers", path)
    raise PartitionKeyError(f"partition_key {text!r} is not one of: {forms}")
