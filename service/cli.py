"""The `kafka-dagster` command line: dev, worker, produce, routes test, dlq.

Each command runs at most one event loop of its own (`_run`); `worker` then
hands over to Faust's, which it creates itself. Only `dev` and `produce --demo`
import the development tooling (`service.dev`), and only when they run.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from typing import Any, TypeVar, cast

import click
import orjson
from aiokafka.structs import ConsumerRecord
from faust.worker import Worker

from service.contract import DEFAULT_BOOTSTRAP_SERVERS, DEFAULT_DLQ_TOPIC, DEFAULT_ROUTES_FILE, STAGES
from service.dlq import DeadLetter, describe, replay_headers, select
from service.errors import ConfigurationError
from service.kafka import Producer, check_security, ensure_topics, read_topic
from service.kafka_security import KafkaSecurity
from service.logs import logging_config
from service.settings import load_kafka_security, load_settings
from service.worker import build_worker, tune_gc

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

logger = logging.getLogger(__name__)

CHUNK = 1000  # records per send_batch when producing unpaced

KeyedValue = tuple[bytes | None, bytes]  # a record to send: (key, value)


class HeaderParam(click.ParamType):
    """`NAME=VALUE` -> (NAME, VALUE as UTF-8), a Kafka record header."""

    name = "NAME=VALUE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, bytes]:
        if isinstance(value, tuple):
            return value
        name, equals, text = str(value).partition("=")
        if not equals or not name:
            self.fail(f"{value!r} is not NAME=VALUE", param, ctx)
        return name, text.encode("utf-8")


@click.group()
def main() -> None:
    """Turn Kafka messages into Dagster runs."""


@main.command()
def worker() -> None:
    """Run the worker, configured from the environment (see the README)."""
    try:
        settings = load_settings()
        _run(check_security(settings.bootstrap_servers, settings.kafka_security))
        app = build_worker(settings)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    logging.getLogger("httpx").setLevel(logging.WARNING)
    tune_gc()
    Worker(app, loglevel=settings.log_level.lower(), quiet=True,
           logging_config=logging_config(settings.log_format, settings.log_level)).execute_from_commandline()


@main.command()
@click.option("--topic", required=True, help="Topic to produce to.")
@click.option("--bootstrap-servers", envvar="KAFKA_BOOTSTRAP_SERVERS", default=DEFAULT_BOOTSTRAP_SERVERS,
              show_default=True)
@click.option("--demo", "demo_count", type=int, default=None,
              help="Send N generated demo events (orders and refunds) instead of reading JSON lines from stdin "
                   "(0: forever).")
@click.option("--rate", type=click.FloatRange(min=0.0), default=0.0,
              help="Messages per second (0: as fast as possible).")
@click.option("--partitions", type=int, default=1, show_default=True,
              help="Partitions to create the topic with if it does not exist.")
@click.option("--key-field", metavar="FIELD", default=None,
              help="Key each record with its value's top-level field FIELD as UTF-8 text (a string as is, "
                   "anything else as JSON); a value without it, or with null, gets no key.")
@click.option("--header", "headers", type=HeaderParam(), multiple=True,
              help="Add the header NAME with the UTF-8 text VALUE to every record (repeatable).")
def produce(topic: str, bootstrap_servers: str, demo_count: int | None, rate: float, partitions: int,
            key_field: str | None, headers: tuple[tuple[str, bytes], ...]) -> None:
    """Send JSON lines from stdin, or generated demo events, to a topic."""
    security = _kafka_security()
    values = _demo_values(demo_count) if demo_count is not None else _json_lines(sys.stdin.buffer)
    sent = _run(_produce(bootstrap_servers, topic, _keyed(values, key_field), rate, partitions, security,
                         list(headers)))
    click.echo(f"sent {sent} messages to {topic}", err=True)


@main.command()
@click.option("--workdir", default=".kafka-dagster", show_default=True, help="Where logs and Dagster state go.")
@click.option("--routes", default=DEFAULT_ROUTES_FILE, show_default=True)
@click.option("--rate", type=click.FloatRange(min=0.0), default=20.0, show_default=True,
              help="Demo events per second.")
def dev(workdir: str, routes: str, rate: float) -> None:
    """Run everything locally: broker, Dagster, worker and a demo producer."""
    from service.dev.devstack import run_dev  # development tooling: never imported by the worker

    run_dev(workdir, routes, rate)


@main.command()
def check() -> None:
    """Check each route against the live Dagster: one line per route; exit 1 if any is wrong."""
    from service.check import main as check_routes

    sys.exit(check_routes())


@main.group()
def routes() -> None:
    """Try a routes file before deploying it."""


@routes.command("test")
@click.argument("routes_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--topic", default=None,
              help="The topic of every sample line (default: the file's one topic). Not with --envelope.")
@click.option("--envelope", is_flag=True,
              help='Each line is {"topic", "key", "headers", "value"} (or "raw" text instead of "value").')
def routes_test(routes_file: str, topic: str | None, envelope: bool) -> None:
    """Read sample records from stdin (one per line) and print which routes match each, and why
    a record would be dead-lettered. No broker or Dagster needed."""
    from pathlib import Path

    from service.decoding import JsonBounds
    from service.route_preview import SampleError, samples, verdicts
    from service.routes import load_routes
    from service.settings import Settings

    try:
        table = load_routes(Path(routes_file))
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    if not envelope and topic is None:
        if len(table.topics) != 1:
            raise click.UsageError("the routes file routes several topics (or patterns): give --topic or --envelope")
        topic = table.topics[0]
    defaults = Settings()
    bounds = JsonBounds(defaults.max_json_depth, defaults.max_json_keys)
    try:
        for sample in samples(sys.stdin.buffer, topic, envelope):
            click.echo(f"line {sample.record.offset + 1} ({sample.topic}):")
            for line in verdicts(table, sample, defaults.max_message_bytes, bounds):
                click.echo(f"  {line}")
    except SampleError as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def dlq() -> None:
    """Inspect and replay the dead-letter topic."""


def _dlq_options(command: F) -> F:
    command = click.option("--bootstrap-servers", envvar="KAFKA_BOOTSTRAP_SERVERS", default=DEFAULT_BOOTSTRAP_SERVERS,
                           show_default=True)(command)
    command = click.option("--dlq-topic", envvar="KAFKA_DAGSTER_DLQ_TOPIC", default=DEFAULT_DLQ_TOPIC,
                           show_default=True)(command)
    command = click.option("--stage", type=click.Choice(STAGES),
                           default=None, help="Only dead letters of this stage.")(command)
    command = click.option("--source-topic", default=None, help="Only dead letters from this topic.")(command)
    return command


@dlq.command()
@_dlq_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of text.")
def inspect(bootstrap_servers: str, dlq_topic: str, stage: str | None, source_topic: str | None,
            as_json: bool) -> None:
    """List dead letters with their reasons: DLQ offset, origin, stage, error."""
    security = _kafka_security()
    letters = select(_run(_read_dead_letters(bootstrap_servers, dlq_topic, security)), stage, source_topic)
    for letter in letters:
        click.echo(_as_json(letter) if as_json else describe(letter))
    click.echo(f"{len(letters)} dead letters", err=True)


@dlq.command()
@_dlq_options
@click.option("--to", "target_topic", default=None, help="Send to this topic instead of each record's origin.")
@click.option("--rate", type=click.FloatRange(min=0.0, min_open=True), default=100.0, show_default=True,
              help="Records per second at most.")
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; send nothing.")
def replay(bootstrap_servers: str, dlq_topic: str, stage: str | None, source_topic: str | None,
           target_topic: str | None, rate: float, dry_run: bool) -> None:
    """Send dead letters back to their original topic (or --to), original key, value and headers."""
    security = _kafka_security()
    letters = _run(_replay(bootstrap_servers, dlq_topic, stage, source_topic, target_topic, rate, dry_run,
                           security))
    if dry_run:
        for letter in letters:
            click.echo(describe(letter))
    click.echo(f"{'would replay' if dry_run else 'replayed'} {len(letters)} dead letters", err=True)


# -- helpers -------------------------------------------------------------------


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on a loop of its own, leaving no loop set (Faust's worker creates its own after).

    A `ConfigurationError` (the broker refusing the TLS/SASL settings) ends the
    command with its one line.
    """
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _kafka_security() -> KafkaSecurity:
    """The KAFKA_SECURITY_PROTOCOL/KAFKA_SASL_*/KAFKA_SSL_* settings (checked against the broker by the command)."""
    try:
        return load_kafka_security()
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None


