"""Ops shared by every batch job: read the batch the service launched, process it."""

# No `from __future__ import annotations`: Dagster reads op signatures at runtime.
import json
import time
from typing import Any

import dagster as dg

from dagster_project.resources import KafkaResource


class KafkaRecord(dg.Config):
    """One Kafka record carried inline in run config; `value` is its JSON text."""

    offset: int
    timestamp_ms: int
    key: str | None = None
    value: str


class KafkaBatch(dg.Config):
    """The batch a run processes: an offset range, and its records when small enough.

    kafka-dagster fills this in as `ops.read_batch.config`. When `records` is
    absent the batch was too large to inline and is read back from Kafka.
    """

    topic: str
    partition: int
    offset_start: int
    offset_end: int
    record_count: int
    batch_id: str
    records: list[KafkaRecord] | None = None


@dg.op(out=dg.Out(dict, description="The batch's coordinates and records."))
def read_batch(context: dg.OpExecutionContext, config: KafkaBatch, kafka: KafkaResource) -> dict[str, Any]:
    """Yield the batch's records, from run config or read back from Kafka."""
    if config.records is not None:
        records = [
            {"offset": r.offset, "timestamp_ms": r.timestamp_ms, "key": r.key, "value": json.loads(r.value)}
            for r in config.records
        ]
        source = "inline"
    else:
        records = kafka.read_range(config.topic, config.partition, config.offset_start, config.offset_end)
        source = "kafka"
    context.log.info(
        "batch %s: %d records from %s (%s/%d offsets %d-%d)",
        config.batch_id, len(records), source, config.topic, config.partition,
        config.offset_start, config.offset_end,
    )
    return {
        "topic": config.topic,
        "partition": config.partition,
        "offset_start": config.offset_start,
        "offset_end": config.offset_end,
        "batch_id": config.batch_id,
        "source": source,
        "records": records,
    }


def batch_metadata(batch: dict[str, Any], started: float) -> dict[str, Any]:
    """The metadata every batch materialization carries."""
    return {
        "record_count": dg.MetadataValue.int(len(batch["records"])),
        "kafka_topic": dg.MetadataValue.text(batch["topic"]),
        "kafka_partition": dg.MetadataValue.int(batch["partition"]),
        "offset_start": dg.MetadataValue.int(batch["offset_start"]),
        "offset_end": dg.MetadataValue.int(batch["offset_end"]),
        "batch_id": dg.MetadataValue.text(batch["batch_id"]),
        "records_source": dg.MetadataValue.text(batch["source"]),
        "processing_time_s": dg.MetadataValue.float(time.monotonic() - started),
    }


@dg.op
def total_orders(context: dg.OpExecutionContext, batch: dict[str, Any]) -> None:
    """Total the batch's orders and record the batch as a materialization of `order_batches`."""
    started = time.monotonic()
    total = sum(float(r["value"].get("amount", 0)) for r in batch["records"] if isinstance(r["value"], dict))
    metadata = batch_metadata(batch, started)
    metadata["amount_total"] = dg.MetadataValue.float(round(total, 2))
    context.log_event(
        dg.AssetMaterialization(
            asset_key="order_batches",
            partition=None,
            description=f"Batch {batch['batch_id']} of {batch['topic']}",
            metadata=metadata,
        )
    )
