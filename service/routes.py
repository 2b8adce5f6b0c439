"""Routes: which records of which topics feed which Dagster job, and with which batch policy.

A routes file is TOML with one `[[routes]]` table per route, and optional
`[topics."<name>"]` tables for what happens to a topic's records that no
route matches:

    [[routes]]
    name = "orders"                      # required when a topic has several routes; default: the topic
    topic = "shop.events"                # or topic_pattern = "shop\\..*" (a regex matched whole)
    job = "process_orders"
    match = { "value.type" = "order.created" }   # optional: which records (service.matching)
    max_records = 500
    max_bytes = 1048576
    max_wait_s = 5.0
    schema_file = "schemas/order.json"   # optional JSON Schema for the value
    value_format = "json"                # or avro | protobuf | json_schema (Confluent wire format)
    key_format = "json"                  # keys as they are; or avro | protobuf | json_schema (one per topic)
    on_launch_rejected = "pause"         # or "dead_letter": what a refused launch does
    max_runs_per_minute = 30             # optional: launches per minute, at most
    max_queued_runs = 20                 # optional: wait while Dagster holds this many QUEUED runs of the job

    [[routes]]
    name = "tenant-events"
    topic = "shop.events"
    assets = ["tenant_events"]           # an asset selection instead of (or within, with `job`) a job
    partition_key = "value.tenant"       # optional: each run is one partition's (service.partitions)
    dynamic_partitions = "tenants"       # optional: add new keys to this dynamic partitions definition
    max_records = 500
    max_bytes = 1048576
    max_wait_s = 5.0

    [topics."shop.events"]
    unmatched = "skip"                   # or "dead_letter" (stage route)

    [schema_registry]
    url = "https://registry:8081"        # for framed formats; KAFKA_DAGSTER_SCHEMA_REGISTRY_URL wins

The file is validated whole at start: an unknown key, a missing field or a
bad value fails with one line naming the route and the field. A route's
schema and match pattern are compiled there too, so one that cannot compile
fails at start rather than on the first record.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from service.errors import ConfigurationError
from service.matching import Match, MatchError, compile_match
from service.partitions import PartitionKeyError, PartitionKeySpec, compile_partition_key
from service.schemas import CompiledSchema, SchemaCompileError
from service.wire import FORMATS, JSON

logger = logging.getLogger(__name__)

REQUIRED = ("max_records", "max_bytes", "max_wait_s")
OPTIONAL = ("name", "topic", "topic_pattern", "job", "assets", "location", "repository", "batch_op",
            "inline_max_bytes", "schema", "schema_file", "on_launch_rejected", "match", "max_runs_per_minute",
            "max_queued_runs", "partition_key", "dynamic_partitions", "value_format", "key_format")
# Dagster's implicit asset job: an asset route without `job` launches its selection in it.
IMPLICIT_ASSET_JOB = "__ASSET_JOB"
DEFAULT_BATCH_OP = "read_batch"
ON_LAUNCH_REJECTED = ("pause", "dead_letter")
UNMATCHED = ("skip", "dead_letter")
TOPIC_OPTIONS = ("unmatched",)
REGISTRY_OPTIONS = ("url",)


@dataclass(frozen=True)
class Route:
    """The records of a topic (or of topics matching a pattern) that `match` selects -> one job or asset selection.

    `job` is the job launched: the route's op job, its asset job, or Dagster's
    implicit asset job when it names only `assets` (asset keys, parts joined by `/`).
    """

    topic: str  # "" when the route names a topic_pattern instead
    job: str
    max_records: int
    max_bytes: int
    max_wait_s: float
    topic_pattern: str = ""
    location: str | None = None
    repository: str | None = None
    batch_op: str = DEFAULT_BATCH_OP
    inline_max_bytes: int = 262_144
    schema: dict[str, Any] | None = field(default=None, compare=False)
    name: str = ""
    on_launch_rejected: str = "pause"
    match: Match | None = field(default=None, compare=False)
    max_runs_per_minute: int | None = None
    max_queued_runs: int | None = None
    assets: tuple[str, ...] = ()
    partition_key: PartitionKeySpec | None = field(default=None, compare=False)
    dynamic_partitions: str | None = None
    value_format: str = JSON
    key_format: str = JSON
    _compiled: CompiledSchema | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.topic or self.topic_pattern)

    @property
    def dead_letters_rejected_launches(self) -> bool:
        """True when a launch Dagster refuses dead-letters the batch instead of pausing the route."""
        return self.on_launch_rejected == "dead_letter"

    @property
    def asset_paths(self) -> tuple[tuple[str, ...], ...]:
        """The selected asset keys, each as its path."""
        return tuple(tuple(asset.split("/")) for asset in self.assets)

    @property
    def target(self) -> str:
        """The route's target in words, for logs and `check`."""
        if not self.assets:
            return f"job {self.job}"
        return f"assets {', '.join(self.assets)}" + ("" if self.job == IMPLICIT_ASSET_JOB else f" (job {self.job})")

    @property
    def framed(self) -> bool:
        """True when the route reads its values or keys in the Confluent wire format (a schema registry)."""
        return self.value_format != JSON or self.key_format != JSON

    @property
    def throttled(self) -> bool:
        """True when the route limits its launches (`max_runs_per_minute` or `max_queued_runs`)."""
        return self.max_runs_per_minute is not None or self.max_queued_runs is not None

    def reads(self, topic: str) -> bool:
        """True when the route takes records of `topic`."""
        return topic == self.topic or (bool(self.topic_pattern) and _pattern(self.topic_pattern).fullmatch(topic)
                                       is not None)

    def validator(self) -> CompiledSchema | None:
        """The route's schema, compiled once; None when the route has none."""
        if self.schema is None:
            return None
        if self._compiled is None:
            object.__setattr__(self, "_compiled", compile_schema(self.schema, f"route {self.name!r}"))
        return self._compiled


