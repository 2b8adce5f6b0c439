"""`kafka-dagster produce`: JSON lines from stdin, or demo events, to a topic, at a rate if asked."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import click
import orjson

from service.cli.options import HeaderParam
from service.cli.running import kafka_security, run
from service.contract import DEFAULT_BOOTSTRAP_SERVERS
from service.errors import RouteError, TransientError
from service.kafka import Producer, check_security, ensure_topics
from service.kafka.security import KafkaSecurity
from service.pacing import paced
from service.wire import FORMATS, JSON

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
@click.option("--value-format", type=click.Choice(FORMATS), default=JSON, show_default=True,
              help="Send each value as JSON text, or encoded with --schema in the Confluent wire format.")
@click.option("--schema", "schema_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The value schema, registered under TOPIC-value: an Avro schema (.avsc), a JSON Schema, or "
                   "for protobuf a descriptor set (protoc --include_imports --descriptor_set_out=FILE).")
@click.option("--message", default=None, metavar="FULL.NAME",
              help="protobuf: the message type of the values (default: the first of the set's last file).")
@click.option("--schema-registry-url", envvar="KAFKA_DAGSTER_SCHEMA_REGISTRY_URL", default=None,
              help="The registry's Confluent-compatible API (env KAFKA_DAGSTER_SCHEMA_REGISTRY_URL; basic auth "
                   "and CA from the KAFKA_DAGSTER_SCHEMA_REGISTRY_* environment).")
def produce(topic: str, bootstrap_servers: str, demo_count: int | None, rate: float, partitions: int,
            key_field: str | None, headers: tuple[tuple[str, bytes], ...], value_format: str,
            schema_file: str | None, message: str | None, schema_registry_url: str | None) -> None:
    """Send JSON lines from stdin, or generated demo events, to a topic.

    With --value-format avro, protobuf or json_schema, --schema is registered
    with the schema registry and each value is sent framed with its id.
    With --rate, records go out in small groups as they fall due and their
    acknowledgements are awaited in batches, so pacing costs no throughput.
    """
    security = kafka_security()
    values = _demo_values(demo_count) if demo_count is not None else _json_lines(sys.stdin.buffer)
    if value_format != JSON:
        if schema_file is None:
            raise click.UsageError(f"--value-format {value_format} needs --schema FILE")
        encode = run(_framed_encoder(topic, value_format, schema_file, message, schema_registry_url))
        values = _encoded(values, encode)
    elif schema_file is not None or message is not None:
        raise click.UsageError("--schema and --message go with --value-format avro, protobuf or json_schema")
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


async def _framed_encoder(topic: str, fmt: str, schema_file: str, message: str | None,
                          registry_url: str | None) -> Callable[[Any], bytes]:
    """Register the schema; return what encodes and frames one value (`service.framing`)."""
    from pathlib import Path

    from service.framing import SchemaFileError, framed_encoder, read_schema_file
    from service.registry import SchemaRegistry
    from service.settings import load_registry_settings

    settings = load_registry_settings()
    url = registry_url or settings.url
    if url is None:
        raise click.UsageError(f"--value-format {fmt} needs a schema registry: --schema-registry-url or "
                               "KAFKA_DAGSTER_SCHEMA_REGISTRY_URL")
    path = Path(schema_file)
    registry = SchemaRegistry(dataclasses.replace(settings, url=url))
    try:
        return await framed_encoder(registry, topic, fmt, path, read_schema_file(path), message)
    except SchemaFileError as exc:
        raise click.ClickException(str(exc)) from None
    except (TransientError, RouteError) as exc:
        raise click.ClickException(f"schema registry {url}: {exc}") from None
    finally:
        await registry.aclose()


def _encoded(values: Iterable[tuple[Any, bytes]], encode: Callable[[Any], bytes]) -> Iterator[tuple[Any, bytes]]:
    """`values` with each raw value replaced by its framed encoding; a value that does not fit ends the command."""
    from service.framing import EncodeError

    for number, (value, _) in enumerate(values, 1):
        try:
            yield value, encode(value)
        except EncodeError as exc:
            raise click.ClickException(f"record {number}: {exc}") from None


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
