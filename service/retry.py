"""Exponential backoff with jitter, for transient failures."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Backoff:
    """Delays of base * 2**n, capped at `max_delay_s`, each scaled by a random 50-100%."""

    base_s: float = 0.25
    max_delay_s: float = 30.0
    attempts: int = 0

    def next_delay(self) -> float:
        delay = min(self.max_delay_s, self.base_s * 2 ** min(self.attempts, 32))
        self.attempts += 1
        return delay * random.uniform(0.5, 1.0)
