"""What the worker asks Dagster to run for a batch: its tags and its run config, by the names of
`service.contract`; and the launched run read back from those tags."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from service.batching import Batch
from service.contract import (
    CONFIG_BATCH_ID,
    CONFIG_KEY_FORMAT,
    CONFIG_MATCH,
    CONFIG_OFFSET_END,
    CONFIG_OFFSET_START,
    CONFIG_PARTITION,
    CONFIG_RECORD_COUNT,
    CONFIG_RECORDS_JSON,
    CONFIG_TOPIC,
    CONFIG_VALUE_FORMAT,
    INLINE_KEY_SCHEMA_ID,
    INLINE_KEY_SUBJECT,
    INLINE_VALUE_SCHEMA_ID,
    INLINE_VALUE_SUBJECT,
    TAG_BATCH_ID,
    TAG_CONSUMER_GROUP,
    TAG_DAGSTER_PARTITION,
    TAG_OFFSET_END,
    TAG_OFFSET_START,
    TAG_PARTITION,
    TAG_RECORD_COUNT,
    TAG_ROUTE,
    TAG_TOPIC,
)
from service.records import Record
from service.routes import Route
from service.watcher import LaunchedRun
from service.wire import JSON, Decoded


def run_tags(route: Route, batch: Batch, group_id: str) -> dict[str, str]:
    """The contract's tags of the batch's run: where its records sit in Kafka, and who launched it."""
    tags = {
        TAG_TOPIC: batch.topic,
        TAG_PARTITION: str(batch.partition),
        TAG_OFFSET_START: str(batch.offset_start),
        TAG_OFFSET_END: str(batch.offset_end),
        TAG_RECORD_COUNT: str(len(batch.records)),
        TAG_BATCH_ID: batch.batch_id,
        TAG_CONSUMER_GROUP: group_id,
        TAG_ROUTE: route.name,
    }
    if batch.partition_key is not None:
        tags[TAG_DAGSTER_PARTITION] = batch.partition_key
    return tags


def run_config(route: Route, batch: Batch, inline: bool = True,
               batch_ops: Sequence[str] | None = None) -> dict[str, Any]:
    """The batch as `ops.<op>.config` of each of `batch_ops` (default: the route's `batch_op`; for an asset
    target, the selected assets that take it); records inline only below the route's bound (and if `inline`)."""
    config: dict[str, Any] = {
        CONFIG_TOPIC: batch.topic,
        CONFIG_PARTITION: batch.partition,
        CONFIG_OFFSET_START: batch.offset_start,
        CONFIG_OFFSET_END: batch.offset_end,
        CONFIG_RECORD_COUNT: len(batch.records),
        CONFIG_BATCH_ID: batch.batch_id,
    }
    if inline and batch.size <= route.inline_max_bytes:
        config[CONFIG_RECORDS_JSON] = inline_records_json(batch.records)
    if route.match is not None:  # the offset range holds other routes' records too: the run keeps its own
        config[CONFIG_MATCH] = route.match.to_json()
    if route.value_format != JSON:  # read back, the values are decoded as the worker decoded them
        config[CONFIG_VALUE_FORMAT] = route.value_format
    if route.key_format != JSON:  # and the keys likewise
        config[CONFIG_KEY_FORMAT] = route.key_format
    return {"ops": {op: {"config": config} for op in (batch_ops or [route.batch_op])}}


def inline_records_json(records: Sequence[Record]) -> str:
    """The records as the run config's `records_json`: one JSON array of {offset, timestamp_ms, key, value}.

    One string instead of a list of typed records: Dagster validates run config
    field by field in Python, which made a launch with 300 records inline take
    about 45 ms longer (`make bench` measures both: docs/performance.md). A
    framed value (`service.wire`) travels as its decoded JSON, with its writer
    schema's id and subject (`value_schema_id`, `value_subject`); a framed key
    as its decoded text (a string as it is, anything else as its JSON), with
    `key_schema_id` and `key_subject`.
    """
    return orjson.dumps([_inline(r) for r in records]).decode()


def _inline(r: Record) -> dict[str, Any]:
    key = r.match_key
    record: dict[str, Any] = {
        "offset": r.offset,
        "timestamp_ms": r.timestamp_ms or 0,
        "key": key.decode("utf-8", "backslashreplace") if key is not None else None,
    }
    if isinstance(r.decoded_key, Decoded):  # a framed key: its decoded text, and its writer schema
        record[INLINE_KEY_SCHEMA_ID] = r.decoded_key.schema_id
        record[INLINE_KEY_SUBJECT] = r.decoded_key.subject
    decoded = r.decoded
    if isinstance(decoded, Decoded):
        record["value"] = decoded.json.decode()
        record[INLINE_VALUE_SCHEMA_ID] = decoded.schema_id
        record[INLINE_VALUE_SUBJECT] = decoded.subject
    else:
        record["value"] = (r.value or b"").decode("utf-8")
    return record


def launched_run(run_id: str, job: str, tags: dict[str, str]) -> LaunchedRun:
    """The run as the watcher follows it, read from its contract tags."""
    return LaunchedRun(run_id, job, tags[TAG_TOPIC], int(tags[TAG_PARTITION]),
                       int(tags[TAG_OFFSET_START]), int(tags[TAG_OFFSET_END]), tags.get(TAG_ROUTE, ""),
                       tags.get(TAG_BATCH_ID, ""), tags.get(TAG_DAGSTER_PARTITION))
