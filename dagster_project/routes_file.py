"""The worker's routes file as the code location reads it: where it is, and the order schema beside it.

Pure (no Dagster, no Kafka client): `orders.py` validates with the schema at
import time, `assets.py` models the routed topics.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.contract import DEFAULT_ROUTES_FILE

# As routes.toml names it (`schema_file`); the image and the compose file put it beside the routes file.
ORDER_SCHEMA_FILE = Path("schemas", "order.json")
CHECKOUT = Path(__file__).resolve().parent.parent


def routes_file(environ: Mapping[str, str] = os.environ) -> Path:
    """The worker's routes file: `KAFKA_DAGSTER_ROUTES`, default routes.toml."""
    return Path(environ.get("KAFKA_DAGSTER_ROUTES", DEFAULT_ROUTES_FILE))


def order_schema_path(environ: Mapping[str, str] = os.environ) -> Path:
    """schemas/order.json beside the routes file, where the worker finds the demo route's schema;
    the source checkout's when there is none there (a routes file of its own elsewhere)."""
    beside = routes_file(environ).parent / ORDER_SCHEMA_FILE
    return beside if beside.is_file() else CHECKOUT / ORDER_SCHEMA_FILE


def load_order_schema(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The JSON Schema of a demo order: the one file the worker's route validates with too."""
    schema: dict[str, Any] = json.loads(order_schema_path(environ).read_text())
    return schema
