"""Liveness, readiness and consumer lag: what /healthz, /readyz and the lag gauge report."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from service.dagster import DagsterClient
from service.kafka import tcp_reachable
from service.metrics import Metrics
from service.records import TP

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
STALL_AFTER_S = 10.0


class Heartbeat:
    """A task that ticks every second; a stale tick means the event loop is blocked or starved."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.max_lag_s = 0.0

    async def run_forever(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(HEARTBEAT_S)
            now = time.monotonic()
            self.max_lag_s = max(self.max_lag_s * 0.9, now - before - HEARTBEAT_S)
            self.last = now

    def status(self) -> tuple[bool, dict[str, Any]]:
        since = time.monotonic() - self.last
        return since < STALL_AFTER_S, {"last_tick_s_ago": round(since, 3), "loop_lag_s": round(self.max_lag_s, 3)}


async def broker_reachable(bootstrap_servers: str, timeout_s: float = 2.0) -> bool:
    """True when a TCP connection to one of the bootstrap servers opens."""
    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        if await tcp_reachable(host, int(port), timeout_s):
            return True
    return False


async def readiness(bootstrap_servers: str, client: DagsterClient, assigned: bool) -> dict[str, bool]:
    broker, dagster = await asyncio.gather(broker_reachable(bootstrap_servers), client.ping())
    return {"broker": broker, "partitions_assigned": assigned, "dagster": dagster}


async def probe_once(metrics: Metrics, client: DagsterClient, bootstrap_servers: str) -> None:
    """Set `kafka_dagster_dagster_up` and `kafka_dagster_kafka_up` from one probe of each."""
    dagster, kafka = await asyncio.gather(client.reachable(), broker_reachable(bootstrap_servers))
    metrics.dagster_up.set(int(dagster))
    metrics.kafka_up.set(int(kafka))


async def probe_forever(metrics: Metrics, client: DagsterClient, bootstrap_servers: str,
                        interval_s: float) -> None:
    """Probe Dagster and Kafka every `interval_s`, so an idle worker's gauges say the truth too."""
    while True:
        try:
            await probe_once(metrics, client, bootstrap_servers)
        except Exception:  # a probe must never stop probing
            logger.exception("probing Dagster and Kafka failed")
        await asyncio.sleep(interval_s)


def partition_lag(end_offset: int, committed: int) -> int:
    return max(0, end_offset - committed)


class ConsumerLag:
    """Each assigned partition's lag as last measured: on `kafka_dagster_consumer_lag` and in /status."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.lags: dict[TP, int] = {}

    def update(self, ends: Mapping[TP, int], committed: Mapping[TP, int | None],
               next_offsets: Mapping[TP, int]) -> None:
        """Set each assigned partition's lag; drop the gauges of partitions no longer held.

        The end offset is the larger of the broker's answer and the next offset
        this worker will read: some Kafka-compatible brokers (Tansu) report too low
        an end offset, and lag is never negative.
        """
        current = {}
        for tp, end in ends.items():
            done = committed.get(tp)
            if done is None:
                continue
            current[tp] = partition_lag(max(end, next_offsets.get(tp, 0)), done)
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(current[tp])
        for tp in self.lags.keys() - current.keys():
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        self.lags = current
