"""Which broker a test session runs: Apache Kafka (the default) or Tansu.

`KAFKA_DAGSTER_TEST_BROKER=apache|tansu` chooses the session broker that
`tests.conftest.stack` starts (docs/development.md). Tests that start a broker
of their own with options only Tansu's command line has (TLS behind stunnel,
SASL) construct `service.dev.stack.Broker` directly.
"""

from __future__ import annotations

import os
from pathlib import Path

from service.dev.apache_kafka import ApacheKafka
from service.dev.stack import Broker, KafkaBroker

BROKER_ENV = "KAFKA_DAGSTER_TEST_BROKER"
BROKERS = ("apache", "tansu")


def selected_broker() -> str:
    """The broker kind `KAFKA_DAGSTER_TEST_BROKER` names, `apache` when unset."""
    kind = os.environ.get(BROKER_ENV, "apache").strip().lower() or "apache"
    if kind not in BROKERS:
        raise ValueError(f"invalid setting {BROKER_ENV}={kind!r}: expected one of {', '.join(BROKERS)}")
    return kind


def new_broker(workdir: Path, name: str = "broker", kind: str | None = None) -> KafkaBroker:
    """A broker of `kind` (default: the selected one) writing its logs and data under `workdir`."""
    if (kind or selected_broker()) == "tansu":
        return Broker(workdir, name=name)
    return ApacheKafka(workdir, name=name)
