"""Backpressure: the worker's memory while Dagster's webserver is down and a backlog grows in Kafka."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

from bench.context import Context
from bench.data import make_values, produce_fast
from bench.worker import RouteSpec, Worker, unique
from service.kafka import ensure_topics

SAMPLE_S = 0.25
STEPS = 5  # the backlog arrives in steps, so RSS can be read against its size


@dataclass
class RssSamples:
    """(seconds since start, backlog produced so far, RSS in MB) every SAMPLE_S."""

    points: list[tuple[float, int, float]] = field(default_factory=list)
    produced: int = 0

    @property
    def peak_mb(self) -> float:
        return max((mb for _, _, mb in self.points), default=0.0)


def _sample(worker: Worker, samples: RssSamples, stop: threading.Event) -> None:
    started = time.monotonic()
    while not stop.is_set():
        samples.points.append((time.monotonic() - started, samples.produced, worker.rss_bytes() / 1_048_576))
        stop.wait(SAMPLE_S)


def backpressure(ctx: Context) -> RssSamples:
    """Stop the webserver, start a worker, produce the backlog, keep sampling its RSS for a while."""
    mode = ctx.mode
    topic = unique("bench.backlog")
    values = make_values(mode.backlog, mode.value_bytes)
    asyncio.run(ensure_topics(ctx.bootstrap, {topic: mode.partitions}))  # workers subscribe to it
    samples = RssSamples()
    stop = threading.Event()
    ctx.dagster.stop_webserver()
    with ctx.workers(1, RouteSpec(topic, 10_000, 1.0)) as workers:
        sampler = threading.Thread(target=_sample, args=(workers[0], samples, stop), daemon=True)
        sampler.start()
        try:
            time.sleep(mode.worker_start_s)

            def count(sent: int) -> None:
                samples.produced += sent

            step = len(values) // STEPS
            for start in range(0, len(values), step):
                asyncio.run(produce_fast(ctx.bootstrap, topic, values[start:start + step], mode.partitions,
                                         on_sent=count))
                samples.produced = min(start + step, mode.backlog)
                time.sleep(mode.backlog_step_pause_s)
            time.sleep(mode.backpressure_hold_s)
        finally:
            stop.set()
            sampler.join()
    return samples
