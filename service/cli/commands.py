"""`kafka-dagster worker|dev|check|routes test|status`."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import click
import orjson
from faust.worker import Worker

from service.cli.running import run
from service.contract import DEFAULT_ROUTES_FILE
from service.errors import ConfigurationError, RouteError, TransientError
from service.kafka import check_security
from service.kafka.transactions import use_transactions
from service.logs import logging_config
from service.settings import load_settings
from service.worker import build_worker, tune_gc, tune_threads

if TYPE_CHECKING:
    from service.route_preview import Sample
    from service.routes import RouteTable

DEFAULT_STATUS_URL = "http://127.0.0.1:6066"


@click.command()
def worker() -> None:
    """Run the worker, configured from the environment (see the README)."""
    try:
        settings = load_settings()
        run(check_security(settings.bootstrap_servers, settings.kafka_security))
        transactional = run(use_transactions(settings.transactions, settings.bootstrap_servers,
                                             settings.transactional_id_prefix, settings.kafka_security))
        app = build_worker(settings, transactional=transactional)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    logging.getLogger("httpx").setLevel(logging.WARNING)
    tune_gc()
    tune_threads()
    Worker(app, loglevel=settings.log_level.lower(), quiet=True,
           logging_config=logging_config(settings.log_format, settings.log_level)).execute_from_commandline()


@click.command()
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


@click.command()
def check() -> None:
    """Check each route against the live Dagster: one line per route; exit 1 if any is wrong."""
    from service.check import main as check_routes

    sys.exit(check_routes())


@click.group()
def routes() -> None:
    """Try a routes file before deploying it."""


@routes.command("test")
@click.argument("routes_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--topic", default=None,
              help="The topic of every sample line (default: the file's one topic). Not with --envelope.")
@click.option("--envelope", is_flag=True,
              help='Each line is {"topic", "key", "headers", "value"} (or "raw" text instead of "value"; '
              '"base64" and "key_base64" for bytes).')
def routes_test(routes_file: str, topic: str | None, envelope: bool) -> None:
    """Read sample records from stdin (one per line) and print which routes match each, and why
    a record would be dead-lettered. No broker or Dagster needed."""
    from pathlib import Path

    from service.decoding import JsonBounds
    from service.route_preview import SampleError, samples, verdicts
    from service.routes import load_routes
    from service.settings import Settings
    from service.wire import JSON

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
    binary = topic is not None and any(r.value_format != JSON for r in table.for_topic(topic))
    try:
        found = list(samples(sys.stdin.buffer, topic, envelope, binary))
        if table.framed:
            run(_decode_samples(table, found))
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


@click.command()
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
