"""`kafka-dagster dev`: the whole embedded stack in one terminal, with demo events."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from service.contract import DEFAULT_DLQ_TOPIC
from service.dev.stack import Broker, Dagster, ManagedProcess, free_port, port_open, running
from service.dev.summary import SummaryPrinter, metrics_fetcher
from service.errors import ConfigurationError
from service.routes import load_routes

DEMO_PARTITIONS = 2


def preferred_port(port: int) -> int:
    """`port` when nothing listens on it, else a free one."""
    return free_port() if port_open(port) else port


def worker_env(bootstrap: str, graphql_url: str, routes: Path, web_port: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        DAGSTER_GRAPHQL_URL=graphql_url,
        KAFKA_DAGSTER_ROUTES=str(routes),
        KAFKA_DAGSTER_WEB_PORT=str(web_port),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def kafka_dagster(*args: str) -> list[str]:
    return [sys.executable, "-m", "service", *args]


def run_dev(workdir: str, routes_file: str, rate: float) -> None:
    work = Path(workdir).resolve()
    routes_path = Path(routes_file).resolve()
    try:
        routes = load_routes(routes_path)
    except ConfigurationError as exc:
        raise SystemExit(f"kafka-dagster dev: {exc}") from None
    broker = Broker(work, port=preferred_port(9092))
    code_location_env = {
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{broker.port}",
        "KAFKA_DAGSTER_ROUTES": str(routes_path),
        "KAFKA_DAGSTER_DLQ_TOPIC": os.environ.get("KAFKA_DAGSTER_DLQ_TOPIC", DEFAULT_DLQ_TOPIC),
    }
    dagster = Dagster(work / "dagster", code_location_env,
                      pg_url=os.environ.get("DAGSTER_PG_URL") or None,
                      webserver_port=preferred_port(3000))
    web_port = preferred_port(6066)
    env = worker_env(broker.bootstrap_servers, dagster.graphql_url, routes_path, web_port)
    worker = ManagedProcess("worker", kafka_dagster("worker"), work / "worker.log", env)
    topics = routes.topics  # a topic_pattern route's topics are the user's to create
    producers = [
        ManagedProcess(f"producer-{topic}", kafka_dagster(
            "produce", "--topic", topic, "--demo", "0", "--rate", str(rate),
            "--partitions", str(DEMO_PARTITIONS)), work / f"producer-{topic}.log", env)
        for topic in topics
    ]
    print(f"Starting the embedded stack in {work} (logs: {work}/*.log) ...", flush=True)
    with running(broker, dagster):
        from service.kafka import ensure_topics

        asyncio.run(ensure_topics(broker.bootstrap_servers, {t: DEMO_PARTITIONS for t in topics}))
        try:
            worker.start()
            for producer in producers:
                producer.start()
            print(_banner(broker, dagster, web_port, topics), flush=True)
            summary = SummaryPrinter(metrics_fetcher(f"http://127.0.0.1:{web_port}/metrics"), sys.stdout,
                                     tty=sys.stdout.isatty())
            _wait_for_interrupt([worker, *producers], summary)
        finally:
            for process in [*producers, worker]:
                process.stop()
    print("Stopped every process.", flush=True)


def _banner(broker: Broker, dagster: Dagster, web_port: int, topics: Iterable[str]) -> str:
    return "\n".join([
        "",
        "kafka-dagster is running:",
        f"  Dagster UI       {dagster.url}/runs",
        f"  Asset lineage    {dagster.url}/asset-groups",
        f"  Worker metrics   http://127.0.0.1:{web_port}/metrics",
        f"  Worker health    http://127.0.0.1:{web_port}/readyz",
        f"  Worker status    kafka-dagster status --url http://127.0.0.1:{web_port}",
        f"  Kafka bootstrap  {broker.bootstrap_servers}",
        f"  Demo topics      {', '.join(topics)}",
        "Runs appear in the Dagster UI within a minute. Press Ctrl-C to stop everything.",
        "",
    ])


def _wait_for_interrupt(processes: list[ManagedProcess], summary: SummaryPrinter) -> None:
    """Print the summary line when due until Ctrl-C (or SIGTERM), or until a process exits."""
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        while not stop:
            for process in processes:
                if not process.alive:
                    summary.finish()
                    print(f"{process.name} exited; see {process.log_path}", file=sys.stderr, flush=True)
                    return
            summary.tick(time.monotonic())
            time.sleep(0.5)
    finally:
        summary.finish()
