"""Typed settings, read once from the environment at start.

Every setting has the name the contract gives it. A bad value raises
`ConfigurationError` with one line naming the setting, and the worker exits.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from service.errors import ConfigurationError

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """Everything the worker reads from its environment."""

    bootstrap_servers: str = "localhost:9092"
    dagster_graphql_url: str = "http://localhost:3000/graphql"
    dagster_api_token: str | None = None
    routes_path: Path = Path("routes.toml")
    group_id: str = "kafka-dagster"
    dlq_topic: str = "kafka-dagster.dlq"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    session_timeout_s: float = 10.0
    max_message_bytes: int = 1_048_576
    queued_batches_per_partition: int = 4
    dagster_timeout_s: float = 30.0
    retry_max_delay_s: float = 30.0
    shutdown_timeout_s: float = 20.0
    max_inflight_runs: int = 64
    log_level: str = "INFO"
    log_format: str = "text"

    @property
    def broker_urls(self) -> list[str]:
        return [f"kafka://{server.strip()}" for server in self.bootstrap_servers.split(",")]

    def __repr__(self) -> str:
        token = "'***'" if self.dagster_api_token else "None"
        return f"Settings(bootstrap_servers={self.bootstrap_servers!r}, dagster_api_token={token}, ...)"


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from `env` (default: the process environment)."""
    env = os.environ if env is None else env
    read = _Reader(env)
    return Settings(
        bootstrap_servers=read("KAFKA_BOOTSTRAP_SERVERS", _bootstrap_servers, "localhost:9092"),
        dagster_graphql_url=read("DAGSTER_GRAPHQL_URL", _http_url, "http://localhost:3000/graphql"),
        dagster_api_token=env.get("DAGSTER_API_TOKEN") or None,
        routes_path=read("KAFKA_DAGSTER_ROUTES", _existing_file, "routes.toml"),
        group_id=read("KAFKA_DAGSTER_GROUP_ID", _non_empty, "kafka-dagster"),
        dlq_topic=read("KAFKA_DAGSTER_DLQ_TOPIC", _non_empty, "kafka-dagster.dlq"),
        web_host=read("KAFKA_DAGSTER_WEB_HOST", _non_empty, "127.0.0.1"),
        web_port=read("KAFKA_DAGSTER_WEB_PORT", _port, "6066"),
        session_timeout_s=read("KAFKA_DAGSTER_SESSION_TIMEOUT_S", _positive_float, "10"),
        max_message_bytes=read("KAFKA_DAGSTER_MAX_MESSAGE_BYTES", _positive_int, "1048576"),
        queued_batches_per_partition=read("KAFKA_DAGSTER_QUEUED_BATCHES", _positive_int, "4"),
        dagster_timeout_s=read("KAFKA_DAGSTER_DAGSTER_TIMEOUT_S", _positive_float, "30"),
        retry_max_delay_s=read("KAFKA_DAGSTER_RETRY_MAX_DELAY_S", _positive_float, "30"),
        shutdown_timeout_s=read("KAFKA_DAGSTER_SHUTDOWN_TIMEOUT_S", _positive_float, "20"),
        max_inflight_runs=read("KAFKA_DAGSTER_MAX_INFLIGHT_RUNS", _positive_int, "64"),
        log_level=read("KAFKA_DAGSTER_LOG_LEVEL", _log_level, "INFO"),
        log_format=read("KAFKA_DAGSTER_LOG_FORMAT", _log_format, "text"),
    )


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def __call__(self, name: str, parse: Callable[[str], T], default: str) -> T:
        raw = self.env.get(name, "").strip() or default
        try:
            return parse(raw)
        except ValueError as exc:
            raise ConfigurationError(f"invalid setting {name}={raw!r}: {exc}") from None


def _non_empty(raw: str) -> str:
    if not raw:
        raise ValueError("must not be empty")
    return raw


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("must be an integer") from None
    if value <= 0:
        raise ValueError("must be positive")
    return value


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("must be a number") from None
    if not value > 0:
        raise ValueError("must be positive")
    return value


def _port(raw: str) -> int:
    value = _positive_int(raw)
    if value > 65535:
        raise ValueError("must be a port number between 1 and 65535")
    return value


def _bootstrap_servers(raw: str) -> str:
    for server in raw.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError("must be a comma-separated list of host:port")
    return raw


def _http_url(raw: str) -> str:
    parsed = urlparse(raw)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return raw


def _existing_file(raw: str) -> Path:
    path = Path(raw)
    if not path.is_file():
        raise ValueError("no such file")
    return path


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
    return level


def _log_format(raw: str) -> str:
    if raw not in ("text", "json"):
        raise ValueError("must be 'text' or 'json'")
    return raw
