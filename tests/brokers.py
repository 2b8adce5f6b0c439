"""Which broker a test session runs: Apache Kafka (the default), Tansu, or a cluster of your own.

`KAFKA_DAGSTER_TEST_BROKER=apache|tansu|external` chooses the session broker
that `tests.conftest.stack` starts (docs/development.md); `external` starts
none and uses the cluster at `KAFKA_DAGSTER_TEST_BOOTSTRAP`. Tests that need a broker
configured their own way (TLS and SASL listeners, Kafka 4.x) start an
`service.dev.apache_kafka.ApacheKafka` of their own.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from service.dev.apache_kafka import ApacheKafka
from service.dev.stack import Broker, KafkaBroker, wait_until
from service.errors import TransientError
from service.kafka import existing_topics

BROKER_ENV = "KAFKA_DAGSTER_TEST_BROKER"
BOOTSTRAP_ENV = "KAFKA_DAGSTER_TEST_BOOTSTRAP"
BROKERS = ("apache", "tansu", "external")


def selected_broker() -> str:
    """The broker kind `KAFKA_DAGSTER_TEST_BROKER` names, `apache` when unset."""
    kind = os.environ.get(BROKER_ENV, "apache").strip().lower() or "apache"
    if kind not in BROKERS:
        raise ValueError(f"invalid setting {BROKER_ENV}={kind!r}: expected one of {', '.join(BROKERS)}")
    return kind


class ExternalCluster:
    """A cluster of your own, reached at `bootstrap_servers` (PLAINTEXT): nobody here starts or stops it."""

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers

    def start(self, timeout_s: float = 60.0) -> None:
        """Return once the cluster answers a metadata request."""
        wait_until(self._answers, timeout_s, f"the Kafka cluster at {self.bootstrap_servers} ({BOOTSTRAP_ENV})")

    def _answers(self) -> bool:
        try:
            asyncio.run(existing_topics(self.bootstrap_servers))
        except TransientError:
            return False
        return True

    def stop(self) -> None:
        return None


def new_broker(workdir: Path, name: str = "broker", kind: str | None = None) -> KafkaBroker | ExternalCluster:
    """A broker of `kind` (default: the selected one) writing its logs and data under `workdir`."""
    kind = kind or selected_broker()
    if kind == "external":
        bootstrap = os.environ.get(BOOTSTRAP_ENV, "").strip()
        if not bootstrap:
            raise ValueError(f"{BROKER_ENV}=external needs {BOOTSTRAP_ENV}=host:port of your cluster")
        return ExternalCluster(bootstrap)
    if kind == "tansu":
        return Broker(workdir, name=name)
    return ApacheKafka(workdir, name=name)
