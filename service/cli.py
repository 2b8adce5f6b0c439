"""The `kafka-dagster` command line: dev, worker, produce, routes test, dlq, status.

Each command runs at most one event loop of its own (`_run`); `worker` then
hands over to Faust's, which it creates itself. Only `dev` and `produce --demo`
import the development tooling (`service.dev`), and only when they run.
Exit codes: 0 done, 1 a runtime failure (one line on stderr, never a
traceback, for a broker or worker that cannot be reached), 2 a usage error.
docs/cli.md is the reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
import random
import re
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson
from aiokafka.structs import ConsumerRecord
from faust.worker import Worker

from service import __version__
from service.contract import DEFAULT_BOOTSTRAP_SERVERS, DEFAULT_DLQ_TOPIC, DEFAULT_ROUTES_FILE, STAGES
from service.dlq import DeadLetter, Selection, describe, identity, replay_headers, replayed_topic, schema_ref
from service.errors import BrokerUnavailable, ConfigurationError, KafkaDagsterError, RouteError, TransientError
from service.kafka import Producer, check_security, ensure_topics, stream_topic
from service.kafka_security import KafkaSecurity
from service.logs import logging_config
from service.outcomes import COMPACTED
from service.settings import load_kafka_security, load_settings
from service.wire import FORMATS, JSON
from service.worker import build_worker, tune_gc

if TYPE_CHECKING:
    from service.route_preview import Sample
    from service.routes import RouteTable

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

logger = logging.getLogger(__name__)

CHUNK = 1000  # records per send_batch when producing unpaced; acks awaited at most this many at a time
PACE_TICK_S = 0.05  # paced sends go out in the records due every tick
DEFAULT_STATUS_URL = "http://127.0.0.1:6066"
_END = object()

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


class SinceParam(click.ParamType):
    """An ISO-8601 time (UTC unless it names its offset) or a duration back from now (`90s`, `15m`,
    `2h`, `1d`, `1h30m`) -> that time as epoch milliseconds."""

    name = "TIME|DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return since_ms(str(value), datetime.now(UTC))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
DURATIONS = re.compile(r"(?:\d+(?:\.\d+)?[smhd])+")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_ms(text: str, now: datetime) -> int:
    """`text` (see `SinceParam`) as epoch milliseconds, `now` being the time durations count back from."""
    text = text.strip()
    compact = text.replace(" ", "")
    if compact and DURATIONS.fullmatch(compact):
        seconds = sum(float(n) * UNIT_S[unit] for n, unit in DURATION.findall(compact))
        return int((now - timedelta(seconds=seconds)).timestamp() * 1000)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO-8601 time (2024-05-01T12:00:00Z) "
                         "nor a duration (90s, 15m, 2h, 1d)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


EPILOG = """\b
Exit codes: 0 done; 1 a runtime failure (a broker or worker that cannot be
reached, a refused setting: one line on stderr); 2 a usage error.

\b
Shell completion (bash; zsh and fish alike with zsh_source, fish_source):
  eval "$(_KAFKA_DAGSTER_COMPLETE=bash_source kafka-dagster)"

