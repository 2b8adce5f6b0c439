"""The peer: Kafka into Dagster as users write it, a sensor that polls Kafka on each tick.

A Dagster code location of its own (`dagster code-server start -m bench.sensor_location`),
run by the same daemon as the worker's runs. Each sensor follows the public
Kafka-to-Dagster demos and Dagster's advice (dagster-io/dagster #11857): on
every tick it creates a plain Kafka consumer (confluent-kafka) in its group,
polls up to `max_records` records, yields one `RunRequest` per partition's
slice of them with a deterministic `run_key` (topic, partition, offset range),
commits after yielding, and closes the consumer. The runs are the worker's:
the `process_orders` job, its config the offset range (the job reads the
records back from Kafka), its tags the `kafka/*` tags, so the benchmark counts
both contenders' runs the same way.

Two sensors: `minimum_interval_seconds` at Dagster's default (30 s) and tuned
(5 s). Each reads what to consume from `$BENCH_SENSOR_DIR/<sensor>.json`
(`topic`, `group`, `max_records`) and skips without it, so the benchmark points
a running sensor at a topic by writing a file. Each tick appends what it did to
`<sensor>.events` (JSON lines) for the benchmark's clock; that instrumentation
is the only thing here a user would not write.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import dagster as dg

import dagster_project.definitions as project
from bench.sensor_names import DIR_ENV, SENSORS, TAG_TICK
from dagster_project.jobs import process_orders_job
from service.contract import (
    TAG_BATCH_ID,
    TAG_CONSUMER_GROUP,
    TAG_OFFSET_END,
    TAG_OFFSET_START,
    TAG_PARTITION,
    TAG_RECORD_COUNT,
    TAG_TOPIC,
)

POLL_TIMEOUT_S = 0.5
IDLE_S = 2.0  # an assigned consumer that received nothing this long has nothing to read
TICK_BUDGET_S = 20.0  # well under the daemon's 60 s limit on one sensor evaluation


class Message(Protocol):
    """What the sensor reads of a confluent-kafka `Message`."""

    def error(self) -> Any: ...
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...


@dataclass(frozen=True)
class Slice:
    """One partition's part of a tick's records: one run."""

    topic: str
    partition: int
    offset_start: int
    offset_end: int  # inclusive
    count: int

    @property
    def run_key(self) -> str:
        return run_key(self.topic, self.partition, self.offset_start, self.offset_end)


def run_key(topic: str, partition: int, offset_start: int, offset_end: int) -> str:
    """Deterministic per offset range: a tick that requests the same records again launches nothing."""
    return f"{topic}-{partition}-{offset_start}-{offset_end}"


def slices(positions: Iterable[tuple[str, int, int]]) -> list[Slice]:
    """(topic, partition, offset) of a tick's records -> one slice per topic-partition, in offset order."""
    by_partition: dict[tuple[str, int], list[int]] = {}
    for topic, partition, offset in positions:
        by_partition.setdefault((topic, partition), []).append(offset)
    return [Slice(topic, partition, min(offsets), max(offsets), len(offsets))
            for (topic, partition), offsets in sorted(by_partition.items())]


def run_config(piece: Slice, group: str) -> dict[str, Any]:
    """The offset range in the worker's run config for `process_orders` (records read back from Kafka)."""
    return {"ops": {"read_batch": {"config": {
        "topic": piece.topic, "partition": piece.partition, "offset_start": piece.offset_start,
        "offset_end": piece.offset_end, "record_count": piece.count, "batch_id": f"{group}:{piece.run_key}"}}}}


def run_tags(piece: Slice, group: str, tick: float) -> dict[str, str]:
    return {TAG_TOPIC: piece.topic, TAG_PARTITION: str(piece.partition), TAG_OFFSET_START: str(piece.offset_start),
            TAG_OFFSET_END: str(piece.offset_end), TAG_RECORD_COUNT: str(piece.count),
            TAG_CONSUMER_GROUP: group, TAG_BATCH_ID: f"{group}:{piece.run_key}", TAG_TICK: f"{tick:.3f}"}


def _settings(name: str) -> dict[str, Any] | None:
    folder = os.environ.get(DIR_ENV)
    path = Path(folder) / f"{name}.json" if folder else None
    if path is None or not path.exists():
        return None
    return dict(json.loads(path.read_text()))


def _note(name: str, **event: Any) -> None:
    folder = os.environ.get(DIR_ENV)
    if folder:
        with (Path(folder) / f"{name}.events").open("a") as events:
            events.write(json.dumps({"at": time.time(), **event}) + "\n")


def _poll(consumer: Any, max_records: int) -> list[Message]:
    """Up to `max_records` records: poll until there are that many, or the topic has no more (an empty poll
    after records came, or `IDLE_S` of nothing once the group assigned the consumer its partitions)."""
    messages: list[Message] = []
    deadline = time.monotonic() + TICK_BUDGET_S
    idle_since: float | None = None
    while len(messages) < max_records and time.monotonic() < deadline:
        batch = consumer.consume(num_messages=min(10_000, max_records - len(messages)), timeout=POLL_TIMEOUT_S)
        messages += [message for message in batch if message.error() is None]
        if batch or not consumer.assignment():
            idle_since = None
            continue
        idle_since = idle_since or time.monotonic()
        if messages or time.monotonic() - idle_since >= IDLE_S:
            break
    return messages


def build_sensor(name: str, interval_s: int) -> dg.SensorDefinition:
    @dg.sensor(name=name, job=process_orders_job, minimum_interval_seconds=interval_s,
               default_status=dg.DefaultSensorStatus.RUNNING)
    def kafka_sensor(context: dg.SensorEvaluationContext) -> Iterator[dg.RunRequest | dg.SkipReason]:
        settings = _settings(name)
        if settings is None:
            yield dg.SkipReason("no topic to consume")
            return
        from confluent_kafka import Consumer

        tick = time.time()
        _note(name, tick=tick, event="started")
        consumer = Consumer({"bootstrap.servers": settings["bootstrap"], "group.id": settings["group"],
                             "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        consumer.subscribe([settings["topic"]])
        try:
            messages = _poll(consumer, int(settings["max_records"]))
            pieces = slices((m.topic() or "", m.partition() or 0, m.offset() or 0) for m in messages)
            for piece in pieces:
                yield dg.RunRequest(run_key=piece.run_key, run_config=run_config(piece, settings["group"]),
                                    tags=run_tags(piece, settings["group"], tick))
            if messages:
                consumer.commit(asynchronous=False)
            _note(name, tick=tick, event="committed", records=len(messages), runs=len(pieces))
        finally:
            consumer.close()

    return kafka_sensor


defs = dg.Definitions(
    jobs=[process_orders_job],
    sensors=[build_sensor(name, interval) for name, interval in SENSORS.items()],
    resources=project.defs.resources,
    executor=dg.in_process_executor,
)
