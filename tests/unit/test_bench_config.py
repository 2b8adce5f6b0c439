"""The benchmark's workers must start with the worker's default settings: their routes are checked here."""

from __future__ import annotations

from pathlib import Path

from bench.worker import RouteSpec, routes_toml
from service.routes import check_batch_bytes, load_routes
from service.settings import Settings


def test_bench_routes_pass_the_workers_checks_with_default_settings(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(routes_toml([RouteSpec("bench.a", 12_500, 1.0), RouteSpec("bench.b", 1_000_000, 2.5)]))
    routes = load_routes(path)
    check_batch_bytes(routes, Settings().max_batch_bytes)
    assert {route.topic for route in routes.values()} == {"bench.a", "bench.b"}