@cache
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


class RouteTable(Mapping[str, Route]):
    """The routes keyed by name, and which of them read each topic."""

    def __init__(self, routes: Mapping[str, Route], unmatched: Mapping[str, str] | None = None,
                 registry_url: str | None = None) -> None:
        self._routes = dict(routes)
        self._unmatched = dict(unmatched or {})
        self.registry_url = registry_url  # the file's [schema_registry] url
        self._by_topic: dict[str, tuple[Route, ...]] = {}

    def __getitem__(self, name: str) -> Route:
        return self._routes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._routes)

    def __len__(self) -> int:
        return len(self._routes)

    def for_topic(self, topic: str) -> tuple[Route, ...]:
        """The routes that read `topic`, in file order (cached: topics are few)."""
        routes = self._by_topic.get(topic)
        if routes is None:
            routes = self._by_topic[topic] = tuple(r for r in self._routes.values() if r.reads(topic))
        return routes

    def unmatched(self, topic: str) -> str:
        """What happens to a record of `topic` that no route matches: "skip" or "dead_letter"."""
        return self._unmatched.get(topic, "skip")

    @property
    def framed(self) -> list[Route]:
        """The routes that read the Confluent wire format."""
        return [r for r in self._routes.values() if r.framed]

    @property
    def topics(self) -> list[str]:
        """The topics routes name, each once."""
        return list(dict.fromkeys(r.topic for r in self._routes.values() if r.topic))

    @property
    def subscription_pattern(self) -> str | None:
        """One regex for every routed topic, when some route names a `topic_pattern`; None otherwise."""
        patterns = [r.topic_pattern for r in self._routes.values() if r.topic_pattern]
        if not patterns:
            return None
        alternatives = [*(f"(?:{p})" for p in patterns), *(re.escape(t) for t in self.topics)]
        return f"^(?:{'|'.join(alternatives)})$"  # aiokafka matches from the start only


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


def load_routes(path: Path) -> RouteTable:
    """Parse and validate the routes file; return its routes keyed by name."""
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"routes file {path}: {exc}") from None
    tables = document.get("routes")
    if not isinstance(tables, list) or not tables:
        raise ConfigurationError(f"routes file {path}: expected one or more [[routes]] tables")
    unknown = sorted(set(document) - {"routes", "topics", "schema_registry"})
    if unknown:
        raise ConfigurationError(f"routes file {path}: unknown key(s) {', '.join(unknown)} (expected [[routes]], "
                                 "[topics.\"<name>\"] and [schema_registry] tables)")
    routes: dict[str, Route] = {}
    for index, table in enumerate(tables):
        route = parse_route(table, f"{path}: routes[{index}]", base=path.parent)
        if route.name in routes:
            raise ConfigurationError(f"{path}: routes[{index}]: route name {route.name!r} is used twice"
                                     + (" (give each route of a topic its own name)" if route.topic else ""))
        routes[route.name] = route
    _check_shared_topics(routes.values(), path)
    return RouteTable(routes, _parse_topics(document.get("topics", {}), path),
                      _parse_registry(document.get("schema_registry", {}), path))


