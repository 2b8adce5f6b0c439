"""The consumer's fetcher builds the worker's `Record`s straight from the fetched batches."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiokafka.consumer.fetcher import READ_UNCOMMITTED, FetchError, FetchResult, PartitionRecords
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from service.fetched_records import build_records
from service.records import Record

TP0 = TopicPartition("orders", 3)


def _batch() -> MemoryRecords:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0, producer_id=-1,
                                       producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    builder.append(0, timestamp=1_700_000_000_000, key=None, value=b'{"n":0}', headers=[])
    builder.append(1, timestamp=1_700_000_000_001, key=b"k1", value=None, headers=[("trace", b"t-1")])
    return MemoryRecords(bytes(builder.build()))


def _fetcher(**deserializers: object) -> SimpleNamespace:
    return SimpleNamespace(_key_deserializer=deserializers.get("key"),
                           _value_deserializer=deserializers.get("value"), _records={})


def test_a_fetched_batch_becomes_records_with_every_field_kept() -> None:
    consumer = SimpleNamespace(_fetcher=_fetcher())
    build_records(consumer)
    batch = PartitionRecords(TP0, _batch(), None, 0, None, None, True, READ_UNCOMMITTED)
    consumer._fetcher._records[TP0] = FetchResult(TP0, assignment=None, partition_records=batch, backoff=0)

    assert list(batch) == [
        Record("orders", 3, 0, 1_700_000_000_000, None, b'{"n":0}', ()),
        Record("orders", 3, 1, 1_700_000_000_001, b"k1", None, (("trace", b"t-1"),)),
    ]
    assert batch.next_fetch_offset == 2  # aiokafka's own bookkeeping goes on as before


def test_errors_stored_for_a_partition_stay_errors() -> None:
    consumer = SimpleNamespace(_fetcher=_fetcher())
    build_records(consumer)
    error = FetchError(error=RuntimeError("offset out of range"), backoff=0)
    consumer._fetcher._records[TP0] = error
    assert consumer._fetcher._records[TP0] is error


def test_building_twice_keeps_what_was_fetched() -> None:
    consumer = SimpleNamespace(_fetcher=_fetcher())
    consumer._fetcher._records[TP0] = "already fetched"
    build_records(consumer)
    records = consumer._fetcher._records
    build_records(consumer)
    assert consumer._fetcher._records is records
    assert records[TP0] == "already fetched"


def test_a_consumer_with_deserializers_is_refused() -> None:
    with pytest.raises(ValueError, match="deserializers"):
        build_records(SimpleNamespace(_fetcher=_fetcher(value=bytes.decode)))
