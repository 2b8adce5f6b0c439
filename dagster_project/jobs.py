"""Batch jobs: one per route the sample routes file declares."""

from __future__ import annotations

import dagster as dg

from dagster_project.ops import read_batch, total_orders


@dg.job(name="process_orders", description="Processes a micro-batch of demo orders launched by kafka-dagster.")
def process_orders_job() -> None:
    total_orders(read_batch())
