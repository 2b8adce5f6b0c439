"""Demo events: small, realistic order and refund messages for `make run` and the benchmark.

The demo topic carries both kinds, told apart by `type`; the demo routes match
on it (`order.created` -> process_orders, `refund.issued` -> process_refunds).
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

CUSTOMERS = [f"customer-{n:03d}" for n in range(50)]
SKUS = ["sku-apple", "sku-pear", "sku-plum", "sku-fig", "sku-kiwi", "sku-lime"]
ORDER_CREATED = "order.created"
REFUND_ISSUED = "refund.issued"
REFUND_SHARE = 0.1


def demo_order(rng: random.Random | None = None) -> dict[str, Any]:
    """One order event, about 200 bytes of JSON."""
    rng = rng or random.Random()
    return {
        "type": ORDER_CREATED,
        "order_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "customer": rng.choice(CUSTOMERS),
        "sku": rng.choice(SKUS),
        "quantity": rng.randint(1, 5),
        "amount": round(rng.uniform(1, 200), 2),
        "currency": "EUR",
        "created_at": time.time(),
    }


def demo_refund(rng: random.Random | None = None) -> dict[str, Any]:
    """One refund event (schemas/refund.json), about 200 bytes of JSON."""
    rng = rng or random.Random()
    return {
        "type": REFUND_ISSUED,
        "refund_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "order_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "customer": rng.choice(CUSTOMERS),
        "amount": round(rng.uniform(1, 100), 2),
        "currency": "EUR",
        "created_at": time.time(),
    }


def demo_event(rng: random.Random | None = None) -> dict[str, Any]:
    """The demo topic's mixed stream: a refund about one time in ten, else an order."""
    rng = rng or random.Random()
    return demo_refund(rng) if rng.random() < REFUND_SHARE else demo_order(rng)
