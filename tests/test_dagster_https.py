"""Dagster's GraphQL over HTTPS behind a real proxy that demands the API token, and secrets kept in.

nginx terminates TLS with a certificate from a CA made in the test and answers
401 unless `Dagster-Cloud-Api-Token` carries the token, as Dagster+ does. The
worker verifies the certificate (DAGSTER_SSL_CAFILE), sends the token, and
never lets it out: not in its log, /metrics, dead letters, run tags or config.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from service.dlq import DeadLetter
from service.kafka import ensure_topics
from tests.conftest import Stack
from tests.support import (
    DagsterApi,
    WorkerProcess,
    dead_letters,
    eventually,
    finished_runs,
    produce,
    route_toml,
    unique,
)
from tests.tls import CertPair, Nginx, issue_server_cert, make_ca

pytestmark = pytest.mark.integration

TOKEN = "tok-" + unique("dagster-secret")


@dataclass
class DagsterProxy:
    graphql_url: str
    ca: CertPair
    access_log: Any


@pytest.fixture(scope="module")
def dagster_proxy(stack: Stack) -> Iterator[DagsterProxy]:
    workdir = stack.workdir / unique("https")
    ca = make_ca(workdir, "dagster-ca")
    nginx = Nginx(workdir, issue_server_cert(workdir, ca), stack.dagster.url, TOKEN)
    try:
        nginx.start()
        yield DagsterProxy(f"{nginx.url}/graphql", ca, workdir / "nginx" / "access.log")
    finally:
        nginx.stop()


def orders(count: int) -> list[bytes]:
    return [orjson.dumps({"order_id": f"o-{i}", "customer": "c", "amount": 2.0}) for i in range(count)]


async def run_details(api: DagsterApi, run_ids: list[str]) -> str:
    texts = []
    for run_id in run_ids:
        run = await api.run_details(run_id)
        texts.append(run["runConfigYaml"] + orjson.dumps(run["tags"]).decode())
    return "\n".join(texts)


def dead_letter_text(letters: list[DeadLetter]) -> str:
    return "\n".join(f"{letter.key!r}{letter.value!r}{letter.headers!r}{letter.dlq!r}" for letter in letters)


async def test_launches_through_https_with_the_token_and_the_token_stays_secret(
        stack: Stack, dagster_api: DagsterApi, dagster_proxy: DagsterProxy, start_worker) -> None:
    topic, dlq_topic = unique("https-orders"), unique("https-dlq")
    await ensure_topics(stack.bootstrap, {topic: 1})
    worker: WorkerProcess = await start_worker(
        route_toml(topic, max_records=5, max_wait_s=1.0), KAFKA_DAGSTER_DLQ_TOPIC=dlq_topic,
        DAGSTER_GRAPHQL_URL=dagster_proxy.graphql_url, DAGSTER_SSL_CAFILE=str(dagster_proxy.ca.cert),
        DAGSTER_API_TOKEN=TOKEN, KAFKA_DAGSTER_LOG_LEVEL="DEBUG")
    await produce(stack.bootstrap, topic, [*orders(10), b"not json"])

    runs = await eventually(lambda: finished_runs(dagster_api, topic, 10), 180,
                            "runs launched through the HTTPS proxy")
    assert {r["status"] for r in runs} == {"SUCCESS"}
    letters = await eventually(lambda: dead_letters(stack.bootstrap, dlq_topic), 60, "the dead letter")
    assert [letter.stage for letter in letters] == ["decode"]

    async with httpx.AsyncClient() as client:
        pages = {page: (await client.get(f"{worker.base_url}{page}", timeout=5)).text
                 for page in ("/metrics", "/healthz", "/readyz", "/", "/stats/", "/router/")}
    assert "kafka_dagster_run_launches_total" in pages["/metrics"]
    outputs = {
        "worker log": worker.log_path.read_text(errors="replace"),
        **{f"page {page}": text for page, text in pages.items()},
        "dead letters": dead_letter_text(letters),
        "run tags and config": await run_details(dagster_api, [r["runId"] for r in runs]),
    }
    assert "launched run" in outputs["worker log"]
    for where, text in outputs.items():
        assert TOKEN not in text, f"the API token appears in the {where}"
    access = dagster_proxy.access_log.read_text()
    assert '"POST /graphql HTTP/1.1" 200' in access and " 401 " not in access


async def test_an_untrusted_dagster_certificate_is_retried_with_a_clear_hint(
        stack: Stack, dagster_proxy: DagsterProxy, start_worker) -> None:
    """Without DAGSTER_SSL_CAFILE the system CAs do not trust the proxy: nothing is launched, nothing lost."""
    topic, dlq_topic = unique("https-untrusted"), unique("https-untrusted-dlq")
    await ensure_topics(stack.bootstrap, {topic: 1})
    worker: WorkerProcess = await start_worker(
        route_toml(topic, max_records=1, max_wait_s=1.0), wait=False, KAFKA_DAGSTER_DLQ_TOPIC=dlq_topic,
        DAGSTER_GRAPHQL_URL=dagster_proxy.graphql_url, DAGSTER_API_TOKEN=TOKEN)
    await produce(stack.bootstrap, topic, orders(1))

    async def hint() -> bool:
        log = worker.log_path.read_text(errors="replace")
        return "TLS certificate not trusted" in log and "check DAGSTER_SSL_CAFILE" in log

    await eventually(hint, 90, "a log line naming DAGSTER_SSL_CAFILE")
    assert await dead_letters(stack.bootstrap, dlq_topic) == []
    assert TOKEN not in worker.log_path.read_text(errors="replace")