Reference: docs/cli.md."""

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT_SETTINGS, epilog=EPILOG)
@click.version_option(__version__, "--version", prog_name="kafka-dagster", message="%(prog)s %(version)s")
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
    security = _kafka_security()
    values = _demo_values(demo_count) if demo_count is not None else _json_lines(sys.stdin.buffer)
    if value_format != JSON:
        if schema_file is None:
            raise click.UsageError(f"--value-format {value_format} needs --schema FILE")
        encode = _run(_framed_encoder(topic, value_format, schema_file, message, schema_registry_url))
        values = _encoded(values, encode)
    elif schema_file is not None or message is not None:
        raise click.UsageError("--schema and --message go with --value-format avro, protobuf or json_schema")
    sent = _run(_produce(bootstrap_servers, topic, _keyed(values, key_field), rate, partitions, security,
                         list(headers)))
    click.echo(f"sent {sent} messages to {topic}", err=True)


@main.command()
@click.option("--workdir", default=".kafka-dagster", show_default=True, help="Where logs and Dagster state go.")
@click.option("--routes", default=DEFAULT_ROUTES_FILE, show_default=True, type=click.Path(dir_okay=False),
              help="The routes file the worker runs with; the demo producer sends to its topics.")
@click.option("--rate", type=click.FloatRange(min=0.0), default=20.0, show_default=True,
              help="Demo events per second.")
def dev(workdir: str, routes: str, rate: float) -> None:
    """Run everything locally: broker, Dagster, worker and a demo producer.

    Prints one summary line every few seconds (consumed, batches, runs,
    dead letters, lag); the processes log to files under --workdir.
    Ctrl-C stops everything.
    """
    from service.dev import DEV_EXTRA_INSTALL, missing_packages  # development tooling: never imported by the worker

    if missing := missing_packages():
        raise click.ClickException(f"kafka-dagster dev needs the dev extra ({', '.join(missing)} not installed): "
                                   f"{DEV_EXTRA_INSTALL}")
    from service.dev.devstack import run_dev

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
    from service.delivery.framed import framed_route
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
    binary = topic is not None and framed_route(table.for_topic(topic)) is not None
    try:
        found = list(samples(sys.stdin.buffer, topic, envelope, binary))
        if table.framed:
            _run(_decode_samples(table, found))
        for sample in found:
            click.echo(f"line {sample.record.offset + 1} ({sample.topic}):")
            for line in verdicts(table, sample, defaults.max_message_bytes, bounds):
                click.echo(f"  {line}")
    except SampleError as exc:
        raise click.ClickException(str(exc)) from None


async def _decode_samples(table: RouteTable, found: list[Sample]) -> None:
    """Decode the framed samples with the schema registry's writer schemas, as the worker does."""
    from service.registry import SchemaRegistry
    from service.route_preview import decode_framed_samples
    from service.routes import check_registry
    from service.settings import load_registry_settings

    settings = load_registry_settings().with_url(table.registry_url)
    check_registry(table, settings.url)
    registry = SchemaRegistry(settings)
    try:
        for sample in found:
            await decode_framed_samples(registry, table, sample)
    except (TransientError, RouteError) as exc:
        raise click.ClickException(f"schema registry {settings.url}: {exc}") from None
    finally:
        await registry.aclose()


@main.group()
def dlq() -> None:
    """Inspect and replay the dead-letter topic."""


def _dlq_options(command: F) -> F:
    command = click.option("--bootstrap-servers", envvar="KAFKA_BOOTSTRAP_SERVERS", default=DEFAULT_BOOTSTRAP_SERVERS,
                           show_default=True, metavar="HOST:PORT[,...]",
                           help="Kafka brokers to connect to (env KAFKA_BOOTSTRAP_SERVERS).")(command)
    command = click.option("--dlq-topic", envvar="KAFKA_DAGSTER_DLQ_TOPIC", default=DEFAULT_DLQ_TOPIC,
                           show_default=True,
                           help="The dead-letter topic the worker writes (env KAFKA_DAGSTER_DLQ_TOPIC).")(command)
    command = click.option("--stage", type=click.Choice(STAGES),
                           default=None, help="Only dead letters of this stage.")(command)
    command = click.option("--source-topic", default=None, help="Only dead letters from this topic.")(command)
    return command


@dlq.command()
@_dlq_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of text.")
@click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N",
              help="Stop after N dead letters (those the filters select).")
@click.option("--follow", "-f", is_flag=True,
              help="Keep reading new dead letters as they are written, until Ctrl-C.")
@click.option("--from-offset", type=click.IntRange(min=0), default=None, metavar="OFFSET",
              help="Start at this DLQ offset (in every partition of the DLQ topic).")
@click.option("--since", "since", type=SinceParam(), default=None,
              help="Only dead letters written (dlq.failed_at) at or after this time: ISO-8601 (UTC unless it "
                   "says) or a duration back from now (90s, 15m, 2h, 1d).")
def inspect(bootstrap_servers: str, dlq_topic: str, stage: str | None, source_topic: str | None,
            as_json: bool, limit: int | None, follow: bool, from_offset: int | None, since: int | None) -> None:
    """List dead letters with their reasons: DLQ offset, origin, stage, error.

    Streams the topic: the first lines appear at once and memory stays flat
    however large it is. Duplicates (one origin and stage written twice) are
    shown once. The count goes to stderr at the end. --since reads from the
    start (or --from-offset), as a dead letter keeps its original timestamp.
    """
    security = _kafka_security()
    shown = _run(_inspect(bootstrap_servers, dlq_topic, Selection(stage, source_topic, since), from_offset, follow,
                          limit, as_json, security), interruptible=follow)
    click.echo(f"{shown} dead letters", err=True)