def _parse_registry(table: Any, path: Path) -> str | None:
    """The `[schema_registry]` table: its url alone; credentials and TLS come from the environment."""
    where = f"{path}: schema_registry"
    if not isinstance(table, dict):
        raise ConfigurationError(f"{where}: must be a table ([schema_registry])")
    unknown = sorted(set(table) - set(REGISTRY_OPTIONS))
    if unknown:
        raise ConfigurationError(f"{where}: unknown key(s) {', '.join(unknown)} (only url; credentials and TLS "
                                 "come from KAFKA_DAGSTER_SCHEMA_REGISTRY_USERNAME, _PASSWORD and _CAFILE)")
    url = table.get("url")
    if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
        raise ConfigurationError(f"{where}: url must be an http:// or https:// URL")
    return url


def check_registry(routes: RouteTable, registry_url: str | None) -> None:
    """Every route that reads a framed format has a schema registry to ask."""
    if registry_url is not None:
        return
    for route in routes.framed:
        fmt = route.value_format if route.value_format != JSON else route.key_format
        raise ConfigurationError(f"route {route.name!r}: format {fmt} needs a schema registry: set "
                                 "KAFKA_DAGSTER_SCHEMA_REGISTRY_URL or [schema_registry] url in the routes file")


def _check_shared_topics(routes: Iterable[Route], path: Path) -> None:
    """A topic with several routes needs every one of them named: metrics and runs tell them apart by name;
    and they read its keys alike (one `key_format`): a record's key is decoded once, for all of them."""
    by_topic: dict[str, list[Route]] = {}
    for route in routes:
        if route.topic:
            by_topic.setdefault(route.topic, []).append(route)
    for topic, shared in by_topic.items():
        unnamed = [r for r in shared if r.name == topic]
        if len(shared) > 1 and unnamed:
            raise ConfigurationError(f"{path}: topic {topic!r} has {len(shared)} routes: give each a name")
        formats = dict.fromkeys(r.key_format for r in shared)
        if len(formats) > 1:
            raise ConfigurationError(f"{path}: topic {topic!r}: its routes read keys as {' and '.join(formats)}; "
                                     "routes that share a topic must have the same key_format")


def _parse_topics(tables: Any, path: Path) -> dict[str, str]:
    """The `[topics."<name>"]` tables: what a topic does with records no route matches."""
    if not isinstance(tables, dict):
        raise ConfigurationError(f"routes file {path}: topics must be tables ([topics.\"<name>\"])")
    unmatched: dict[str, str] = {}
    for topic, table in tables.items():
        where = f"{path}: topics.{topic!r}"
        if not isinstance(table, dict):
            raise ConfigurationError(f"{where}: must be a table")
        unknown = sorted(set(table) - set(TOPIC_OPTIONS))
        if unknown:
            raise ConfigurationError(f"{where}: unknown key(s) {', '.join(unknown)}")
        value = table.get("unmatched", "skip")
        if value not in UNMATCHED:
            raise ConfigurationError(f"{where}: unmatched must be one of {', '.join(UNMATCHED)}")
        unmatched[topic] = value
    return unmatched


def check_batch_bytes(routes: Mapping[str, Route], max_batch_bytes: int) -> None:
    """Every route's `max_bytes` within `KAFKA_DAGSTER_MAX_BATCH_BYTES`: what bounds a partition's memory."""
    for route in routes.values():
        if route.max_bytes > max_batch_bytes:
            raise ConfigurationError(f"route {route.name!r}: max_bytes={route.max_bytes} is over "
                                     f"KAFKA_DAGSTER_MAX_BATCH_BYTES={max_batch_bytes}; lower it or raise the setting")


