"""The worker's HTTP endpoints: /metrics, /healthz, /readyz, /status.

/status is what `kafka-dagster status` shows: the partitions the worker
owns, their open and queued batches, offsets, in-flight runs, paused and
throttled routes and reconciles (docs/cli.md describes every field).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import faust
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.metrics import Metrics


def add_pages(app: faust.App, metrics: Metrics, readiness: Any, liveness: Any,
              status: Callable[[], dict[str, Any]]) -> None:
    """Register the pages on the app's web server; `status()` is the /status document."""

    @app.page("/metrics")
    class MetricsPage(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            alive, details = liveness()
            return self.json({"status": "ok" if alive else "stalled", **details}, status=200 if alive else 503)

    @app.page("/readyz")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            checks = dict(await readiness())
            paused = checks.pop("routes_paused", {})
            ready = all(checks.values()) and not paused
            return self.json({"ready": ready, "checks": checks, "routes_paused": paused},
                             status=200 if ready else 503)

    @app.page("/status")
    class Status(View):
        async def get(self, request: Request) -> Response:
            return self.json(status())