@dlq.command()
@_dlq_options
@click.option("--to", "target_topic", default=None, help="Send to this topic instead of each record's origin.")
@click.option("--rate", type=click.FloatRange(min=0.0, min_open=True), default=100.0, show_default=True,
              help="Records per second at most (more than 0).")
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; send nothing.")
@click.option("--yes", "-y", is_flag=True, help="Replay without asking for confirmation.")
@click.option("--force", is_flag=True,
              help="Also replay dead letters an earlier replay sent already (recorded in <dlq-topic>.replayed).")
def replay(bootstrap_servers: str, dlq_topic: str, stage: str | None, source_topic: str | None,
           target_topic: str | None, rate: float, dry_run: bool, yes: bool, force: bool) -> None:
    """Send dead letters back to their original topic (or --to), original key, value and headers.

    Each replayed record carries the header kafka-dagster.replay-of
    (<topic>/<partition>/<offset> of the original), and each replayed dead
    letter is recorded in the compacted topic <dlq-topic>.replayed: a later
    replay, from any machine, skips it unless --force.
    """
    security = _kafka_security()
    plan = _run(_plan_replay(bootstrap_servers, dlq_topic, Selection(stage, source_topic), security))
    letters = plan.letters if force else plan.fresh
    if plan.skipped and not force:
        click.echo(f"skipping {len(plan.skipped)} dead letters replayed before (--force replays them again)",
                   err=True)
    if dry_run:
        for letter in letters:
            click.echo(describe(letter))
        click.echo(f"would replay {len(letters)} dead letters", err=True)
        return
    if not letters:
        click.echo("nothing to replay", err=True)
        return
    targets = Counter(target_topic or letter.origin[0] for letter in letters)
    click.echo(f"{len(letters)} dead letters to replay: "
               + ", ".join(f"{count} to {topic}" for topic, count in sorted(targets.items())), err=True)
    if not yes:
        click.confirm("Replay them?", abort=True, err=True)
    sent = _run(_replay(bootstrap_servers, replayed_topic(dlq_topic), letters, target_topic, rate, security))
    click.echo(f"replayed {sent} dead letters", err=True)


@main.command()
@click.option("--url", default=DEFAULT_STATUS_URL, show_default=True,
              help="The worker's web address (its KAFKA_DAGSTER_WEB_PORT).")
@click.option("--json", "as_json", is_flag=True, help="Print the /status document as it is, JSON.")
def status(url: str, as_json: bool) -> None:
    """Show what a running worker is doing, from its /status page: owned partitions, open and queued
    batches, committed and covered offsets, in-flight runs, paused or throttled routes, reconciles."""
    import httpx

    from service.status import render

    address = url.rstrip("/") + "/status"
    try:
        response = httpx.get(address, timeout=10)
        response.raise_for_status()
        document = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise click.ClickException(f"cannot read the worker's status at {address}: {exc or type(exc).__name__}") \
            from None
    click.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() if as_json else render(document))


# -- helpers -------------------------------------------------------------------


def _run(coro: Coroutine[Any, Any, T], interruptible: bool = False) -> T:
    """Run `coro` on a loop of its own, leaving no loop set (Faust's worker creates its own after).

    A `ConfigurationError` (the broker refusing the TLS/SASL settings), or a
    broker that cannot be reached or refuses a request, ends the command with
    one line (exit code 1). With `interruptible`, Ctrl-C cancels `coro`
    (which may end on its own terms) instead of raising in the middle of it.
    """
    loop = asyncio.new_event_loop()
    task = loop.create_task(coro)
    if interruptible:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, task.cancel)
    try:
        return loop.run_until_complete(task)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    except BrokerUnavailable as exc:
        raise click.ClickException(f"Kafka: {exc}; check --bootstrap-servers (KAFKA_BOOTSTRAP_SERVERS) and "
                                   "that the broker runs") from None
    except KafkaDagsterError as exc:
        raise click.ClickException(f"Kafka refused: {exc}") from None
    except asyncio.CancelledError:
        raise click.Abort() from None
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                loop.run_until_complete(task)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _kafka_security() -> KafkaSecurity:
    """The KAFKA_SECURITY_PROTOCOL/KAFKA_SASL_*/KAFKA_SSL_* settings (checked against the broker by the command)."""
    _quiet_kafka_client()
    try:
        return load_kafka_security()
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None


