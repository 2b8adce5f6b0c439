"""The ops of `process_orders` (read a batch, fan it out by key, dead-letter, audit, publish)
and of `process_refunds` (read a batch of refunds and publish it, in one op).

    read_batch ─┬─ batch ──────────────────────────────┬─> dead_letter_rejects ─┐
                ├─ orders ─> split_by_key ─> total_orders.map ─> .collect() ───┤
                └─ rejects ────────────────────────────┴───────────────────────┴─> publish_batch

    read_refunds ─> refund_batches (materialization) + summary

Each op shows one event pattern of today's Dagster: named outputs with
metadata, `Failure` and `RetryRequested`, `DynamicOut` fan-out, an
`AssetObservation`, `AssetCheckEvaluation`s and an `AssetMaterialization`.
Both batch ops take the contract's run config (`KafkaBatch`) and read their
records the same way (`batch_records`), from the toolkit any code location
imports (`dagster_project.toolkit`).
"""

# No `from __future__ import annotations`: Dagster reads op signatures at runtime.
import time
from collections import Counter
from collections.abc import Iterator

import dagster as dg

from dagster_project.assets import REFUND_BATCHES
from dagster_project.checks import ORDER_BATCHES, Audit, outcomes
from dagster_project.orders import (
    NO_KEY,
    BatchInfo,
    Order,
    Reject,
    SubTotal,
    classify,
    duplicate_order_ids,
    group_by_key,
)
from dagster_project.refunds import classify_refunds
from dagster_project.resources import MetricsResource
from dagster_project.toolkit import (
    MAX_RETRIES,
    RETRY_WAIT_S,
    DeadLetterResource,
    KafkaBatch,
    KafkaMessage,
    KafkaResource,
    KafkaUnavailable,
    batch_records,
    coordinates,
    dead_letter,
    records_source,
)
from service.contract import STAGE_PROCESS

MAX_SAMPLES = 10
# The output of `publish_batch` that the `notify_batch_published` hook announces.
BATCH_SUMMARY = "summary"


class SplitConfig(dg.Config):
    """How many sub-batches, at most, a batch fans out into (records are hashed by key)."""

    sub_batches: int = 8


class AuditConfig(dg.Config):
    """The blocking rule: below this share of processable records a batch is not published."""

    completeness_threshold: float = 0.5


def _fail_if_unusable(config: KafkaBatch, received: int, fail_run_offsets: list[int]) -> None:
    if config.record_count > 0 and received == 0:
        raise dg.Failure(
            description=f"batch {config.batch_id} is unusable: none of offsets {config.offset_start}-"
                        f"{config.offset_end} of {config.topic}/{config.partition} are in Kafka any more",
            metadata={**coordinates(config), "records_expected": dg.MetadataValue.int(config.record_count)},
        )
    if fail_run_offsets:
        raise dg.Failure(
            description=f"batch {config.batch_id}: the record at offset {fail_run_offsets[0]} "
                        "asks its run to fail (\"fail_run\": true)",
            metadata={**coordinates(config), "fail_run_offsets": dg.MetadataValue.json(fail_run_offsets)},
        )


@dg.op(
    out={
        "batch": dg.Out(BatchInfo, description="Where the batch comes from and how many records it holds."),
        "orders": dg.Out(list[Order], description="The processable records, as orders."),
        "rejects": dg.Out(list[Reject], description="The records the job cannot process, and why."),
    },
    tags={"kafka-dagster/role": "source"},
)
def read_batch(context: dg.OpExecutionContext, config: KafkaBatch, kafka: KafkaResource) -> Iterator[dg.Output]:
    """Read the batch (from run config, or back from Kafka) and classify its records."""
    started_at = time.time()
    messages = batch_records(context, config, kafka)
    classified = classify(messages)
    _fail_if_unusable(config, len(messages), classified.fail_run_offsets)
    batch = BatchInfo(
        topic=config.topic, partition=config.partition, offset_start=config.offset_start,
        offset_end=config.offset_end, batch_id=config.batch_id, record_count=config.record_count,
        records_received=len(messages), records_source=records_source(config),
        started_at=started_at, oldest_timestamp_ms=min((m.timestamp_ms for m in messages if m.timestamp_ms),
                                                       default=None),
    )
    context.log.info("batch %s: %d records from %s (%s/%d offsets %d-%d), %d unprocessable",
                     batch.batch_id, len(messages), batch.records_source, batch.topic, batch.partition,
                     batch.offset_start, batch.offset_end, len(classified.rejects))
    yield dg.Output(batch, "batch", metadata={
        **coordinates(batch),
        "records_source": dg.MetadataValue.text(batch.records_source),
        "records_expected": dg.MetadataValue.int(batch.record_count),
        "records_received": dg.MetadataValue.int(batch.records_received),
    })
    yield dg.Output(classified.orders, "orders", metadata={
        "order_count": dg.MetadataValue.int(len(classified.orders)),
        "distinct_keys": dg.MetadataValue.int(len({o.key for o in classified.orders})),
    })
    yield dg.Output(classified.rejects, "rejects", metadata={
        "reject_count": dg.MetadataValue.int(len(classified.rejects)),
        "reject_offsets": dg.MetadataValue.json([r.offset for r in classified.rejects][:MAX_SAMPLES]),
        "reject_reasons": dg.MetadataValue.json(dict(Counter(r.error_class for r in classified.rejects))),
    })


