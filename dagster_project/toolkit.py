"""What any Dagster code location needs to receive kafka-dagster batches, and nothing of the demo.

A route launches one run per batch and fills in the contract's run config
(`KafkaBatch`) on its batch op, or on each selected asset that takes it. A
user's asset or op takes `config: KafkaBatch` and a `kafka: KafkaResource`,
reads its records with `batch_records` (inline, or read back from Kafka by
offset range with the worker's TLS/SASL settings, kept to what the route's
`match` selects), and reports where they came from with `provenance`:

    @dg.asset
    def clicks(context: dg.AssetExecutionContext, config: KafkaBatch,
               kafka: KafkaResource) -> dg.MaterializeResult:
        records = batch_records(context, config, kafka)
        return dg.MaterializeResult(metadata=provenance(context, config, records))

    defs = dg.Definitions(assets=[clicks], resources=kafka_resources())

`DeadLetterResource` and `dead_letter` write records a run cannot process to
the worker's DLQ in the one dead-letter format (`service.dlq`). This module
imports no part of the demo pipeline; the demo imports it.
"""

# No `from __future__ import annotations`: Dagster reads config classes at runtime.
import json
from collections.abc import Mapping, Sequence
from typing import Protocol

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.storage.dagster_run import RunRecord

from dagster_project.dead_letters import dead_letter
from dagster_project.resources import DeadLetterResource, KafkaMessage, KafkaResource, KafkaUnavailable, env_or
from dagster_project.selection import selected
from service.contract import (
    DEFAULT_BOOTSTRAP_SERVERS,
    DEFAULT_DLQ_TOPIC,
    TAG_BATCH_ID,
    TAG_DAGSTER_PARTITION,
    TAG_DUPLICATE_OF,
)
from service.kafka.security import ENV as SECURITY_ENV
from service.matching import MatchError
from service.verdicts import RunInfo, stands_down

__all__ = [
    "DeadLetterResource",
    "KafkaBatch",
    "KafkaMessage",
    "KafkaRecord",
    "KafkaResource",
    "KafkaUnavailable",
    "batch_records",
    "dead_letter",
    "inline_messages",
    "inline_records",
    "kafka_resource",
    "kafka_resources",
    "provenance",
    "records_source",
    "stand_down_if_duplicate",
]

MAX_RETRIES = 3
MAX_RUNS_PER_BATCH = 50
RETRY_WAIT_S = 2.0


class KafkaRecord(dg.Config):
    """One Kafka record carried inline in run config; `value` is its JSON text (for a framed value, as the
    worker decoded it, with its writer schema's id and subject), `key` its key as text (for a framed key,
    its decoded value: a string as it is, anything else as its JSON; with `key_schema_id` and `key_subject`)."""

    offset: int
    timestamp_ms: int
    key: str | None = None
    value: str
    value_schema_id: str | None = None
    value_subject: str | None = None
    key_schema_id: str | None = None
    key_subject: str | None = None


class KafkaBatch(dg.Config):
    """The batch a run processes (the contract's run config): an offset range, and its records when small.

    kafka-dagster fills this in as `ops.<batch_op>.config` for an op job, or
    on each selected asset whose config takes it. Small batches carry their
    records inline in `records_json`: one JSON array of `KafkaRecord`s as a
    string (Dagster checks one string, not every field of every record: see
    docs/performance.md). `records`, the same as a list, is accepted too (a
    batch typed in the launchpad). When neither is there the batch was too
    large to inline and is read back from Kafka. The range
    may hold records of the topic that the route does not take: `match` is
    then the route's pattern as JSON, and only the records it matches belong
    to the batch (without it, every record of the range does). `value_format`
    is set when the route reads the Confluent wire format (`avro`, `protobuf`,
    `json_schema`): records read back are decoded as the worker decoded the
    inline ones (`dagster_project.framed`); `key_format` likewise for keys
    (and `match` then reads the decoded key, as the worker's did).
    """

    topic: str
    partition: int
    offset_start: int
    offset_end: int
    record_count: int
    batch_id: str
    records: list[KafkaRecord] | None = None
    records_json: str | None = None
    match: str | None = None
    value_format: str | None = None
    key_format: str | None = None


