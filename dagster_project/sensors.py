"""Sensors: launch the aggregation per published batch, announce failed runs, observe topics.

All three run in the daemon (`default_status=RUNNING`) and are cheap: the
observer and the failure notifier never launch a run.
"""

# No `from __future__ import annotations`: Dagster reads decorated signatures at runtime.
import json
from collections.abc import Sequence

import dagster as dg

from dagster_project.assets import topic_key, topic_metadata
from dagster_project.checks import ORDER_BATCHES
from dagster_project.hooks import batch_fields
from dagster_project.jobs import aggregate_orders_job, process_orders_job, process_refunds_job
from dagster_project.resources import KafkaResource, KafkaUnavailable, NotificationsResource
from service.dlq import truncate

SENSOR_INTERVAL_S = 5
# Aggregating at most twice a minute keeps run slots for the batches themselves.
AGGREGATION_INTERVAL_S = 30
OBSERVER_INTERVAL_S = 30
THROUGH_TAG = "kafka-dagster/through_storage_id"
TRIGGER_RUN_TAG = "kafka-dagster/trigger_run_id"


@dg.asset_sensor(
    asset_key=ORDER_BATCHES,
    job=aggregate_orders_job,
    name="order_batches_sensor",
    minimum_interval_seconds=AGGREGATION_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches aggregate_orders when new order_batches materializations arrive.",
)
def order_batches_sensor(context: dg.SensorEvaluationContext,
                         asset_event: dg.EventLogEntry) -> dg.RunRequest | dg.SkipReason:
    """One aggregation run per cursor advance, through the newest batch; `run_key` makes it once.

    The asset sensor hands over the newest materialization's log entry and then
    moves its cursor to it; the aggregation needs that event's storage id, so it
    is looked up with the same query (a newer event found here only means this
    tick aggregates further, and the next tick's request has the same run key).
    """
    after = int(context.cursor) if context.cursor and context.cursor.isdigit() else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=ORDER_BATCHES, after_storage_id=after), limit=1, ascending=False,
    ).records
    if not records:
        return dg.SkipReason("no new order_batches materialization")
    storage_id = records[0].storage_id
    return dg.RunRequest(
        run_key=f"order_batches:{storage_id}",
        run_config={"ops": {"order_totals": {"config": {"through_storage_id": storage_id}}}},
        tags={THROUGH_TAG: str(storage_id), TRIGGER_RUN_TAG: records[0].run_id or asset_event.run_id},
    )


@dg.run_failure_sensor(
    name="notify_run_failure",
    monitored_jobs=[process_orders_job, process_refunds_job, aggregate_orders_job],
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Publishes a run_failed notification for every failed batch or aggregation run.",
)
def notify_run_failure(context: dg.RunFailureSensorContext, notifications: NotificationsResource) -> None:
    run = context.dagster_run
    notifications.notify(
        "run_failed",
        job=run.job_name,
        run_id=run.run_id,
        error_message=truncate(context.failure_event.message or ""),
        failed_steps=[event.step_key for event in context.get_step_failure_events()],
        **batch_fields(dict(run.tags)),
    )


def build_kafka_topic_observer(topics: Sequence[str]) -> dg.SensorDefinition:
    """A sensor that reports the topics' end offsets as observations, without launching a run."""

    @dg.sensor(
        name="kafka_topic_observer",
        minimum_interval_seconds=OBSERVER_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Reports an AssetObservation of each routed Kafka topic when its end offsets move.",
    )
    def kafka_topic_observer(context: dg.SensorEvaluationContext, kafka: KafkaResource) -> dg.SensorResult:
        try:
            offsets = kafka.end_offsets(topics)
        except KafkaUnavailable as exc:
            context.log.warning("cannot observe Kafka topics: %s", exc)
            return dg.SensorResult(skip_reason=f"Kafka unavailable: {exc}")
        cursor = json.dumps({t: {str(p): o for p, o in parts.items()} for t, parts in offsets.items()},
                            sort_keys=True)
        if cursor == context.cursor:
            return dg.SensorResult(skip_reason="end offsets unchanged")
        return dg.SensorResult(
            asset_events=[
                dg.AssetObservation(asset_key=topic_key(topic), metadata=topic_metadata(parts))
                for topic, parts in sorted(offsets.items())
            ],
            cursor=cursor,
        )

    return kafka_topic_observer
