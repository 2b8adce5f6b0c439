"""Property-based: arbitrary bytes through decode -> validate -> batch -> DLQ record.

Whatever a producer writes, the path either batches a record or turns it into
a dead letter; the only exception it ever raises is a classified
`RecordError`, and the dead letter carries the original bytes back intact.
The real `Delivery` is driven too, with the fake Dagster and sink of
`test_delivery`, to show the same of the code the worker runs.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonschema
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from service.batching import Batch, Batcher, BatchPolicy
from service.decoding import JsonBounds, decode_value
from service.delivery import run_config
from service.dlq import PRE_LAUNCH_STAGES, DeadLetter, Failure, dlq_headers
from service.errors import RecordError
from service.records import Record
from service.routes import Route
from tests.unit.test_delivery import Harness

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SCHEMA = {"type": "object", "required": ["order_id"], "properties": {"order_id": {"type": "string"}}}
BOUNDS = JsonBounds(max_depth=4, max_keys=8)
MAX_MESSAGE_BYTES = 2_000

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)
# Mostly garbage, some JSON (so the bounds and the schema are reached), a few tombstones and giants.
values = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=100).map(str.encode),
    st.none(),
    st.integers(min_value=MAX_MESSAGE_BYTES, max_value=MAX_MESSAGE_BYTES + 50).map(lambda n: b"1" * n),
)
headers = st.lists(st.tuples(st.sampled_from(["h", "dlq.stage", "dlq.topic", "trace"]) | st.text(max_size=10),
                             st.binary(max_size=20)), max_size=3)
records = st.lists(st.tuples(values, st.none() | st.binary(max_size=20), headers), max_size=25)


def _records(raw: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]) -> list[Record]:
    return [Record("orders", 0, offset, 1_700_000_000_000, key, value, hdrs)
            for offset, (value, key, hdrs) in enumerate(raw)]


def _pipeline(batch: list[Record]) -> tuple[list[Batch], list[tuple[Record, list[tuple[str, bytes]]]]]:
    """What `Delivery.on_records` does with each record, without the I/O."""
    validator = jsonschema.Draft202012Validator(SCHEMA)
    batcher = Batcher(BatchPolicy(max_records=5, max_bytes=600, max_wait_s=60.0))
    batches: list[Batch] = []
    letters: list[tuple[Record, list[tuple[str, bytes]]]] = []
    for record in batch:
        try:
            decode_value(record, MAX_MESSAGE_BYTES, validator, BOUNDS)
        except RecordError as exc:
            assert exc.stage in ("decode", "validate")
            split = batcher.split(record.tp)
            batches.extend([split] if split else [])
            letters.append((record, dlq_headers(record, Failure.from_exception(exc.stage, exc))))
            continue
        batches.extend(batcher.add_many([record], 0.0))
    batches.extend(batcher.drain())
    return batches, letters


@PROPERTY_SETTINGS
@given(records)
def test_every_record_ends_in_exactly_one_batch_or_dead_letter(raw: list[Any]) -> None:
    batch_records = _records(raw)
    batches, letters = _pipeline(batch_records)

    in_batches = [r.offset for b in batches for r in b.records]
    in_letters = [r.offset for r, _ in letters]
    assert sorted(in_batches + in_letters) == list(range(len(batch_records)))
    for b in batches:
        offsets = [r.offset for r in b.records]
        assert offsets == list(range(b.offset_start, b.offset_end + 1)), "a batch spans a dead letter"
        config = run_config(Route("orders", "process_orders", 5, 600, 60.0), b)
        assert orjson.loads(orjson.dumps(config))  # run config is plain JSON, whatever the records held
    for record, hdrs in letters:
        letter = DeadLetter.parse(record.key, record.value, record.timestamp_ms, hdrs)
        assert letter.origin == ("orders", 0, record.offset)
        assert letter.stage in PRE_LAUNCH_STAGES
        assert (letter.key, letter.value) == (record.key, record.value)
        assert letter.headers == [(k, v) for k, v in record.headers if not k.startswith("dlq.")]
        assert len(letter.dlq["dlq.error.message"]) <= 1024


@PROPERTY_SETTINGS
@given(values)
def test_decoding_raises_nothing_but_classified_errors(value: bytes | None) -> None:
    record = Record("orders", 0, 0, None, None, value)
    try:
        decode_value(record, MAX_MESSAGE_BYTES, jsonschema.Draft202012Validator(SCHEMA), BOUNDS)
    except RecordError as exc:
        assert exc.stage in ("decode", "validate") and str(exc)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records, st.integers(min_value=1, max_value=10))
def test_the_worker_delivery_path_places_every_record(raw: list[Any], chunk: int) -> None:
    """The real `Delivery` (fake Dagster, fake DLQ sink), fed in fetched chunks: each offset is launched
    once or dead-lettered once, and in the end the committable offset covers them all."""
    launched, dead, committable = asyncio.run(_deliver(_records(raw), chunk))
    assert sorted(launched + dead) == list(range(len(raw)))
    assert committable == len(raw)


async def _deliver(batch: list[Record], chunk: int) -> tuple[list[int], list[int], int]:
    harness = Harness(CollectorRegistry(), delivery={"max_message_bytes": MAX_MESSAGE_BYTES, "json_bounds": BOUNDS},
                      max_records=5, max_bytes=600, schema=SCHEMA)
    try:
        for start in range(0, len(batch), chunk):
            await harness.deliver(*batch[start:start + chunk])
        harness.clock.now += 120
        await harness.delivery.tick()
        assert await harness.settle(5.0)
        launched = [o for start, end in harness.launched() for o in range(start, end + 1)]
        return launched, harness.sink.offsets(), harness.done.get(0, 0)
    finally:
        await harness.close()
