"""Fixtures the unit tests share."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh registry per test, so metric assertions see only that test's samples."""
    return CollectorRegistry()
