"""Jobs: `process_orders` and `process_refunds` (the batch jobs routes launch), `aggregate_orders` (by a sensor)."""

from __future__ import annotations

import dagster as dg

from dagster_project.assets import order_totals
from dagster_project.hooks import notify_batch_published, notify_op_failure
from dagster_project.ops import (
    dead_letter_rejects,
    publish_batch,
    read_batch,
    read_refunds,
    split_by_key,
    total_orders,
)


@dg.job(
    name="process_orders",
    description="Processes a micro-batch of orders launched by kafka-dagster: fan-out by key, "
                "dead letters, checks, and a materialization of order_batches.",
    hooks={notify_op_failure},
    # One process per run, not one per step: a batch run is small and starts often.
    executor_def=dg.in_process_executor,
    tags={"kafka-dagster/kind": "batch"},
)
def process_orders_job() -> None:
    batch, orders, rejects = read_batch()
    totals = split_by_key(orders).map(total_orders).collect()
    dead_letter_count = dead_letter_rejects(batch, rejects)
    publish_batch.with_hooks({notify_batch_published})(batch, totals, rejects, dead_letter_count)


@dg.job(
    name="process_refunds",
    description="Processes a micro-batch of refunds launched by kafka-dagster (its route's batch_op is "
                "read_refunds): a materialization of refund_batches with the amount refunded.",
    hooks={notify_op_failure},
    executor_def=dg.in_process_executor,
    tags={"kafka-dagster/kind": "batch"},
)
def process_refunds_job() -> None:
    read_refunds.with_hooks({notify_batch_published})()


aggregate_orders_job = dg.define_asset_job(
    name="aggregate_orders",
    selection=[order_totals],
    description="Adds newly published order batches to the running totals.",
    executor_def=dg.in_process_executor,
)
