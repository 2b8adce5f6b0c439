"""Medians and percentiles, without numpy."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def best_per_item_s(check: Callable[[Any], object], items: Sequence[Any], passes: int) -> float:
    """Seconds `check` takes per item, the best of `passes` passes over `items`."""
    best = float("inf")
    for _ in range(passes):
        started = time.perf_counter()
        for item in items:
            check(item)
        best = min(best, time.perf_counter() - started)
    return best / len(items)
