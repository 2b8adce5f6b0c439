"""The end-to-end path once more, on the Dagster instance docker-compose runs: PostgreSQL storage.

A second Dagster deployment (code server, webserver, daemon) is started with
the compose deployment's own instance config, `deploy/dagster/dagster.yaml`
(PostgreSQL storage from `POSTGRES_*`/`DAGSTER_PG_*` variables, the queued run
coordinator, run monitoring), on a database of its own, created on the
PostgreSQL server that the test starts itself (`service.dev.postgres`:
Debian's binaries on a free port) and dropped afterwards; `TEST_POSTGRES_URL`
names a server of your own instead. Nothing is skipped: without the server
the test fails and says why.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

from service.dev.postgres import postgres_server
from service.dev.stack import Dagster, StackError, temporary_database
from service.kafka import ensure_topics
from tests.conftest import Stack
from tests.support import ROOT, DagsterApi, route_toml, unique
from tests.test_end_to_end import assert_orders_become_runs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]



@pytest.fixture(scope="module")
def postgres_admin_url(stack: Stack) -> Iterator[str]:
    """`TEST_POSTGRES_URL`, or a PostgreSQL server of this module's own, stopped afterwards."""
    try:
        with postgres_server(stack.workdir / unique("postgres"), os.environ.get("TEST_POSTGRES_URL")) as url:
            yield url
    except StackError as exc:
        pytest.fail(f"PostgreSQL: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def postgres_database(postgres_admin_url: str) -> Iterator[str]:
    """A fresh database for this module's Dagster instance; its URL."""
    try:
        with temporary_database(postgres_admin_url, "kafka_dagster") as url:
            yield url
    except StackError as exc:
        pytest.fail(f"PostgreSQL at {postgres_admin_url}: {exc}", pytrace=False)


def compose_postgres_env(url: str) -> dict[str, str]:
    """The variables deploy/dagster/dagster.yaml reads its PostgreSQL connection from, for `url`."""
    parts = urlparse(url)
    return {
        "POSTGRES_USER": parts.username or "postgres",
        "POSTGRES_PASSWORD": parts.password or "",
        "DAGSTER_PG_HOST": parts.hostname or "127.0.0.1",
        "DAGSTER_PG_PORT": str(parts.port or 5432),
        "POSTGRES_DB": parts.path.lstrip("/"),
    }


@pytest.fixture(scope="module")
def postgres_dagster(stack: Stack, postgres_database: str) -> Iterator[Dagster]:
    env = {"KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap, **compose_postgres_env(postgres_database)}
    dagster = Dagster(stack.workdir / "dagster-postgres", env, pg_url=postgres_database,
                      instance_config=ROOT / "deploy" / "dagster" / "dagster.yaml")
    try:
        dagster.start()
        yield dagster
    finally:
        dagster.stop()


async def test_messages_become_successful_runs_on_postgres_storage(stack: Stack, postgres_dagster: Dagster,
                                                                   start_worker) -> None:
    assert "postgres:" in (postgres_dagster.home / "dagster.yaml").read_text()
    topic = unique("orders-pg")
    await ensure_topics(stack.bootstrap, {topic: 4})
    worker = await start_worker(route_toml(topic, max_records=200, max_wait_s=2.0),
                                DAGSTER_GRAPHQL_URL=postgres_dagster.graphql_url)
    api = DagsterApi(postgres_dagster.graphql_url)
    await assert_orders_become_runs(stack.bootstrap, api, worker, topic)
    assert await postgres_runs(postgres_dagster.pg_url or "", topic) == len(await api.runs(topic))


async def postgres_runs(pg_url: str, topic: str) -> int:
    """Runs tagged with `topic` in the PostgreSQL run storage itself: the runs live there, not in SQLite."""
    import psycopg2

    with psycopg2.connect(pg_url, connect_timeout=5) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(DISTINCT run_id) FROM run_tags WHERE key = 'kafka/topic' AND value = %s",
                       (topic,))
        (count,) = cursor.fetchone()
    return int(count)
