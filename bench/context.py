"""What every measurement shares: the mode, the broker, Dagster, the data set's topic."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.config import Mode
from bench.worker import RouteSpec, Worker, routes_toml, unique, worker_env
from service.dev.apache_kafka import ApacheKafka
from service.dev.stack import Dagster, KafkaBroker


@dataclass
class Context:
    mode: Mode
    broker: KafkaBroker
    dagster: Dagster
    workdir: Path
    topic: str = field(default_factory=lambda: unique("bench.orders"))

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap_servers

    @property
    def broker_serves_transactions(self) -> bool:
        """Tansu does not (its InitProducerId fails): the transactions' cost is measured on Apache Kafka only."""
        return isinstance(self.broker, ApacheKafka)

    def routes(self, routes: Sequence[RouteSpec]) -> Path:
        path = self.workdir / f"{unique('routes')}.toml"
        path.write_text(routes_toml(routes))
        return path

    @contextmanager
    def workers(self, count: int, *routes: RouteSpec, **env: str) -> Iterator[list[Worker]]:
        """`count` started workers in one fresh consumer group; stopped whatever happens."""
        routes_path = self.routes(routes)
        group = unique("bench-group")
        started = []
        try:
            for index in range(count):
                worker = Worker(self.workdir, f"{group}-{index}",
                                worker_env(self.bootstrap, self.dagster.graphql_url, routes_path, group, **env))
                started.append(worker)
                worker.start()
            yield started
        finally:
            for worker in started:
                worker.stop()
