"""The worker's registry carries the process metrics and kafka_dagster_build_info, not only its own."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from prometheus_client import CollectorRegistry

from service import __version__
from service.metrics import Metrics
from service.settings import load_settings
from service.worker import build_worker

ROOT = Path(__file__).resolve().parents[2]


def test_the_process_metrics_are_on_the_workers_registry() -> None:
    registry = Metrics(CollectorRegistry()).registry

    assert (registry.get_sample_value("process_cpu_seconds_total") or 0) > 0
    assert (registry.get_sample_value("process_resident_memory_bytes") or 0) > 1_000_000
    assert (registry.get_sample_value("process_open_fds") or 0) >= 3
    assert (registry.get_sample_value("process_max_fds") or 0) > 0
    families = {family.name for family in registry.collect()}
    assert {"python_info", "python_gc_collections"} <= families


def test_the_worker_reports_its_version(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    settings = load_settings({"KAFKA_DAGSTER_ROUTES": str(ROOT / "routes.toml"),
                              "KAFKA_DAGSTER_DATA_DIR": str(tmp_path)})

    build_worker(settings, metrics)

    assert __version__ == version("kafka-dagster")
    assert metrics.registry.get_sample_value("kafka_dagster_build_info", {"version": __version__}) == 1