def _quiet_kafka_client() -> None:
    """aiokafka logs every failed connection attempt; a command says what failed in its one line instead."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


async def paced(items: Iterable[T], rate: float, tick_s: float = PACE_TICK_S) -> AsyncIterator[list[T]]:
    """`items` in order, in groups of those due: the n-th is due n / rate seconds after the first.

    A group goes out at most every `tick_s` (every 1 / rate at low rates); a
    caller slower than the pace gets larger groups and catches up, so the rate
    holds on average and per-item waits (an acknowledgement each) do not add up.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    iterator = iter(items)
    head = next(iterator, _END)
    taken = 0
    while head is not _END:
        due = math.floor((loop.time() - started) * rate) + 1
        group: list[T] = []
        while head is not _END and taken < due:
            group.append(head)  # type: ignore[arg-type]
            taken += 1
            head = next(iterator, _END)
        if group:
            yield group
        if head is not _END:
            await asyncio.sleep(max(tick_s, started + taken / rate - loop.time()))


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


def _letter(message: ConsumerRecord[bytes, bytes]) -> DeadLetter:
    return DeadLetter.parse(message.key, message.value, message.timestamp, list(message.headers or ()),
                            message.offset)


async def _inspect(bootstrap_servers: str, dlq_topic: str, selection: Selection, from_offset: int | None,
                   follow: bool, limit: int | None, as_json: bool, security: KafkaSecurity) -> int:
    """Print the selected dead letters as they stream in; how many were printed (Ctrl-C ends --follow)."""
    await check_security(bootstrap_servers, security)
    shown = 0
    try:
        async with contextlib.aclosing(stream_topic(bootstrap_servers, dlq_topic, from_offset, follow,
                                                    security=security)) as messages:
            async for message in messages:
                letter = _letter(message)
                if not selection.takes(letter):
                    continue
                click.echo(_as_json(letter) if as_json else describe(letter))
                shown += 1
                if limit is not None and shown >= limit:
                    break
    except asyncio.CancelledError:
        if not follow:
            raise
    return shown


@dataclass
class ReplayPlan:
    """The selected dead letters, and which of them an earlier replay sent (`<dlq>.replayed`)."""

    letters: list[DeadLetter]
    replayed: set[str]

    @property
    def fresh(self) -> list[DeadLetter]:
        return [letter for letter in self.letters if identity(letter) not in self.replayed]

    @property
    def skipped(self) -> list[DeadLetter]:
        return [letter for letter in self.letters if identity(letter) in self.replayed]


async def _plan_replay(bootstrap_servers: str, dlq_topic: str, selection: Selection,
                       security: KafkaSecurity) -> ReplayPlan:
    await check_security(bootstrap_servers, security)
    letters = []
    async with contextlib.aclosing(stream_topic(bootstrap_servers, dlq_topic, security=security)) as messages:
        async for message in messages:
            letter = _letter(message)
            if selection.takes(letter):
                letters.append(letter)
    replayed = set()
    async with contextlib.aclosing(stream_topic(bootstrap_servers, replayed_topic(dlq_topic),
                                                security=security)) as markers:
        async for marker in markers:
            if marker.key is not None and marker.value is not None:  # a null value would undo it (compaction)
                replayed.add(marker.key.decode("utf-8", "replace"))
    return ReplayPlan(letters, replayed)


async def _replay(bootstrap_servers: str, marker_topic: str, letters: list[DeadLetter], target_topic: str | None,
                  rate: float, security: KafkaSecurity) -> int:
    """Send `letters` back at `rate` per second at most; once each group is acknowledged, record its
    letters as replayed in `marker_topic` (a replay killed midway re-sends at most its last group)."""
    await ensure_topics(bootstrap_servers, {marker_topic: 1}, security, configs=COMPACTED)
    producer = Producer(bootstrap_servers, security=security)
    sent = 0
    try:
        async for group in paced(letters, rate):
            await producer.acknowledged([
                await producer.enqueue(target_topic or letter.origin[0], letter.key, letter.value,
                                       replay_headers(letter))
                for letter in group])
            at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            await producer.acknowledged([
                await producer.enqueue(marker_topic, identity(letter).encode(), orjson.dumps(
                    {"replayed_at": at, "to": target_topic or letter.origin[0], "dlq_offset": letter.dlq_offset}))
                for letter in group])
            sent += len(group)
    finally:
        await producer.stop()
    return sent


def _as_json(letter: DeadLetter) -> bytes:
    schema = schema_ref(letter)
    return orjson.dumps({"dlq_offset": letter.dlq_offset, **letter.dlq, **({"schema": schema} if schema else {}),
                         "key": (letter.key or b"").decode("utf-8", "backslashreplace"),
                         "value": (letter.value or b"").decode("utf-8", "backslashreplace")})