def inline_messages(records: Sequence[KafkaRecord]) -> list[KafkaMessage]:
    """Inline records as `KafkaMessage`s (inline records carry no headers)."""
    return [
        KafkaMessage(r.offset, r.timestamp_ms, r.key.encode() if r.key is not None else None, r.value.encode(),
                     value_schema_id=r.value_schema_id, value_subject=r.value_subject,
                     key_schema_id=r.key_schema_id, key_subject=r.key_subject)
        for r in records
    ]


def inline_records(config: KafkaBatch) -> list[KafkaMessage] | None:
    """The records that came in run config (`records_json` or `records`); None when they did not."""
    if config.records_json is not None:
        return inline_messages([KafkaRecord(**record) for record in json.loads(config.records_json)])
    if config.records is not None:
        return inline_messages(config.records)
    return None


def records_source(config: KafkaBatch) -> str:
    """"inline" when the records came in run config, "kafka" when they are read back by offset range."""
    return "inline" if config.records_json is not None or config.records is not None else "kafka"


class BatchCoordinates(Protocol):
    """Anything that says where a batch sits in Kafka: `KafkaBatch`, or a pipeline's own record of it."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset_start(self) -> int: ...
    @property
    def offset_end(self) -> int: ...
    @property
    def batch_id(self) -> str: ...


def coordinates(config: BatchCoordinates) -> dict[str, dg.MetadataValue]:
    """Where a batch sits in Kafka, as metadata every event about it can carry."""
    return {
        "batch_id": dg.MetadataValue.text(config.batch_id),
        "kafka_topic": dg.MetadataValue.text(config.topic),
        "kafka_partition": dg.MetadataValue.int(config.partition),
        "offset_start": dg.MetadataValue.int(config.offset_start),
        "offset_end": dg.MetadataValue.int(config.offset_end),
    }


def batch_records(context: dg.OpExecutionContext | dg.AssetExecutionContext, config: KafkaBatch,
                  kafka: KafkaResource) -> list[KafkaMessage]:
    """The batch's records, in offset order: inline ones as they are, or the range read back from Kafka
    and kept to what the route's `match` selects.

    A run whose batch another run already started stands down first
    (`stand_down_if_duplicate`). A broker that cannot be reached asks Dagster
    to retry the step (`RetryRequested`); a `match` that is not a pattern fails it. Read back,
    the batch should hold `record_count` records: a warning says when it does
    not (retention, or a record the worker dead-lettered for the route).
    """
    stand_down_if_duplicate(context, config.batch_id)
    inline = inline_records(config)
    if inline is not None:
        return inline
    try:
        in_range = kafka.read_range(config.topic, config.partition, config.offset_start, config.offset_end)
        if _framed(config.value_format) or _framed(config.key_format):
            in_range = _decoded(config, in_range, kafka)
    except KafkaUnavailable as exc:
        context.log.warning("reading batch %s back from Kafka failed: %s", config.batch_id, exc)
        raise dg.RetryRequested(max_retries=MAX_RETRIES, seconds_to_wait=RETRY_WAIT_S) from exc
    try:
        messages = selected(in_range, config.match)
    except MatchError as exc:
        raise dg.Failure(description=f"batch {config.batch_id}: its match is not a pattern: {exc}",
                         metadata=coordinates(config)) from exc
    if len(messages) != config.record_count:
        context.log.warning("batch %s: record_count is %d, but %d records of offsets %d-%d belong to it "
                            "(%d read back, %s)", config.batch_id, config.record_count, len(messages),
                            config.offset_start, config.offset_end, len(in_range),
                            "kept by the route's match" if config.match is not None else "no match")
    return messages


def _framed(fmt: str | None) -> bool:
    return fmt is not None and fmt != "json"


def _decoded(config: KafkaBatch, messages: list[KafkaMessage], kafka: KafkaResource) -> list[KafkaMessage]:
    from dagster_project import framed  # the registry client, only for routes that need it

    try:
        return framed.decode_messages(messages, config.value_format or "json", kafka.schema_registry(),
                                      config.key_format or "json")
    except framed.RegistryRefusedRun as exc:
        raise dg.Failure(description=f"batch {config.batch_id}: {exc}", metadata=coordinates(config)) from exc


def stand_down_if_duplicate(context: dg.OpExecutionContext | dg.AssetExecutionContext, batch_id: str) -> None:
    """End this run as CANCELED, before it reads a record, if another live run of `batch_id` started first
    (`service.verdicts.stands_down`): a duplicate launch that no worker could cancel in time.

    The run is tagged `kafka/duplicate_of` with the run that has the batch,
    then terminated the way an operator's terminate does it (any run
    launcher), so every worker sees a dead duplicate, never a failed batch.
    """
    instance = context.instance
    records = instance.get_run_records(dg.RunsFilter(tags={TAG_BATCH_ID: batch_id}), limit=MAX_RUNS_PER_BATCH)
    original = stands_down(context.run_id, [_run_info(record) for record in records])
    if original is None:
        return
    message = (f"batch {batch_id} is run {original.run_id}'s, which started first: this run is a duplicate "
               "launch (a launch retried after its answer was lost) and stands down without reading a record")
    context.log.warning(message)
    instance.add_run_tags(context.run_id, {TAG_DUPLICATE_OF: original.run_id})
    if not _terminate(instance, context.run_id):
        instance.report_run_canceling(context.run, message=message)
    raise DagsterExecutionInterruptedError(message)


def _terminate(instance: dg.DagsterInstance, run_id: str) -> bool:
    try:
        return bool(instance.run_launcher.terminate(run_id))
    except Exception:  # a launcher that cannot terminate: the run marks itself canceling
        return False


def _run_info(record: RunRecord) -> RunInfo:
    run = record.dagster_run
    return RunInfo(run_id=run.run_id, status=run.status.value, job=run.job_name, tags=dict(run.tags),
                   creation_time=record.create_timestamp.timestamp(), start_time=record.start_time)


def provenance(context: dg.OpExecutionContext | dg.AssetExecutionContext | None, config: KafkaBatch,
               records: Sequence[KafkaMessage] | None = None) -> dict[str, dg.MetadataValue]:
    """Materialization metadata saying where the batch came from: its Kafka coordinates, `batch_id`,
    `record_count`, `records_source` (inline | kafka), the records received and the oldest record's
    timestamp when `records` are given, and the run's partition key when it has one."""
    metadata: dict[str, dg.MetadataValue] = {
        **coordinates(config),
        "record_count": dg.MetadataValue.int(config.record_count),
        "records_source": dg.MetadataValue.text(records_source(config)),
    }
    if records is not None:
        metadata["records_received"] = dg.MetadataValue.int(len(records))
        oldest = min((r.timestamp_ms for r in records if r.timestamp_ms), default=None)
        if oldest is not None:
            metadata["oldest_timestamp_ms"] = dg.MetadataValue.int(oldest)
    partition_key = _partition_key(context)
    if partition_key is not None:
        metadata["partition_key"] = dg.MetadataValue.text(partition_key)
    return metadata


