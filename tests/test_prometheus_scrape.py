"""A real Prometheus scrapes a real worker with the deployment's scrape config.

Debian's `prometheus` binary (scripts/ensure-system-deps.sh) runs on a free
local port with deploy/prometheus/prometheus.yml, its worker job pointed at one
worker instead of Docker's DNS, every second, and the deployment's alert rules
loaded. Everything is asserted through Prometheus' HTTP API, as Grafana and the
alerts would see it.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml  # type: ignore[import-untyped]

from service.kafka import ensure_topics
from tests.conftest import Stack
from tests.support import ROOT, DagsterApi, eventually, new_web_port, produce, route_toml, unique

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
WORKER_JOB = "kafka-dagster-worker"
DAGSTER_JOB = "process_orders"


def scrape_config(worker_port: int) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with the worker job on one local worker, scraped every second."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == WORKER_JOB]
    assert "dns_sd_configs" in job, "the deployment discovers workers through DNS"
    del job["dns_sd_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{worker_port}"]}]
    job["scrape_interval"] = "1s"
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS_DIR / path) for path in config.get("rule_files", [])]
    config["scrape_configs"] = [job]
    return config  # type: ignore[no-any-return]


@contextlib.contextmanager
def prometheus(config: dict[str, Any], workdir: Path) -> Iterator[str]:
    """Run Debian's prometheus with `config` on a free port; yield its base URL; always stop it."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run scripts/ensure-system-deps.sh (as root)", pytrace=False)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = new_web_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class PrometheusApi:
    """Prometheus' HTTP API, the way Grafana and the alert rules see the metrics."""

    def __init__(self, base_url: str, log_path: Path) -> None:
        self.base_url = base_url
        self.log_path = log_path

    async def get(self, path: str, **params: str) -> Any:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{self.base_url}{path}", params=params, timeout=5)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    async def ready(self) -> bool:
        try:
            async with httpx.AsyncClient() as client:
                response = await client.get(f"{self.base_url}/-/ready", timeout=2)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def value(self, expr: str) -> float | None:
        """The instant value of a single-series query, or None while it has no series."""
        result = (await self.get("/api/v1/query", query=expr))["result"]
        assert len(result) <= 1, f"{expr} matched several series: {result}"
        return float(result[0]["value"][1]) if result else None

    async def series(self, expr: str) -> list[dict[str, str]]:
        return [item["metric"] for item in (await self.get("/api/v1/query", query=expr))["result"]]


def orders(count: int) -> list[bytes]:
    return [orjson.dumps({"order_id": f"o-{i}", "customer": f"c-{i % 5}", "amount": 2.5}) for i in range(count)]


async def test_prometheus_scrapes_the_worker_with_the_deployment_config(stack: Stack, dagster_api: DagsterApi,
                                                                        start_worker, tmp_path: Path) -> None:
    topic = unique("scrape")
    await ensure_topics(stack.bootstrap, {topic: 1})
    worker = await start_worker(route_toml(topic, DAGSTER_JOB, max_records=25, max_wait_s=1.0))
    consumed = f'kafka_dagster_messages_consumed_total{{job="{WORKER_JOB}", topic="{topic}"}}'

    with prometheus(scrape_config(worker.web_port), tmp_path / "prometheus") as url:
        api = PrometheusApi(url, tmp_path / "prometheus" / "prometheus.log")
        await eventually(api.ready, 60, f"Prometheus to be ready (log: {api.log_path})")

        async def worker_up() -> bool:
            return await api.value(f'up{{job="{WORKER_JOB}"}}') == 1.0

        await eventually(worker_up, 60, "up == 1 for the worker's scrape job")

        await produce(stack.bootstrap, topic, orders(20))

        async def consumed_at_least(count: int) -> float:
            value = await api.value(consumed) or 0.0
            return value if value >= count else 0.0

        first = await eventually(lambda: consumed_at_least(20), 120, f"{consumed} >= 20")

        await produce(stack.bootstrap, topic, orders(30))
        second = await eventually(lambda: consumed_at_least(50), 120, f"{consumed} >= 50")
        assert second > first

        # The Dagster job is labelled `dagster_job` by the worker itself: no relabelling, no `exported_job`.
        launched = (f'kafka_dagster_run_launches_total{{job="{WORKER_JOB}", dagster_job="{DAGSTER_JOB}", '
                    f'result="LaunchRunSuccess"}}')

        async def launches() -> float:
            return await api.value(launched) or 0.0

        assert await eventually(launches, 120, launched) >= 1
        assert await api.series('{__name__=~"kafka_dagster_.+", exported_job!=""}') == []

        await assert_run_events_reach_prometheus(api, dagster_api, topic)

        async def rules_evaluated() -> list[dict[str, Any]]:
            rules = [rule for group in (await api.get("/api/v1/rules"))["groups"] for rule in group["rules"]]
            return rules if all(rule["health"] == "ok" for rule in rules) else []

        rules = await eventually(rules_evaluated, 60, "the deployment's alert rules to evaluate without errors")
        assert {"KafkaDagsterWorkerDown", "KafkaDagsterDagsterDown"} <= {rule["name"] for rule in rules}
        firing = [alert for alert in (await api.get("/api/v1/alerts"))["alerts"]
                  if alert["labels"]["alertname"] in ("KafkaDagsterWorkerDown", "KafkaDagsterWorkersAbsent")]
        assert firing == [], "the worker is up: no worker alert may be pending or firing"


async def assert_run_events_reach_prometheus(api: PrometheusApi, dagster_api: DagsterApi, topic: str) -> None:
    """The event guide's run metrics, counted by the worker from finished runs' event logs, in Prometheus.

    Every run of the topic succeeded, so Prometheus must hold exactly one
    RunSuccessEvent and one run duration per run, and the step durations of
    each run's steps: counters that only grow, whatever process ran the run.
    """

    async def finished_runs() -> int:
        runs = await dagster_api.runs(topic)
        done = all(run["status"] == "SUCCESS" for run in runs)
        return len(runs) if runs and done else 0

    runs = await eventually(finished_runs, 180, f"every run of {topic} to succeed")
    run_successes = f'dagster_events_total{{job="{WORKER_JOB}", event_type="RunSuccessEvent", status="SUCCESS"}}'
    run_durations = f'event_processing_seconds_count{{job="{WORKER_JOB}", event_type="run"}}'

    async def counted(expr: str) -> float:
        return await api.value(expr) or 0.0

    async def all_counted() -> bool:
        return await counted(run_successes) == runs and await counted(run_durations) == runs

    await eventually(all_counted, 120, f"{run_successes} and {run_durations} to reach {runs}")
    assert await counted(f'dagster_events_total{{job="{WORKER_JOB}", event_type="RunFailureEvent"}}') == 0
    steps = await counted(f'event_processing_seconds_count{{job="{WORKER_JOB}", event_type="step"}}')
    step_successes = await counted(
        f'sum(dagster_events_total{{job="{WORKER_JOB}", event_type="ExecutionStepSuccessEvent"}})')
    assert steps == step_successes >= runs, "one step duration per finished step, and every run has steps"
    assert await counted(f'event_processing_seconds_sum{{job="{WORKER_JOB}", event_type="run"}}') > 0
