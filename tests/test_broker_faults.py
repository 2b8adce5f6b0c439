"""The shared broker frozen mid-stream: alone in its module, since it stalls every other flow too."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest

from service.kafka import ensure_topics
from tests.conftest import Stack
from tests.support import (
    DagsterApi,
    Flow,
    WorkerProcess,
    dead_letters,
    eventually,
    every_record_in_one_run,
    route_toml,
    unique,
)

pytestmark = pytest.mark.integration


async def test_the_broker_frozen_mid_stream_loses_and_duplicates_nothing(
        stack: Stack, dagster_api: DagsterApi, start_worker: Any) -> None:
    topic, dlq = unique("broker-frozen"), unique("dlq")
    await ensure_topics(stack.bootstrap, {topic: 2})
    worker = await start_worker(route_toml(topic, max_records=500, max_wait_s=2.0), KAFKA_DAGSTER_DLQ_TOPIC=dlq)
    flow = Flow(stack.bootstrap, topic, per_second=40, partitions=2)  # a run a second: each costs a process
    flow.start()
    await eventually(lambda: _has_launched(worker), 90, "the first launches")
    await flow.stop()  # the producer would block on the frozen broker too
    stack.broker.process.signal_group(signal.SIGSTOP)
    try:
        await asyncio.sleep(20)  # the fault under test: the broker frozen for 20 s
    finally:
        stack.broker.process.signal_group(signal.SIGCONT)
    flow.start()
    await asyncio.sleep(3)  # records flowing after the freeze, for 3 s
    await every_record_in_one_run(stack.bootstrap, dagster_api, flow, dlq)
    assert await dead_letters(stack.bootstrap, dlq) == []
    assert worker.proc is not None and worker.proc.poll() is None



async def _has_launched(worker: WorkerProcess) -> bool:
    return "launched run" in worker.log_path.read_text(errors="replace")
