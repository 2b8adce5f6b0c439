"""The code location's one `Definitions`."""

from __future__ import annotations

import dagster as dg

from dagster_project.assets import (
    build_kafka_topics,
    order_batches_spec,
    order_totals,
    refund_batches_spec,
    source_topics,
)
from dagster_project.checks import order_batch_checks
from dagster_project.jobs import aggregate_orders_job, process_orders_job, process_refunds_job
from dagster_project.resources import DEFAULT_NOTIFICATIONS_TOPIC, MetricsResource, NotificationsResource, env_or
from dagster_project.sensors import build_kafka_topic_observer, notify_run_failure, order_batches_sensor
from dagster_project.toolkit import kafka_resources


def build_definitions(topics: list[str]) -> dg.Definitions:
    """Everything the code location serves, with resources read from the environment at run time.

    Without `topics` (only `topic_pattern` routes) there are no Kafka topic assets to observe.
    """
    resources = kafka_resources()  # the toolkit's: any code location configures Kafka the same way
    kafka = resources["kafka"]
    kafka_topics = [build_kafka_topics(topics)] if topics else []
    observers = [build_kafka_topic_observer(topics)] if topics else []
    return dg.Definitions(
        assets=[*kafka_topics, order_batches_spec(topics), refund_batches_spec(topics), order_totals],
        asset_checks=[order_batch_checks],
        jobs=[process_orders_job, process_refunds_job, aggregate_orders_job],
        sensors=[order_batches_sensor, notify_run_failure, *observers],
        resources={
            **resources,
            "notifications": NotificationsResource(
                kafka=kafka, topic=env_or("KAFKA_DAGSTER_NOTIFICATIONS_TOPIC", DEFAULT_NOTIFICATIONS_TOPIC)),
            "metrics": MetricsResource(),
        },
        # One process per run, not one per step: a batch run is small and starts often.
        executor=dg.in_process_executor,
    )


defs = build_definitions(source_topics())
