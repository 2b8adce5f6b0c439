"""The code location's one `Definitions`."""

from __future__ import annotations

import dagster as dg

from dagster_project.jobs import process_orders_job
from dagster_project.resources import KafkaResource

defs = dg.Definitions(
    jobs=[process_orders_job],
    resources={"kafka": KafkaResource()},
    # One process per run, not one per step: a batch run is small and starts often.
    executor=dg.in_process_executor,
)