def parse_route(table: dict[str, Any], where: str, base: Path = Path(".")) -> Route:
    """One route from its TOML table; `where` prefixes every error."""
    if not isinstance(table, dict):
        raise ConfigurationError(f"{where}: must be a table ([[routes]])")
    unknown = sorted(set(table) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ConfigurationError(f"{where}: unknown key(s) {', '.join(unknown)}")
    missing = [name for name in REQUIRED if name not in table]
    if "job" not in table and "assets" not in table:
        missing.insert(0, "job (or assets)")
    if missing:
        raise ConfigurationError(f"{where}: missing {', '.join(missing)}")
    if ("topic" in table) == ("topic_pattern" in table):
        raise ConfigurationError(f"{where}: give topic or topic_pattern (one of them)")
    values = dict(table)
    schema_file = values.pop("schema_file", None)
    if schema_file is not None:
        if "schema" in values:
            raise ConfigurationError(f"{where}: give schema or schema_file, not both")
        if not isinstance(schema_file, str) or not schema_file:
            raise ConfigurationError(f"{where}: schema_file must be a path")
        values["schema"] = _read_schema(base / schema_file, where)
    _check_types(values, where)
    values.setdefault("topic", "")
    if "match" in values:
        values["match"] = _compile_match(values["match"], where)
    _check_target(values, where)
    route = Route(**values)
    if route.schema is not None:
        object.__setattr__(route, "_compiled", compile_schema(route.schema, f"{where} (route {route.name!r})"))
    return route


def _compile_match(spec: Any, where: str) -> Match:
    try:
        return compile_match(spec)
    except MatchError as exc:
        text = str(exc)
        raise ConfigurationError(f"{where}: {text if text.startswith('match') else f'match {text}'}") from None


def _check_target(values: dict[str, Any], where: str) -> None:
    """`assets` (a list of asset keys, with or without an asset `job`), partition_key, dynamic_partitions."""
    assets = values.get("assets")
    if assets is not None:
        if not isinstance(assets, list) or not assets or not all(
                isinstance(a, str) and a and all(a.split("/")) for a in assets):
            raise ConfigurationError(f"{where}: assets must be a list of asset keys (\"name\" or \"path/to/name\")")
        if "batch_op" in values:
            raise ConfigurationError(f"{where}: batch_op is for op jobs; an asset route gives the batch to the "
                                     "selected assets that take it")
        values["assets"] = tuple(assets)
        values.setdefault("job", IMPLICIT_ASSET_JOB)
    key = values.get("partition_key")
    if key is not None:
        if not isinstance(key, str):
            raise ConfigurationError(f"{where}: partition_key must be a string")
        try:
            values["partition_key"] = compile_partition_key(key)
        except PartitionKeyError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
    dynamic = values.get("dynamic_partitions")
    if dynamic is not None:
        if not isinstance(dynamic, str) or not dynamic:
            raise ConfigurationError(f"{where}: dynamic_partitions must be the name of a dynamic partitions "
                                     "definition")
        if key is None:
            raise ConfigurationError(f"{where}: dynamic_partitions needs a partition_key (where each record's key is)")


def _check_pattern(text: str, where: str) -> None:
    try:
        re.compile(text)
    except re.error as exc:
        raise ConfigurationError(f"{where}: topic_pattern is not a regular expression: {exc}") from None


def _check_types(values: dict[str, Any], where: str) -> None:
    for name in ("name", "topic", "topic_pattern", "job", "location", "repository", "batch_op"):
        if name in values and (not isinstance(values[name], str) or not values[name]):
            raise ConfigurationError(f"{where}: {name} must be a non-empty string")
    if "topic_pattern" in values:
        _check_pattern(values["topic_pattern"], where)
    for name in ("max_runs_per_minute", "max_queued_runs"):
        value = values.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ConfigurationError(f"{where}: {name} must be a positive integer")
    for name in ("max_records", "max_bytes", "inline_max_bytes"):
        value = values.get(name, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0 or (
            value == 0 and name != "inline_max_bytes"
        ):
            raise ConfigurationError(f"{where}: {name} must be a positive integer")
    for name in ("value_format", "key_format"):
        if values.get(name, JSON) not in FORMATS:
            raise ConfigurationError(f"{where}: {name} must be one of {', '.join(FORMATS)}")
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
