"""Routes: which topic feeds which Dagster job, and with which batch policy.

A routes file is TOML with one `[[routes]]` table per topic:

    [[routes]]
    topic = "demo.orders"
    job = "process_orders"
    max_records = 500
    max_bytes = 1048576
    max_wait_s = 5.0
    schema_file = "schemas/order.json"   # optional JSON Schema for the value
    on_launch_rejected = "pause"         # or "dead_letter": what a refused launch does

The file is validated whole at start: an unknown key, a missing field or a
bad value fails with one line naming the route and the field. A route's schema
is compiled there too (`service.schemas`), so one that cannot compile fails
at start rather than on the first record.
"""

from __future__ import annotations

import json
import logging
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from service.errors import ConfigurationError
from service.schemas import CompiledSchema, SchemaCompileError

logger = logging.getLogger(__name__)

REQUIRED = ("topic", "job", "max_records", "max_bytes", "max_wait_s")
OPTIONAL = ("name", "location", "repository", "batch_op", "inline_max_bytes", "schema", "schema_file",
            "on_launch_rejected")
ON_LAUNCH_REJECTED = ("pause", "dead_letter")


@dataclass(frozen=True)
class Route:
    """One topic -> one job, with its batch policy and optional value schema."""

    topic: str
    job: str
    max_records: int
    max_bytes: int
    max_wait_s: float
    location: str | None = None
    repository: str | None = None
    batch_op: str = "read_batch"
    inline_max_bytes: int = 262_144
    schema: dict[str, Any] | None = field(default=None, compare=False)
    name: str = ""
    on_launch_rejected: str = "pause"
    _compiled: CompiledSchema | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.topic)

    @property
    def dead_letters_rejected_launches(self) -> bool:
        """True when a launch Dagster refuses dead-letters the batch instead of pausing the route."""
        return self.on_launch_rejected == "dead_letter"

    def validator(self) -> CompiledSchema | None:
        """The route's schema, compiled once; None when the route has none."""
        if self.schema is None:
            return None
        if self._compiled is None:
            object.__setattr__(self, "_compiled", compile_schema(self.schema, f"route {self.name!r}"))
        return self._compiled


def compile_schema(schema: dict[str, Any], where: str) -> CompiledSchema:
    """`schema` compiled, or a ConfigurationError prefixed by `where`; says when a draft has no fast path."""
    try:
        compiled = CompiledSchema(schema)
    except SchemaCompileError as exc:
        raise ConfigurationError(f"{where}: schema does not compile: {exc}") from None
    if compiled.slow_reason is not None:
        logger.warning("%s: %s; validating with jsonschema alone, some 30 times slower", where,
                       compiled.slow_reason)
    return compiled


def load_routes(path: Path) -> dict[str, Route]:
    """Parse and validate the routes file; return routes keyed by topic."""
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"routes file {path}: {exc}") from None
    tables = document.get("routes")
    if not isinstance(tables, list) or not tables:
        raise ConfigurationError(f"routes file {path}: expected one or more [[routes]] tables")
    routes: dict[str, Route] = {}
    for index, table in enumerate(tables):
        route = parse_route(table, f"{path}: routes[{index}]", base=path.parent)
        if route.topic in routes:
            raise ConfigurationError(f"{path}: topic {route.topic!r} is routed twice")
        routes[route.topic] = route
    return routes


def check_batch_bytes(routes: dict[str, Route], max_batch_bytes: int) -> None:
    """Every route's `max_bytes` within `KAFKA_DAGSTER_MAX_BATCH_BYTES`: what bounds a partition's memory."""
    for route in routes.values():
        if route.max_bytes > max_batch_bytes:
            raise ConfigurationError(f"route {route.topic!r}: max_bytes={route.max_bytes} is over "
                                     f"KAFKA_DAGSTER_MAX_BATCH_BYTES={max_batch_bytes}; lower it or raise the setting")


def parse_route(table: dict[str, Any], where: str, base: Path = Path(".")) -> Route:
    """One route from its TOML table; `where` prefixes every error."""
    if not isinstance(table, dict):
        raise ConfigurationError(f"{where}: must be a table ([[routes]])")
    unknown = sorted(set(table) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ConfigurationError(f"{where}: unknown key(s) {', '.join(unknown)}")
    missing = [name for name in REQUIRED if name not in table]
    if missing:
        raise ConfigurationError(f"{where}: missing {', '.join(missing)}")
    values = dict(table)
    schema_file = values.pop("schema_file", None)
    if schema_file is not None:
        if "schema" in values:
            raise ConfigurationError(f"{where}: give schema or schema_file, not both")
        if not isinstance(schema_file, str) or not schema_file:
            raise ConfigurationError(f"{where}: schema_file must be a path")
        values["schema"] = _read_schema(base / schema_file, where)
    _check_types(values, where)
    route = Route(**values)
    if route.schema is not None:
        object.__setattr__(route, "_compiled", compile_schema(route.schema, f"{where} (route {route.name!r})"))
    return route


def _check_types(values: dict[str, Any], where: str) -> None:
    for name in ("name", "topic", "job", "location", "repository", "batch_op"):
        if name in values and (not isinstance(values[name], str) or not values[name]):
            raise ConfigurationError(f"{where}: {name} must be a non-empty string")
    for name in ("max_records", "max_bytes", "inline_max_bytes"):
        value = values.get(name, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0 or (
            value == 0 and name != "inline_max_bytes"
        ):
            raise ConfigurationError(f"{where}: {name} must be a positive integer")
    if values.get("on_launch_rejected", "pause") not in ON_LAUNCH_REJECTED:
        raise ConfigurationError(f"{where}: on_launch_rejected must be one of {', '.join(ON_LAUNCH_REJECTED)}")
    wait = values["max_wait_s"]
    if not isinstance(wait, (int, float)) or isinstance(wait, bool) or not math.isfinite(wait) or wait <= 0:
        raise ConfigurationError(f"{where}: max_wait_s must be a positive number of seconds")
    values["max_wait_s"] = float(wait)
    schema = values.get("schema")
    if schema is not None:
        if not isinstance(schema, dict):
            raise ConfigurationError(f"{where}: schema must be a table (a JSON Schema object)")
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except (jsonschema.SchemaError, TypeError, AttributeError) as exc:
            reason = getattr(exc, "message", exc)
            raise ConfigurationError(f"{where}: schema is not a valid JSON Schema: {reason}") from None


def _read_schema(path: Path, where: str) -> dict[str, Any]:
    try:
        schema = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{where}: schema_file {path}: {exc}") from None
    if not isinstance(schema, dict):
        raise ConfigurationError(f"{where}: schema_file {path} must hold a JSON object")
    return schema
