"""Session fixtures: one real broker (Apache Kafka, or Tansu: `tests.brokers`) and one real Dagster for the
whole run."""

from __future__ import annotations

import functools
import os
import shutil
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.dev.stack import Dagster, KafkaBroker
from tests.brokers import ExternalCluster, new_broker
from tests.support import ROOT, DagsterApi, WorkerProcess, new_web_port, route_toml, unique

os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")

# A second code location beside the demo: a user's own project that imports only the toolkit (docs/byo.md).
BYO_LOCATION = "byo_project"
BYO_MODULE = "tests.fixtures.byo_project.location"


def pytest_configure(config: pytest.Config) -> None:
    _say_where_unclosed_kafka_clients_were_made()


OUR_CODE = tuple(str(ROOT / part) for part in ("service", "tests", "dagster_project", "bench"))


def _say_where_unclosed_kafka_clients_were_made() -> None:
    """An aiokafka client left open fails whichever test runs when it is collected, far from its cause: its
    warning is preceded on stderr by the stack that made it."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    for cls in (AIOKafkaProducer, AIOKafkaConsumer):
        @functools.wraps(cls.__init__)
        def __init__(self: Any, *args: Any, _init: Callable[..., None] = cls.__init__, **kwargs: Any) -> None:
            ours = [f for f in traceback.extract_stack()[:-1] if f.filename.startswith(OUR_CODE)]
            self._made_at = "".join(traceback.format_list(ours))
            _init(self, *args, **kwargs)

        @functools.wraps(cls.__del__)
        def __del__(self: Any, _del: Callable[[Any], None] = cls.__del__) -> None:
            if getattr(self, "_closed", True) is False:
                sys.stderr.write(f"Unclosed {type(self).__name__}, made at:\n{getattr(self, '_made_at', '?')}")
            _del(self)

        cls.__init__, cls.__del__ = __init__, __del__  # type: ignore[method-assign]


MODULE_SECONDS: dict[str, float] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    started = time.monotonic()
    try:
        return (yield)
    finally:
        module = item.nodeid.split("::")[0]
        MODULE_SECONDS[module] = MODULE_SECONDS.get(module, 0.0) + time.monotonic() - started


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Where the suite's time goes, by module (setup and teardown of shared fixtures included)."""
    terminalreporter.section("seconds per module")
    for module, seconds in sorted(MODULE_SECONDS.items(), key=lambda kv: -kv[1])[:25]:
        terminalreporter.write_line(f"{seconds:8.1f}s {module}")


@dataclass
class Stack:
    broker: KafkaBroker | ExternalCluster
    dagster: Dagster
    workdir: Path

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap_servers


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """A broker and a Dagster deployment (code servers of the demo and of the fixture project, webserver,
    daemon), stopped whatever happens."""
    workdir = ROOT / ".test-stack" / unique("session")
    broker = new_broker(workdir)
    dagster = Dagster(workdir / "dagster", {"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                                            "KAFKA_DAGSTER_TEST_FLAKY_DIR": str(workdir / "flaky-starts")},
                      extra_locations={BYO_LOCATION: BYO_MODULE})
    try:
        broker.start()
        dagster.start()
        yield Stack(broker, dagster, workdir)
    finally:
        dagster.stop()
        broker.stop()
    if os.environ.get("KEEP_TEST_STACK") != "1":
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def dagster_api(stack: Stack) -> DagsterApi:
    return DagsterApi(stack.dagster.graphql_url)


WorkerFactory = Callable[..., WorkerProcess]


class Workers:
    """`kafka-dagster worker` processes on one consumer group, logging under `workdir`; `stop` ends them all."""

    def __init__(self, stack: Stack, workdir: Path) -> None:
        self.stack = stack
        self.workdir = workdir
        self.group = unique("group")
        self.started: list[WorkerProcess] = []
        workdir.mkdir(parents=True, exist_ok=True)

    async def start(self, routes: str, wait: bool = True, **env: str) -> WorkerProcess:
        """Start one worker with `routes`; `env` overrides its settings; `wait` for /readyz."""
        index = len(self.started)
        routes_path = self.workdir / f"routes-{index}.toml"
        routes_path.write_text(routes)
        port = new_web_port()
        worker_env = dict(os.environ)
        worker_env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.stack.bootstrap,
            DAGSTER_GRAPHQL_URL=self.stack.dagster.graphql_url,
            KAFKA_DAGSTER_ROUTES=str(routes_path),
            KAFKA_DAGSTER_GROUP_ID=self.group,
            KAFKA_DAGSTER_DLQ_TOPIC=env.pop("KAFKA_DAGSTER_DLQ_TOPIC", unique("dlq")),
            KAFKA_DAGSTER_WEB_PORT=str(port),
            KAFKA_DAGSTER_SESSION_TIMEOUT_S="10",
            KAFKA_DAGSTER_DATA_DIR=str(self.workdir / "faust"),
            PYTHONUNBUFFERED="1",
        )
        worker_env.update(env)
        worker = WorkerProcess(worker_env, self.workdir / f"worker-{index}.log", port)
        self.started.append(worker)
        worker.start()
        if wait:
            await worker.wait_ready()
        return worker

    def stop(self) -> None:
        for worker in self.started:
            worker.stop()


@pytest.fixture
async def start_worker(stack: Stack, tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    """Start `kafka-dagster worker` processes on their own consumer group; stop them after the test."""
    workers = Workers(stack, tmp_path)
    yield workers.start
    workers.stop()


__all__ = ["Stack", "Workers", "route_toml"]
