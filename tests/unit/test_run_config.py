"""run_tags and run_config: the contract's tags, and records inline only below the route's bound."""

from __future__ import annotations

import json

import pytest

from service.batching import Batch, batch_id
from service.delivery import run_config, run_tags
from service.records import Record
from service.routes import Route
from tests.unit.factories import make_record


def route(**kw: object) -> Route:
    return Route("orders", "process_orders", 500, 1_000_000, 5.0, **kw)  # type: ignore[arg-type]


def batch(*records: Record, topic: str = "orders", partition: int = 2) -> Batch:
    return Batch(topic, partition, opened_at=0.0, records=list(records), size=sum(r.size for r in records))


def three() -> Batch:
    return batch(
        make_record(10, partition=2, key=b"k1", value=b'{"a": 1}', timestamp_ms=1_700_000_000_001),
        make_record(11, partition=2, key=None, value='{"b": "ü"}'.encode(), timestamp_ms=None),
        make_record(12, partition=2, key=b"\xff\xfek", value=b"[3]", timestamp_ms=0),
    )


def test_run_tags_are_the_contract_tags() -> None:
    tags = run_tags(route(name="orders-route"), three(), "my-group")
    assert tags == {
        "kafka/topic": "orders",
        "kafka/partition": "2",
        "kafka/offset_start": "10",
        "kafka/offset_end": "12",
        "kafka/record_count": "3",
        "kafka/batch_id": batch_id("orders", 2, 10, 12),
        "kafka/consumer_group": "my-group",
        "kafka/route": "orders-route",
    }
    assert all(isinstance(v, str) for v in tags.values())


def test_run_tags_single_record_batch() -> None:
    tags = run_tags(route(), batch(make_record(7, partition=0), partition=0), "g")
    assert tags["kafka/route"] == "orders"  # a route's name defaults to its topic
    assert (tags["kafka/offset_start"], tags["kafka/offset_end"], tags["kafka/record_count"]) == ("7", "7", "1")


def test_records_inline_below_the_bound() -> None:
    b = three()
    config = run_config(route(batch_op="read_batch"), b)
    assert list(config) == ["ops"]
    assert list(config["ops"]) == ["read_batch"]
    op_config = config["ops"]["read_batch"]["config"]
    assert op_config == {
        "topic": "orders",
        "partition": 2,
        "offset_start": 10,
        "offset_end": 12,
        "record_count": 3,
        "batch_id": b.batch_id,
        "records_json": op_config["records_json"],
    }
    # One string: Dagster checks it as one field, not every field of every record.
    assert json.loads(op_config["records_json"]) == [
        {"offset": 10, "timestamp_ms": 1_700_000_000_001, "key": "k1", "value": '{"a": 1}'},
        {"offset": 11, "timestamp_ms": 0, "key": None, "value": '{"b": "ü"}'},
        {"offset": 12, "timestamp_ms": 0, "key": "\\xff\\xfek", "value": "[3]"},
    ]


def test_records_inline_at_exactly_the_bound() -> None:
    b = three()
    assert "records_json" in run_config(route(inline_max_bytes=b.size), b)["ops"]["read_batch"]["config"]


@pytest.mark.parametrize("bound", [0, 1, 26])
def test_only_the_offset_range_above_the_bound(bound: int) -> None:
    b = three()
    assert b.size == 27
    config = run_config(route(inline_max_bytes=bound, batch_op="consume"), b)["ops"]["consume"]["config"]
    assert config == {
        "topic": "orders", "partition": 2, "offset_start": 10, "offset_end": 12,
        "record_count": 3, "batch_id": b.batch_id,
    }


def test_key_with_invalid_utf8_does_not_crash() -> None:
    b = batch(make_record(0, key=b"\x80\x81", value=b"{}"), make_record(1, key=b"\xc3", value=b"{}"))
    records = json.loads(run_config(route(), b)["ops"]["read_batch"]["config"]["records_json"])
    assert [r["key"] for r in records] == ["\\x80\\x81", "\\xc3"]
