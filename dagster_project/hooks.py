"""Op hooks that publish JSON notifications to Kafka through `NotificationsResource`.

- `notify_batch_published` (success hook) is attached to the op that publishes
  a batch (`publish_batch`, `read_refunds`) only, so a successful run
  announces its batch once, not once per op.
- `notify_op_failure` (failure hook) is attached to the whole job: whichever op
  fails, the notification names it, its error, and the run's Kafka batch tags.
"""

# No `from __future__ import annotations`: Dagster reads decorated signatures at runtime.
from typing import Any

import dagster as dg

from dagster_project.ops import BATCH_SUMMARY
from service.contract import (
    TAG_BATCH_ID,
    TAG_OFFSET_END,
    TAG_OFFSET_START,
    TAG_PARTITION,
    TAG_RECORD_COUNT,
    TAG_TOPIC,
)
from service.dlq import truncate

# The worker's run tags (service/contract.py), under the names batch notifications use.
BATCH_TAGS = {
    TAG_TOPIC: "kafka_topic",
    TAG_PARTITION: "kafka_partition",
    TAG_OFFSET_START: "offset_start",
    TAG_OFFSET_END: "offset_end",
    TAG_RECORD_COUNT: "record_count",
    TAG_BATCH_ID: "batch_id",
}


def batch_fields(tags: dict[str, str]) -> dict[str, Any]:
    """The run's kafka/* tags, under the names and types batch notifications use."""
    fields: dict[str, Any] = {name: tags[tag] for tag, name in BATCH_TAGS.items() if tag in tags}
    for name, value in fields.items():
        if name not in ("kafka_topic", "batch_id") and value.lstrip("-").isdigit():
            fields[name] = int(value)
    return fields


@dg.success_hook(required_resource_keys={"notifications"})
def notify_batch_published(context: dg.HookContext) -> None:
    """Announce a published batch with the summary its op returned."""
    summary = context.op_output_values.get(BATCH_SUMMARY)
    if not isinstance(summary, dict):
        return  # the op produced no summary: the batch was not published
    context.resources.notifications.notify("batch_published", job=context.job_name, run_id=context.run_id,
                                           **summary)


@dg.failure_hook(required_resource_keys={"notifications"})
def notify_op_failure(context: dg.HookContext) -> None:
    """Announce which op of which batch failed, and why."""
    run = context.instance.get_run_by_id(context.run_id)
    error = context.op_exception
    context.resources.notifications.notify(
        "op_failed",
        job=context.job_name,
        run_id=context.run_id,
        op=context.op.name,
        error_class=type(error).__name__ if error is not None else None,
        error_message=truncate(str(error)) if error is not None else None,
        **batch_fields(dict(run.tags) if run is not None else {}),
    )
