"""The `kafka-dagster` command line: dev, worker, produce, dlq."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

from service.errors import ConfigurationError

if TYPE_CHECKING:
    from service.kafka_security import KafkaSecurity

T = TypeVar("T")

logger = logging.getLogger(__name__)


@click.group()
def main() -> None:
    """Turn Kafka messages into Dagster runs."""


@main.command()
def worker() -> None:
    """Run the worker, configured from the environment (see the README)."""
    from faust.worker import Worker

    from service.logs import logging_config
    from service.settings import load_settings
    from service.worker import build_worker, tune_gc

    try:
        settings = load_settings()
        _check_kafka(settings.bootstrap_servers, settings.kafka_security)
        app = build_worker(settings)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    logging.getLogger("httpx").setLevel(logging.WARNING)
    tune_gc()
    Worker(app, loglevel=settings.log_level.lower(), quiet=True,
           logging_config=logging_config(settings.log_format, settings.log_level)).execute_from_commandline()


@main.command()
@click.option("--topic", required=True, help="Topic to produce to.")
@click.option("--bootstrap-servers", envvar="KAFKA_BOOTSTRAP_SERVERS", default="localhost:9092", show_default=True)
@click.option("--demo", "demo_count", type=int, default=None,
              help="Send N generated demo orders instead of reading JSON lines from stdin (0: forever).")
@click.option("--rate", type=float, default=0.0, help="Messages per second (0: as fast as possible).")
@click.option("--partitions", type=int, default=1, show_default=True,
              help="Partitions to create the topic with if it does not exist.")
def produce(topic: str, bootstrap_servers: str, demo_count: int | None, rate: float, partitions: int) -> None:
    """Send JSON lines from stdin, or generated demo events, to a topic."""
    from service.dev.demo import demo_order

    security = _kafka_security(bootstrap_servers)
    if demo_count is not None:
        values: Iterable[bytes] = (orjson.dumps(demo_order()) for _ in _count(demo_count))
    else:
        values = _json_lines(sys.stdin.buffer)
    sent = _run(_produce(bootstrap_servers, topic, values, rate, partitions, security))
    click.echo(f"sent {sent} messages to {topic}", err=True)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on a loop of its own, leaving no loop set (Faust's worker creates its own after)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _check_kafka(bootstrap_servers: str, security: KafkaSecurity) -> None:
    from service.kafka import check_security

    _run(check_security(bootstrap_servers, security))


def _kafka_security(bootstrap_servers: str) -> KafkaSecurity:
    """The KAFKA_SECURITY_PROTOCOL/KAFKA_SASL_*/KAFKA_SSL_* settings, checked against the broker once."""
    from service.settings import load_kafka_security

    try:
        security = load_kafka_security()
        _check_kafka(bootstrap_servers, security)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    return security


def _count(n: int) -> Iterator[int]:
    i = 0
    while n == 0 or i < n:
        yield i
        i += 1


def _json_lines(stream: Iterable[bytes]) -> Iterator[bytes]:
    for number, line in enumerate(stream, 1):
        line = line.strip()
        if not line:
            continue
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise click.ClickException(f"stdin line {number} is not JSON: {exc}") from None
        yield line


async def _produce(bootstrap_servers: str, topic: str, values: Iterable[bytes], rate: float,
                   partitions: int, security: KafkaSecurity) -> int:
    from service.kafka import Producer, ensure_topics

    await ensure_topics(bootstrap_servers, {topic: partitions}, security)
    producer = Producer(bootstrap_servers, security=security)
    sent = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        chunk: list[tuple[bytes | None, bytes | None]] = []
        for value in values:
            chunk.append((None, value))
            sent += 1
            if rate > 0:
                await producer.send_batch(topic, chunk)
                chunk = []
                await asyncio.sleep(max(0.0, started + sent / rate - loop.time()))
            elif len(chunk) >= 1000:
                await producer.send_batch(topic, chunk)
                chunk = []
        if chunk:
            await producer.send_batch(topic, chunk)
    finally:
        await producer.stop()
    return sent


@main.command()
@click.option("--workdir", default=".kafka-dagster", show_default=True, help="Where logs and Dagster state go.")
@click.option("--routes", default="routes.toml", show_default=True)
@click.option("--rate", type=float, default=20.0, show_default=True, help="Demo events per second.")
def dev(workdir: str, routes: str, rate: float) -> None:
    """Run everything locally: broker, Dagster, worker and a demo producer."""
    from service.dev.devstack import run_dev

    run_dev(workdir, routes, rate)


@main.group()
def dlq() -> None:
    """Inspect and replay the dead-letter topic."""


def _dlq_options(command):  # type: ignore[no-untyped-def]
    command = click.option("--bootstrap-servers", envvar="KAFKA_BOOTSTRAP_SERVERS", default="localhost:9092",
                           show_default=True)(command)
    command = click.option("--dlq-topic", envvar="KAFKA_DAGSTER_DLQ_TOPIC", default="kafka-dagster.dlq",
                           show_default=True)(command)
    command = click.option("--stage", type=click.Choice(["decode", "validate", "launch", "run", "process"]),
                           default=None, help="Only dead letters of this stage.")(command)
    command = click.option("--source-topic", default=None, help="Only dead letters from this topic.")(command)
    return command


@dlq.command()
@_dlq_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of text.")
def inspect(bootstrap_servers: str, dlq_topic: str, stage: str | None, source_topic: str | None,
            as_json: bool) -> None:
    """List dead letters with their reasons: DLQ offset, origin, stage, error."""
    from service.dlq import describe, select

    security = _kafka_security(bootstrap_servers)
    letters = select(_run(_read_dead_letters(bootstrap_servers, dlq_topic, security)), stage, source_topic)
    for letter in letters:
        if as_json:
            click.echo(orjson.dumps({"dlq_offset": letter.dlq_offset, **letter.dlq,
                                     "key": (letter.key or b"").decode("utf-8", "backslashreplace"),
                                     "value": (letter.value or b"").decode("utf-8", "backslashreplace")}))
        else:
            click.echo(describe(letter))
    click.echo(f"{len(letters)} dead letters", err=True)


@dlq.command()
@_dlq_options
@click.option("--to", "target_topic", default=None, help="Send to this topic instead of each record's origin.")
@click.option("--rate", type=float, default=100.0, show_default=True, help="Records per second at most.")
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; send nothing.")
def replay(bootstrap_servers: str, dlq_topic: str, stage: str | None, source_topic: str | None,
           target_topic: str | None, rate: float, dry_run: bool) -> None:
    """Send dead letters back to their original topic (or --to), original key, value and headers."""
    from service.dlq import describe, select

    security = _kafka_security(bootstrap_servers)
    letters = select(_run(_read_dead_letters(bootstrap_servers, dlq_topic, security)), stage, source_topic)
    if dry_run:
        for letter in letters:
            click.echo(describe(letter))
    else:
        _run(_replay(bootstrap_servers, letters, target_topic, rate, security))
    click.echo(f"{'would replay' if dry_run else 'replayed'} {len(letters)} dead letters", err=True)


async def _read_dead_letters(bootstrap_servers: str, dlq_topic: str,  # type: ignore[type-arg]
                             security: KafkaSecurity) -> list:
    from service.dlq import DeadLetter
    from service.kafka import read_topic

    return [
        DeadLetter.parse(m.key, m.value, m.timestamp, list(m.headers or ()), offset)  # type: ignore[attr-defined]
        for _, offset, m in await read_topic(bootstrap_servers, dlq_topic, security=security)
    ]


async def _replay(bootstrap_servers: str, letters: list, target_topic: str | None,  # type: ignore[type-arg]
                  rate: float, security: KafkaSecurity) -> None:
    from service.dlq import replay_headers
    from service.kafka import Producer

    producer = Producer(bootstrap_servers, security=security)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        for sent, letter in enumerate(letters, 1):
            await producer.send(target_topic or letter.origin[0], letter.key, letter.value,
                                replay_headers(letter))
            await asyncio.sleep(max(0.0, started + sent / rate - loop.time()))
    finally:
        await producer.stop()
