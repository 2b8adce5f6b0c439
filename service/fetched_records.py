"""The consumer's fetched records built as the worker's `Record`s, not as aiokafka `ConsumerRecord`s first.

aiokafka turns every record of a fetched batch into a `ConsumerRecord`
(eleven fields, both sizes counted, the deserializers asked), and the worker
then copied each one into its own `Record`: two objects per record, built on
Faust's consumer thread and on the app's loop, both under one GIL. Profiled
on Apache Kafka, building them was the largest part of the worker's own time
per record after the JSON parse. Here the consumer's fetcher builds the
`Record` itself, once.

How: the fetcher stores each partition's fetched batches as a `FetchResult`
in its `_records` dict, whose `PartitionRecords` builds each record with
`_consumer_record(tp, record)`. That dict is swapped for one that gives each
new result's `PartitionRecords` this module's builder. Only this consumer's
fetcher changes (not aiokafka's classes), and only when it has no
deserializers, whose output a `Record` could not carry. Guarded by
tests/unit/test_library_internals.py.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from aiokafka.consumer.fetcher import FetchResult

from service.records import Record


def build_records(consumer: Any) -> None:
    """Make `consumer` (a started `AIOKafkaConsumer` without deserializers) fetch `Record`s."""
    fetcher = consumer._fetcher
    if fetcher._key_deserializer is not None or fetcher._value_deserializer is not None:
        raise ValueError("a consumer with deserializers fetches ConsumerRecords")
    if not isinstance(fetcher._records, _RecordsAsFetched):
        fetcher._records = _RecordsAsFetched(fetcher._records)


class _RecordsAsFetched(OrderedDict[Any, Any]):
    def __setitem__(self, tp: Any, result: Any) -> None:
        if type(result) is FetchResult:
            result._partition_records._consumer_record = _record
        super().__setitem__(tp, result)


def _record(tp: Any, record: Any) -> Record:
    return Record(tp.topic, tp.partition, record.offset, record.timestamp or None, record.key, record.value,
                  tuple(record.headers))
