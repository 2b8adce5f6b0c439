"""Demo events: small, realistic order messages for `make run` and the benchmark."""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

CUSTOMERS = [f"customer-{n:03d}" for n in range(50)]
SKUS = ["sku-apple", "sku-pear", "sku-plum", "sku-fig", "sku-kiwi", "sku-lime"]


def demo_order(rng: random.Random | None = None) -> dict[str, Any]:
    """One order event, about 200 bytes of JSON."""
    rng = rng or random.Random()
    return {
        "order_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "customer": rng.choice(CUSTOMERS),
        "sku": rng.choice(SKUS),
        "quantity": rng.randint(1, 5),
        "amount": round(rng.uniform(1, 200), 2),
        "currency": "EUR",
        "created_at": time.time(),
    }