@dg.op(out=dg.DynamicOut(list[Order], description="One sub-batch of orders per key group."))
def split_by_key(config: SplitConfig, orders: list[Order]) -> Iterator[dg.DynamicOutput]:
    """Fan the batch out by record key; a key always maps to the same `mapping_key`."""
    for mapping_key, group in group_by_key(orders, config.sub_batches).items():
        yield dg.DynamicOutput(group, mapping_key=mapping_key, metadata={
            "record_count": dg.MetadataValue.int(len(group)),
            "distinct_keys": dg.MetadataValue.int(len({o.key for o in group})),
            "first_offset": dg.MetadataValue.int(group[0].offset),
        })


@dg.op(out=dg.Out(SubTotal, description="What the sub-batch adds to its batch."))
def total_orders(context: dg.OpExecutionContext, orders: list[Order]) -> dg.Output:
    """Total one sub-batch of orders."""
    subtotal = SubTotal.of(context.get_mapping_key() or NO_KEY, orders)
    return dg.Output(subtotal, metadata={
        "record_count": dg.MetadataValue.int(subtotal.record_count),
        "amount_total": dg.MetadataValue.float(subtotal.amount_total),
        "customers": dg.MetadataValue.int(len(subtotal.customers)),
        "nonconforming_count": dg.MetadataValue.int(len(subtotal.nonconforming)),
    })


def _originals(batch: BatchInfo, rejects: list[Reject], kafka: KafkaResource) -> dict[int, KafkaMessage]:
    """The rejected records byte for byte: inline records lost their headers, so read them back."""
    originals = {r.offset: r.message for r in rejects}
    if batch.records_source == "inline":
        for message in kafka.read_range(batch.topic, batch.partition, min(originals), max(originals)):
            if message.offset in originals:
                originals[message.offset] = message
    return originals


@dg.op(out=dg.Out(int, description="How many records went to the DLQ."))
def dead_letter_rejects(context: dg.OpExecutionContext, batch: BatchInfo, rejects: list[Reject],
                        kafka: KafkaResource, dead_letters: DeadLetterResource) -> Iterator:
    """Send the records the job cannot process to the DLQ (stage `process`), and observe how many."""
    if rejects:
        try:
            originals = _originals(batch, rejects, kafka)
            dead_letters.send([
                dead_letter(originals[r.offset], topic=batch.topic, partition=batch.partition,
                            error_class=r.error_class, error_message=r.error_message, run_id=context.run_id)
                for r in rejects
            ])
        except KafkaUnavailable as exc:
            context.log.warning("dead-lettering %d records of batch %s failed: %s",
                                len(rejects), batch.batch_id, exc)
            raise dg.RetryRequested(max_retries=MAX_RETRIES, seconds_to_wait=RETRY_WAIT_S) from exc
        context.log.warning("dead-lettered %d records of batch %s to %s at stage process",
                            len(rejects), batch.batch_id, dead_letters.topic)
        yield dg.AssetObservation(asset_key=ORDER_BATCHES, description="Records dead-lettered while processing",
                                  metadata={
                                      **coordinates(batch),
                                      "dead_letter_count": dg.MetadataValue.int(len(rejects)),
                                      "dlq_topic": dg.MetadataValue.text(dead_letters.topic),
                                      "dlq_stage": dg.MetadataValue.text(STAGE_PROCESS),
                                      "dead_letter_offsets": dg.MetadataValue.json(
                                          [r.offset for r in rejects][:MAX_SAMPLES]),
                                      "error_classes": dg.MetadataValue.json(
                                          dict(Counter(r.error_class for r in rejects))),
                                  })
    yield dg.Output(len(rejects), metadata={"dead_letter_count": dg.MetadataValue.int(len(rejects)),
                                            "dlq_topic": dg.MetadataValue.text(dead_letters.topic)})


def audit(batch: BatchInfo, totals: list[SubTotal], rejects: list[Reject], threshold: float) -> Audit:
    nonconforming = [f"offset {r.offset}: {r.error_message}" for r in rejects]
    nonconforming += [problem for t in totals for problem in t.nonconforming]
    duplicates = duplicate_order_ids(order_id for t in totals for order_id in t.order_ids)
    return Audit(
        expected=batch.record_count,
        received=batch.records_received,
        processable=sum(t.record_count for t in totals),
        threshold=threshold,
        nonconforming_count=len(nonconforming),
        duplicate_count=sum(n - 1 for n in duplicates.values()),
        nonconforming_samples=tuple(sorted(nonconforming)[:MAX_SAMPLES]),
        duplicate_samples=dict(list(duplicates.items())[:MAX_SAMPLES]),
    )


@dg.op(out={BATCH_SUMMARY: dg.Out(dict, is_required=False,
                                   description="The published batch's summary (for notify_batch_published).")})
