"""Pure refund logic: which records of a batch are refunds, and what they add up to.

No Dagster and no Kafka client here. A refund is a JSON object with a
`refund_id` and a numeric `amount` (schemas/refund.json, which the worker's
route validates with); any other record is counted as unprocessable and named
by offset, not dead-lettered: the worker has already dead-lettered what its
route's schema rejects.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dagster_project.resources import KafkaMessage


@dataclass(frozen=True)
class Refund:
    offset: int
    refund_id: str
    order_id: str | None
    amount: float


@dataclass(frozen=True)
class Refunds:
    """A batch's refunds, and the offsets of the records that are not refunds."""

    refunds: list[Refund] = field(default_factory=list)
    unprocessable_offsets: list[int] = field(default_factory=list)

    @property
    def amount_total(self) -> float:
        return round(sum(r.amount for r in self.refunds), 2)


def classify_refunds(messages: Iterable[KafkaMessage]) -> Refunds:
    """Sort a batch's records into refunds and the offsets of unprocessable records."""
    result = Refunds()
    for message in messages:
        refund = _refund(message)
        if refund is None:
            result.unprocessable_offsets.append(message.offset)
        else:
            result.refunds.append(refund)
    return result


def _refund(message: KafkaMessage) -> Refund | None:
    try:
        value: Any = json.loads(message.value) if message.value is not None else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(value, dict) or value.get("refund_id") in (None, ""):
        return None
    amount = value.get("amount")
    if not isinstance(amount, int | float) or isinstance(amount, bool):
        return None
    order_id = value.get("order_id")
    return Refund(message.offset, str(value["refund_id"]), str(order_id) if order_id is not None else None,
                  float(amount))
