"""`kafka-dagster produce`: JSON lines from stdin, or demo events, to a topic, at a rate if asked."""

from __future__ import annotations

import asyncio
import itertools
import random
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import click
import orjson

from service.cli.options import HeaderParam
from service.cli.running import kafka_security, run
from service.contract import DEFAULT_BOOTSTRAP_SERVERS
from service.kafka import Producer, check_security, ensure_topics
from service.kafka_security import KafkaSecurity
from service.pacing import paced

CHUNK = 1000  # records per send_batch when producing unpaced; acks awaited at most this many at a time

KeyedValue = tuple[bytes | None, bytes]  # a record to send: (key, value)


@click.command()
@click.option("--topic", required=True, help="Topic to produce to.")
@click.option("--bootstrap-servers", envvar="KAFKA_BOOTSTRAP_SERVERS", default=DEFAULT_BOOTSTRAP_SERVERS,
              show_default=True, metavar="HOST:PORT[,...]",
              help="Kafka brokers to connect to (env KAFKA_BOOTSTRAP_SERVERS).")
@click.option("--demo", "demo_count", type=click.IntRange(min=0), default=None, metavar="N",
              help="Send N generated demo events (orders and refunds) instead of reading JSON lines from stdin "
                   "(0: forever).")
@click.option("--rate", type=click.FloatRange(min=0.0), default=0.0,
              help="Messages per second (0: as fast as possible).")
@click.option("--partitions", type=click.IntRange(min=1), default=1, show_default=True,
              help="Partitions to create the topic with if it does not exist.")
@click.option("--key-field", metavar="FIELD", default=None,
              help="Key each record with its value's top-level field FIELD as UTF-8 text (a string as is, "
                   "anything else as JSON); a value without it, or with null, gets no key.")
@click.option("--header", "headers", type=HeaderParam(), multiple=True,
              help="Add the header NAME with the UTF-8 text VALUE to every record (repeatable).")
def produce(topic: str, bootstrap_servers: str, demo_count: int | None, rate: float, partitions: int,
            key_field: str | None, headers: tuple[tuple[str, bytes], ...]) -> None:
    """Send JSON lines from stdin, or generated demo events, to a topic.

    With --rate, records go out in small groups as they fall due and their
    acknowledgements are awaited in batches, so pacing costs no throughput.
    """
    security = kafka_security()
    values = _demo_values(demo_count) if demo_count is not None else _json_lines(sys.stdin.buffer)
    sent = run(_produce(bootstrap_servers, topic, _keyed(values, key_field), rate, partitions, security,
                         list(headers)))
    click.echo(f"sent {sent} messages to {topic}", err=True)


def _demo_values(count: int) -> Iterator[tuple[Any, bytes]]:
    """`count` generated demo events (orders, about one refund in ten), each decoded and as JSON (0: forever)."""
    from service.dev.demo import demo_event  # development tooling: never imported by the worker

    rng = random.Random()
    times = itertools.count() if count == 0 else range(count)
    return ((event, orjson.dumps(event)) for event in (demo_event(rng) for _ in times))


def _json_lines(stream: Iterable[bytes]) -> Iterator[tuple[Any, bytes]]:
    """The JSON lines of `stream`, each decoded and as it was written; blank lines are skipped."""
    for number, line in enumerate(stream, 1):
        line = line.strip()
        if not line:
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise click.ClickException(f"stdin line {number} is not JSON: {exc}") from None
        yield value, line


def _keyed(values: Iterable[tuple[Any, bytes]], key_field: str | None) -> Iterator[KeyedValue]:
    """(key, value) records: the key is `key_field` of the decoded value (`record_key`), or None."""
    for value, raw in values:
        yield (record_key(value, key_field) if key_field is not None else None), raw


def record_key(value: Any, field: str) -> bytes | None:
    """The top-level `field` of `value` as UTF-8 text: a string as is, anything else as compact JSON.

    None when `value` is not an object, has no `field`, or has it null.
    """
    found = value.get(field) if isinstance(value, dict) else None
    if found is None:
        return None
    return found.encode("utf-8") if isinstance(found, str) else orjson.dumps(found)


def _chunks(records: Iterable[KeyedValue], size: int) -> Iterator[list[KeyedValue]]:
    """`records`, `size` at a time."""
    iterator = iter(records)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


async def _produce(bootstrap_servers: str, topic: str, records: Iterable[KeyedValue], rate: float,
                   partitions: int, security: KafkaSecurity, headers: list[tuple[str, bytes]] | None = None) -> int:
    """Send `records`, each with `headers`, at `rate` per second (0: in chunks, as fast as possible)."""
    await check_security(bootstrap_servers, security)
    await ensure_topics(bootstrap_servers, {topic: partitions}, security)
    producer = Producer(bootstrap_servers, security=security)
    try:
        if rate > 0:
            return await send_paced(producer, topic, records, rate, headers)
        sent = 0
        for chunk in _chunks(records, CHUNK):
            await producer.send_batch(topic, chunk, headers=headers)
            sent += len(chunk)
        return sent
    finally:
        await producer.stop()


async def send_paced(producer: Producer, topic: str, records: Iterable[KeyedValue], rate: float,
                     headers: list[tuple[str, bytes]] | None = None) -> int:
    """Send `records` at `rate` per second without waiting for each acknowledgement: acks are
    awaited once `CHUNK` are outstanding, and all of them before returning."""
    acks: list[asyncio.Future[object]] = []
    sent = 0
    async for group in paced(records, rate):
        for key, value in group:
            acks.append(await producer.enqueue(topic, key, value, headers))
        sent += len(group)
        if len(acks) >= CHUNK:
            await producer.acknowledged(acks)
            acks = []
    await producer.acknowledged(acks)
    return sent