def _partition_key(context: dg.OpExecutionContext | dg.AssetExecutionContext | None) -> str | None:
    if context is None:
        return None
    tags: Mapping[str, str] = context.run.tags if context.run is not None else {}
    return tags.get(TAG_DAGSTER_PARTITION)


def kafka_resource() -> KafkaResource:
    """A `KafkaResource` configured from the worker's environment variables (`KAFKA_BOOTSTRAP_SERVERS`,
    `KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_*`, `KAFKA_SSL_*`), read when a run starts."""
    return KafkaResource(
        bootstrap_servers=env_or("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP_SERVERS),
        security_protocol=env_or(SECURITY_ENV["protocol"], "PLAINTEXT"),
        sasl_mechanism=env_or(SECURITY_ENV["sasl_mechanism"], "PLAIN"),
        sasl_username=env_or(SECURITY_ENV["sasl_username"], None),
        sasl_password=env_or(SECURITY_ENV["sasl_password"], None),
        ssl_cafile=env_or(SECURITY_ENV["ssl_cafile"], None),
        ssl_certfile=env_or(SECURITY_ENV["ssl_certfile"], None),
        ssl_keyfile=env_or(SECURITY_ENV["ssl_keyfile"], None),
    )


def kafka_resources() -> dict[str, dg.ConfigurableResource]:
    """`{"kafka": ..., "dead_letters": ...}` from the environment: what `Definitions(resources=...)` needs."""
    kafka = kafka_resource()
    return {"kafka": kafka,
            "dead_letters": DeadLetterResource(kafka=kafka,
                                               topic=env_or("KAFKA_DAGSTER_DLQ_TOPIC", DEFAULT_DLQ_TOPIC))}
