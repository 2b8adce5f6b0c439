"""The `kafka-dagster` command line: dev, worker, produce, dlq."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterable, Iterator

import click
import orjson

from service.errors import ConfigurationError

logger = logging.getLogger(__name__)


@click.group()
def main() -> None:
    """Turn Kafka messages into Dagster runs."""


@main.command()
def worker() -> None:
    """Run the worker, configured from the environment (see the README)."""
    from faust.worker import Worker

    from service.settings import load_settings
    from service.worker import build_worker

    try:
        settings = load_settings()
        app = build_worker(settings)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    Worker(app, loglevel=settings.log_level.lower(), quiet=True).execute_from_commandline()


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
    from service.demo import demo_order

    if demo_count is not None:
        values: Iterable[bytes] = (orjson.dumps(demo_order()) for _ in _count(demo_count))
    else:
        values = _json_lines(sys.stdin.buffer)
    sent = asyncio.run(_produce(bootstrap_servers, topic, values, rate, partitions))
    click.echo(f"sent {sent} messages to {topic}", err=True)


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
                   partitions: int) -> int:
    from service.kafka import Producer, ensure_topics

    await ensure_topics(bootstrap_servers, {topic: partitions})
    producer = Producer(bootstrap_servers)
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
    from service.devstack import run_dev

    run_dev(workdir, routes, rate)