async def paced(items: Iterable[T], rate: float) -> AsyncIterator[T]:
    """`items` at `rate` per second at most: the n-th comes n / rate seconds after the first, or later."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    for n, item in enumerate(items):
        await asyncio.sleep(max(0.0, started + n / rate - loop.time()))
        yield item


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
    sent = 0
    try:
        if rate > 0:
            async for record in paced(records, rate):
                await producer.send_batch(topic, [record], headers=headers)
                sent += 1
        else:
            for chunk in _chunks(records, CHUNK):
                await producer.send_batch(topic, chunk, headers=headers)
                sent += len(chunk)
    finally:
        await producer.stop()
    return sent


async def _read_dead_letters(bootstrap_servers: str, dlq_topic: str, security: KafkaSecurity) -> list[DeadLetter]:
    await check_security(bootstrap_servers, security)
    letters = []
    for _, offset, message in await read_topic(bootstrap_servers, dlq_topic, security=security):
        record = cast(ConsumerRecord[bytes, bytes], message)
        letters.append(DeadLetter.parse(record.key, record.value, record.timestamp, list(record.headers or ()),
                                        offset))
    return letters


async def _replay(bootstrap_servers: str, dlq_topic: str, stage: str | None, source_topic: str | None,
                  target_topic: str | None, rate: float, dry_run: bool,
                  security: KafkaSecurity) -> list[DeadLetter]:
    """The selected dead letters, sent back at `rate` per second at most unless `dry_run`."""
    letters = select(await _read_dead_letters(bootstrap_servers, dlq_topic, security), stage, source_topic)
    if dry_run:
        return letters
    producer = Producer(bootstrap_servers, security=security)
    try:
        async for letter in paced(letters, rate):
            await producer.send(target_topic or letter.origin[0], letter.key, letter.value, replay_headers(letter))
    finally:
        await producer.stop()
    return letters


def _as_json(letter: DeadLetter) -> bytes:
    return orjson.dumps({"dlq_offset": letter.dlq_offset, **letter.dlq,
                         "key": (letter.key or b"").decode("utf-8", "backslashreplace"),
                         "value": (letter.value or b"").decode("utf-8", "backslashreplace")})
