"""Fixtures the unit tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from service.app import App


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh registry per test, so metric assertions see only that test's samples."""
    return CollectorRegistry()


@pytest.fixture
async def app() -> AsyncIterator[App]:  # async: the app takes the test's running loop
    """The worker's Faust app, never started: its consumer and monitor exist, no broker is needed."""
    app = App("unit", broker="kafka://127.0.0.1:1", autodiscover=False, store="memory://", web_enabled=False)
    yield app
    if app._consumer is not None:  # its (never started) aiokafka thread made an event loop of its own
        app.consumer._thread.thread_loop.close()  # type: ignore[attr-defined]
