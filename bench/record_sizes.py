"""One worker's throughput by record size: the limit and the service contender on data sets of JSON orders
padded to each size, the same byte budget each (so the larger records are fewer), one route. As in the
headline figure, batches close on `max_records` with every record in a full batch: one run per partition
where it fits in the route's `max_bytes` (16 MiB), else as few equal batches per partition as fit (a batch
closed by `max_bytes` would leave a remainder waiting for `max_wait_s`, and time that instead)."""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace
from typing import Any

from bench.context import Context
from bench.data import make_values, produce_fast
from bench.limit import run_limit
from bench.service import run_service
from bench.worker import MAX_BYTES, unique

FILL = 0.8  # a batch's records take at most this share of max_bytes (JSON padding is approximate)


def batch_plan(ctx: Context, value_bytes: int) -> tuple[int, int]:
    """(records, max_records) for records of `value_bytes`: as many as the byte budget holds (at most the
    headline data set's count), cut so that every partition's records fill whole batches within max_bytes."""
    partitions = ctx.mode.partitions
    per_partition = min(ctx.mode.messages, ctx.mode.record_sizes_budget_bytes // value_bytes) // partitions
    batches = max(1, math.ceil(per_partition * value_bytes / (FILL * MAX_BYTES)))
    max_records = per_partition // batches
    return partitions * batches * max_records, max_records


def record_sizes(ctx: Context) -> dict[str, dict[str, Any]]:
    """For each of the mode's record sizes: records, msgs/s and MB/s of the limit and the service, their ratio."""
    found: dict[str, dict[str, Any]] = {}
    for value_bytes in ctx.mode.record_sizes:
        messages, max_records = batch_plan(ctx, value_bytes)
        topic = unique(f"bench.orders-{value_bytes}b")
        values = make_values(messages, value_bytes)
        asyncio.run(produce_fast(ctx.bootstrap, topic, values, ctx.mode.partitions))
        sized = replace(ctx, topic=topic, mode=replace(ctx.mode, messages=messages, value_bytes=value_bytes))
        limit = run_limit(ctx.bootstrap, topic, messages)
        service = run_service(sized, max_records=max_records)
        found[str(value_bytes)] = {
            "messages": messages, "max_records": max_records, "mean_bytes": sum(map(len, values)) / len(values),
            "limit_msgs_per_s": limit,
            "service_msgs_per_s": service.msgs_per_s,
            "service_mb_per_s": service.msgs_per_s * value_bytes / 1e6, "runs": service.runs,
            "service_over_limit": service.msgs_per_s / limit if limit else 0.0}
    return found