def publish_batch(context: dg.OpExecutionContext, config: AuditConfig, batch: BatchInfo, totals: list[SubTotal],
                  rejects: list[Reject], dead_letter_count: int, metrics: MetricsResource) -> Iterator:
    """Audit the batch, then publish it as a materialization of `order_batches` (write-audit-publish).

    The checks are yielded first; if a blocking check (`completeness`) fails the
    batch is not materialized and Dagster fails the step.
    """
    facts = audit(batch, totals, rejects, config.completeness_threshold)
    results = outcomes(facts)
    for outcome in results:
        yield outcome.evaluation()
    blocked = [outcome for outcome in results if outcome.blocks_publishing]
    if blocked:
        context.log.error("batch %s not published: %s", batch.batch_id,
                          "; ".join(outcome.description for outcome in blocked))
        return
    processed = sum(t.record_count for t in totals)
    amount = round(sum(t.amount_total for t in totals), 2)
    metadata = {
        "record_count": dg.MetadataValue.int(batch.record_count),
        **coordinates(batch),
        "records_source": dg.MetadataValue.text(batch.records_source),
        **metrics.batch_metadata(record_count=batch.records_received,
                                 processing_time_s=time.time() - batch.started_at,
                                 oldest_timestamp_ms=batch.oldest_timestamp_ms),
        **facts.metadata(),
        "dagster/row_count": dg.MetadataValue.int(processed),
        "amount_total": dg.MetadataValue.float(amount),
        "customers": dg.MetadataValue.int(len(frozenset().union(*(t.customers for t in totals)))),
        "sub_batches": dg.MetadataValue.int(len(totals)),
        "dead_letter_count": dg.MetadataValue.int(dead_letter_count),
    }
    yield dg.AssetMaterialization(asset_key=ORDER_BATCHES, description=f"Batch {batch.batch_id} of {batch.topic}",
                                  metadata=metadata)
    summary = {
        "batch_id": batch.batch_id, "kafka_topic": batch.topic, "kafka_partition": batch.partition,
        "offset_start": batch.offset_start, "offset_end": batch.offset_end,
        "record_count": batch.record_count, "orders_processed": processed,
        "dead_letter_count": dead_letter_count, "amount_total": amount,
    }
    yield dg.Output(summary, BATCH_SUMMARY, metadata={"orders_processed": dg.MetadataValue.int(processed),
                                       "amount_total": dg.MetadataValue.float(amount)})


@dg.op(
    out={BATCH_SUMMARY: dg.Out(dict, description="The refund batch's summary (for notify_batch_published).")},
    tags={"kafka-dagster/role": "source"},
)
def read_refunds(context: dg.OpExecutionContext, config: KafkaBatch, kafka: KafkaResource,
                 metrics: MetricsResource) -> Iterator:
    """Read a batch of refunds (from run config, or back from Kafka) and publish it as `refund_batches`."""
    started_at = time.time()
    messages = batch_records(context, config, kafka)
    _fail_if_unusable(config, len(messages), [])
    found = classify_refunds(messages)
    source = records_source(config)
    if found.unprocessable_offsets:
        context.log.warning("batch %s: %d records are not refunds, at offsets %s", config.batch_id,
                            len(found.unprocessable_offsets), found.unprocessable_offsets[:MAX_SAMPLES])
    metadata = {
        "record_count": dg.MetadataValue.int(config.record_count),
        **coordinates(config),
        "records_source": dg.MetadataValue.text(source),
        "records_received": dg.MetadataValue.int(len(messages)),
        "refunds_processed": dg.MetadataValue.int(len(found.refunds)),
        "unprocessable_count": dg.MetadataValue.int(len(found.unprocessable_offsets)),
        "dagster/row_count": dg.MetadataValue.int(len(found.refunds)),
        "amount_refunded": dg.MetadataValue.float(found.amount_total),
        **metrics.batch_metadata(record_count=len(messages), processing_time_s=time.time() - started_at,
                                 oldest_timestamp_ms=min((m.timestamp_ms for m in messages if m.timestamp_ms),
                                                         default=None)),
    }
    yield dg.AssetMaterialization(asset_key=REFUND_BATCHES, metadata=metadata,
                                  description=f"Refund batch {config.batch_id} of {config.topic}")
    summary = {
        "batch_id": config.batch_id, "kafka_topic": config.topic, "kafka_partition": config.partition,
        "offset_start": config.offset_start, "offset_end": config.offset_end,
        "record_count": config.record_count, "refunds_processed": len(found.refunds),
        "unprocessable_count": len(found.unprocessable_offsets), "amount_refunded": found.amount_total,
    }
    context.log.info("refund batch %s: %d refunds from %s, %.2f refunded", config.batch_id, len(found.refunds),
                     source, found.amount_total)
    yield dg.Output(summary, BATCH_SUMMARY, metadata={"refunds_processed": dg.MetadataValue.int(len(found.refunds)),
                                                      "amount_refunded": dg.MetadataValue.float(found.amount_total)})
