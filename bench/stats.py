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


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """Every ratio whose two figures the run measured: throughput over the limit and the naive agent, and the
    worker against each sensor (throughput: service over sensor; latency p99: service over sensor)."""
    found: dict[str, float] = {}
    t = results.get("throughput_msgs_per_s", {})
    for name in ("service", "service_schema", "service_routes"):
        for peer in ("limit", "naive"):
            if name in t and peer in t:
                found[f"{name}_over_{peer}"] = ratio(t[name], t[peer])
    created = results.get("event_to_run_created_s", {})
    for sensor, figures in results.get("sensor_throughput", {}).items():
        if "service" in t and figures.get("msgs_per_s"):
            found[f"service_over_{sensor}"] = ratio(t["service"], figures["msgs_per_s"])
        if "service" in created and sensor in created:
            found[f"service_p99_over_{sensor}_p99"] = ratio(created["service"]["p99"], created[sensor]["p99"])
    return found


def best_per_item_s(check: Callable[[Any], object], items: Sequence[Any], passes: int) -> float:
    """Seconds `check` takes per item, the best of `passes` passes over `items`."""
    best = float("inf")
    for _ in range(passes):
        started = time.perf_counter()
        for item in items:
            check(item)
        best = min(best, time.perf_counter() - started)
    return best / len(items)
