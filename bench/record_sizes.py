"""One worker's throughput by record size: the limit and the service contender on data sets of JSON orders
padded to each size, the same byte budget each (so the larger records are fewer), one route, one run per
partition as in the headline figure (or more where a batch reaches the route's `max_bytes`, 16 MiB)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from bench.context import Context
from bench.data import make_values, produce_fast
from bench.limit import run_limit
from bench.service import run_service
from bench.worker import unique


def records_for(ctx: Context, value_bytes: int) -> int:
    """How many records of `value_bytes` the run's byte budget holds (at most the headline data set's count)."""
    return min(ctx.mode.messages, ctx.mode.record_sizes_budget_bytes // value_bytes)


def record_sizes(ctx: Context) -> dict[str, dict[str, Any]]:
    """For each of the mode's record sizes: records, msgs/s and MB/s of the limit and the service, their ratio."""
    found: dict[str, dict[str, Any]] = {}
    for value_bytes in ctx.mode.record_sizes:
        messages = records_for(ctx, value_bytes)
        topic = unique(f"bench.orders-{value_bytes}b")
        asyncio.run(produce_fast(ctx.bootstrap, topic, make_values(messages, value_bytes), ctx.mode.partitions))
        sized = replace(ctx, topic=topic, mode=replace(ctx.mode, messages=messages, value_bytes=value_bytes))
        limit = run_limit(ctx.bootstrap, topic, messages)
        service = run_service(sized)
        found[str(value_bytes)] = {
            "messages": messages, "limit_msgs_per_s": limit, "service_msgs_per_s": service.msgs_per_s,
            "service_mb_per_s": service.msgs_per_s * value_bytes / 1e6, "runs": service.runs,
            "service_over_limit": service.msgs_per_s / limit if limit else 0.0}
    return found
