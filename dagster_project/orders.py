"""Pure batch logic: decode and classify records, split them by key, audit them.

No Dagster and no Kafka client here, so every rule is a plain function that a
unit test calls directly. A record the job cannot process (its value is not a
JSON object, or has no `order_id`) is a `Reject`, dead-lettered at stage
`process`; the rest are `Order`s, possibly with schema problems that the
`schema_conformance` check reports without dropping them.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from dagster_project.resources import KafkaMessage
from dagster_project.routes_file import load_order_schema

# The demo order: schemas/order.json, the schema the worker's route validates with.
ORDER_SCHEMA: dict[str, Any] = load_order_schema()
_VALIDATOR = jsonschema.Draft202012Validator(ORDER_SCHEMA)
NO_KEY = "no_key"


@dataclass(frozen=True)
class Order:
    """A processable record: a JSON object with an `order_id`."""

    offset: int
    timestamp_ms: int | None
    key: str | None
    order_id: str
    customer: str | None
    amount: float
    problems: tuple[str, ...] = ()

    @property
    def conforms(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class Reject:
    """A record the job cannot process, why (the DLQ's `dlq.error.*`), and the record itself."""

    message: KafkaMessage
    error_class: str
    error_message: str

    @property
    def offset(self) -> int:
        return self.message.offset


@dataclass(frozen=True)
class BatchInfo:
    """Where a batch comes from, how many records it should and does hold, and when work on it began."""

    topic: str
    partition: int
    offset_start: int
    offset_end: int
    batch_id: str
    record_count: int
    records_received: int
    records_source: str
    started_at: float
    oldest_timestamp_ms: int | None


@dataclass(frozen=True)
class Classified:
    orders: list[Order] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    fail_run_offsets: list[int] = field(default_factory=list)


def key_text(key: bytes | None) -> str | None:
    return key.decode("utf-8", "backslashreplace") if key is not None else None


def classify(messages: Iterable[KafkaMessage]) -> Classified:
    """Split a batch's records into orders and rejects; note records asking the run to fail."""
    result = Classified()
    for message in messages:
        value, reject = _decode(message)
        if isinstance(value, dict) and value.get("fail_run") is True:
            result.fail_run_offsets.append(message.offset)
        if reject is not None:
            result.rejects.append(reject)
        else:
            result.orders.append(_order(message, value))
    return result


def _decode(message: KafkaMessage) -> tuple[Any, Reject | None]:
    if message.value is None:
        return None, Reject(message, "NullValue", "record has a null value")
    try:
        value = json.loads(message.value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, Reject(message, "InvalidJson", f"value is not JSON: {exc}")
    if not isinstance(value, dict):
        return value, Reject(message, "NotAnObject",
                             f"value is a JSON {type(value).__name__}, not an object")
    if value.get("order_id") in (None, ""):
        return value, Reject(message, "MissingOrderId", "value has no order_id")
    return value, None


def _order(message: KafkaMessage, value: dict[str, Any]) -> Order:
    problems = tuple(
        f"{'/'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in sorted(_VALIDATOR.iter_errors(value), key=lambda e: list(e.absolute_path))
    )
    amount = value.get("amount")
    customer = value.get("customer")
    return Order(
        offset=message.offset,
        timestamp_ms=message.timestamp_ms,
        key=key_text(message.key),
        order_id=str(value["order_id"]),
        customer=customer if isinstance(customer, str) else None,
        amount=float(amount) if isinstance(amount, int | float) and not isinstance(amount, bool) else 0.0,
        problems=problems,
    )


def mapping_key(key: str | None, sub_batches: int) -> str:
    """The stable sub-batch of a record key: the same key always lands in the same one."""
    if key is None:
        return NO_KEY
    return f"keys_{zlib.crc32(key.encode()) % sub_batches:02d}"


def group_by_key(orders: Sequence[Order], sub_batches: int) -> dict[str, list[Order]]:
    """Orders grouped by `mapping_key`, in offset order, sub-batches sorted by mapping key."""
    groups: dict[str, list[Order]] = {}
    for order in orders:
        groups.setdefault(mapping_key(order.key, sub_batches), []).append(order)
    return dict(sorted(groups.items()))


@dataclass(frozen=True)
class SubTotal:
    """What one mapped sub-batch contributes to its batch."""

    mapping_key: str
    record_count: int
    amount_total: float
    customers: frozenset[str]
    order_ids: tuple[str, ...]
    nonconforming: tuple[str, ...]

    @classmethod
    def of(cls, mapping_key: str, orders: Sequence[Order]) -> SubTotal:
        return cls(
            mapping_key=mapping_key,
            record_count=len(orders),
            amount_total=round(sum(o.amount for o in orders), 2),
            customers=frozenset(o.customer for o in orders if o.customer),
            order_ids=tuple(o.order_id for o in orders),
            nonconforming=tuple(f"offset {o.offset}: {'; '.join(o.problems)}" for o in orders if o.problems),
        )


def duplicate_order_ids(order_ids: Iterable[str]) -> dict[str, int]:
    """Order ids seen more than once in a batch, with their counts."""
    return {order_id: n for order_id, n in sorted(Counter(order_ids).items()) if n > 1}
