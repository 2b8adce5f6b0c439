"""Typed settings, read once from the environment at start.

Every setting has the name the contract gives it. A bad value raises
`ConfigurationError` with one line naming the setting, and the worker exits.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from service.contract import DEFAULT_BOOTSTRAP_SERVERS, DEFAULT_DLQ_TOPIC, DEFAULT_ROUTES_FILE
from service.errors import ConfigurationError
from service.kafka.security import ENV, MECHANISMS, PROTOCOLS, KafkaSecurity, ssl_context

T = TypeVar("T")


@dataclass(frozen=True)
class RegistrySettings:
    """Where the schema registry is, and how to reach it: basic auth and TLS from the environment only.

    `url` is the registry's Confluent-compatible API (Apicurio: `.../apis/ccompat/v7`); unset here, the
    routes file's `[schema_registry] url` is used (`with_url`). The password is never shown.
    """

    url: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cafile: str | None = None
    timeout_s: float = 10.0

    def with_url(self, url: str | None) -> RegistrySettings:
        """These settings with the routes file's url, unless the environment named one."""
        if self.url is not None or url is None:
            return self
        _check_registry_url(url, self.cafile, "[schema_registry] url in the routes file")
        return RegistrySettings(url, self.username, self.password, self.cafile, self.timeout_s)



@dataclass(frozen=True)
class Settings:
    """Everything the worker reads from its environment."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP_SERVERS
    dagster_graphql_url: str = "http://localhost:3000/graphql"
    dagster_api_token: str | None = None
    dagster_ssl_cafile: str | None = None
    routes_path: Path = Path(DEFAULT_ROUTES_FILE)
    group_id: str = "kafka-dagster"
    dlq_topic: str = DEFAULT_DLQ_TOPIC
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    session_timeout_s: float = 10.0
    max_message_bytes: int = 1_048_576
    max_json_depth: int = 32
    max_json_keys: int = 10_000
    max_batch_bytes: int = 16_777_216
    queued_batches_per_partition: int = 4
    dagster_timeout_s: float = 30.0
    retry_max_delay_s: float = 30.0
    route_retry_max_delay_s: float = 120.0
    probe_interval_s: float = 5.0
    topic_refresh_s: float = 30.0
    shutdown_timeout_s: float = 20.0
    max_inflight_runs: int = 64
    log_level: str = "INFO"
    log_format: str = "text"
    data_dir: Path = field(default_factory=lambda: Path(default_data_dir()))
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    schema_registry: RegistrySettings = field(default_factory=RegistrySettings)
    transactions: str = "auto"  # auto | on | off: dead letters and their commit in one transaction
    dead_letter_flush_s: float = 0.5  # with transactions: how often due dead letters are written
    transactional_id_prefix_setting: str | None = None

    @property
    def transactional_id_prefix(self) -> str:
        """The prefix of the partitions' transactional ids (`service.kafka.transactions`): the group by default."""
        return self.transactional_id_prefix_setting or self.group_id

    @property
    def broker_urls(self) -> list[str]:
        return [f"kafka://{server.strip()}" for server in self.bootstrap_servers.split(",")]

    def __repr__(self) -> str:
        token = "'***'" if self.dagster_api_token else "None"
        return (f"Settings(bootstrap_servers={self.bootstrap_servers!r}, dagster_api_token={token}, "
                f"kafka_security={self.kafka_security!r}, schema_registry={self.schema_registry!r}, ...)")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from `env` (default: the process environment)."""
    env = os.environ if env is None else env
    read = _Reader(env)
    return Settings(
        bootstrap_servers=read("KAFKA_BOOTSTRAP_SERVERS", _bootstrap_servers, DEFAULT_BOOTSTRAP_SERVERS),
        dagster_graphql_url=read("DAGSTER_GRAPHQL_URL", _http_url, "http://localhost:3000/graphql"),
        dagster_api_token=env.get("DAGSTER_API_TOKEN") or None,
        dagster_ssl_cafile=_dagster_cafile("DAGSTER_SSL_CAFILE", env, read),
        routes_path=read("KAFKA_DAGSTER_ROUTES", _existing_file, DEFAULT_ROUTES_FILE),
        group_id=read("KAFKA_DAGSTER_GROUP_ID", _non_empty, "kafka-dagster"),
        dlq_topic=read("KAFKA_DAGSTER_DLQ_TOPIC", _non_empty, DEFAULT_DLQ_TOPIC),
        web_host=read("KAFKA_DAGSTER_WEB_HOST", _non_empty, "127.0.0.1"),
        web_port=read("KAFKA_DAGSTER_WEB_PORT", _port, "6066"),
        session_timeout_s=read("KAFKA_DAGSTER_SESSION_TIMEOUT_S", _positive_float, "10"),
        max_message_bytes=read("KAFKA_DAGSTER_MAX_MESSAGE_BYTES", _positive_int, "1048576"),
        max_json_depth=read("KAFKA_DAGSTER_MAX_JSON_DEPTH", _positive_int, "32"),
        max_json_keys=read("KAFKA_DAGSTER_MAX_JSON_KEYS", _positive_int, "10000"),
        max_batch_bytes=read("KAFKA_DAGSTER_MAX_BATCH_BYTES", _positive_int, "16777216"),
        queued_batches_per_partition=read("KAFKA_DAGSTER_QUEUED_BATCHES", _positive_int, "4"),
        dagster_timeout_s=read("KAFKA_DAGSTER_DAGSTER_TIMEOUT_S", _positive_float, "30"),
        retry_max_delay_s=read("KAFKA_DAGSTER_RETRY_MAX_DELAY_S", _positive_float, "30"),
        route_retry_max_delay_s=read("KAFKA_DAGSTER_ROUTE_RETRY_MAX_DELAY_S", _positive_float, "120"),
        probe_interval_s=read("KAFKA_DAGSTER_PROBE_INTERVAL_S", _positive_float, "5"),
        topic_refresh_s=read("KAFKA_DAGSTER_TOPIC_REFRESH_S", _positive_float, "30"),
        shutdown_timeout_s=read("KAFKA_DAGSTER_SHUTDOWN_TIMEOUT_S", _positive_float, "20"),
        max_inflight_runs=read("KAFKA_DAGSTER_MAX_INFLIGHT_RUNS", _positive_int, "64"),
        log_level=read("KAFKA_DAGSTER_LOG_LEVEL", _log_level, "INFO"),
        log_format=read("KAFKA_DAGSTER_LOG_FORMAT", _log_format, "text"),
        data_dir=read("KAFKA_DAGSTER_DATA_DIR", _directory, default_data_dir()),
        kafka_security=load_kafka_security(env),
        schema_registry=load_registry_settings(env),
        transactions=read("KAFKA_DAGSTER_TRANSACTIONS", _transactions_mode, "auto"),
        dead_letter_flush_s=read("KAFKA_DAGSTER_DEAD_LETTER_FLUSH_S", _positive_float, "0.5"),
        transactional_id_prefix_setting=env.get("KAFKA_DAGSTER_TRANSACTIONAL_ID_PREFIX") or None,
    )


def load_registry_settings(env: Mapping[str, str] | None = None) -> RegistrySettings:
    """The schema registry's URL, credentials and CA from the environment (never from the routes file)."""
    env = os.environ if env is None else env
    read = _Reader(env)
    url = env.get("KAFKA_DAGSTER_SCHEMA_REGISTRY_URL", "").strip() or None
    username = env.get("KAFKA_DAGSTER_SCHEMA_REGISTRY_USERNAME") or None
    password = env.get("KAFKA_DAGSTER_SCHEMA_REGISTRY_PASSWORD") or None
    if (username is None) != (password is None):
        missing = "KAFKA_DAGSTER_SCHEMA_REGISTRY_PASSWORD" if password is None else \
            "KAFKA_DAGSTER_SCHEMA_REGISTRY_USERNAME"
        raise ConfigurationError(f"invalid setting {missing}: basic auth needs both the username and the password")
    cafile = _optional_file("KAFKA_DAGSTER_SCHEMA_REGISTRY_CAFILE", env, read)
    if cafile is not None:
        try:
            ssl.create_default_context(cafile=cafile)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigurationError(f"invalid setting KAFKA_DAGSTER_SCHEMA_REGISTRY_CAFILE={cafile!r}: not a PEM "
                                     f"certificate bundle ({exc.__class__.__name__})") from None
    if url is not None:
        _check_registry_url(url, cafile, "KAFKA_DAGSTER_SCHEMA_REGISTRY_URL")
    timeout_s = read("KAFKA_DAGSTER_SCHEMA_REGISTRY_TIMEOUT_S", _positive_float, "10")
    return RegistrySettings(url, username, password, cafile, timeout_s)


def _check_registry_url(url: str, cafile: str | None, name: str) -> None:
    try:
        _http_url(url)
    except ValueError as exc:
        raise ConfigurationError(f"invalid setting {name}: {exc}") from None  # the URL may hold a secret
    if urlparse(url).password is not None or "@" in urlparse(url).netloc:
        raise ConfigurationError(f"invalid setting {name}: credentials in the URL; set "
                                 "KAFKA_DAGSTER_SCHEMA_REGISTRY_USERNAME and _PASSWORD instead")
    if cafile is not None and not url.startswith("https://"):
        raise ConfigurationError(f"invalid setting KAFKA_DAGSTER_SCHEMA_REGISTRY_CAFILE: {name} is not an "
                                 "https:// URL")


def default_data_dir() -> str:
    """Where Faust's data directory goes by default: a folder of this user's under the temporary directory.

    The worker keeps no state there (its tables are in memory), but Faust creates
    `<group>-data` at start; by default it would in the working directory.
    """
    return str(Path(tempfile.gettempdir()) / f"kafka-dagster-{os.getuid()}")


def load_kafka_security(env: Mapping[str, str] | None = None) -> KafkaSecurity:
    """The Kafka TLS/SASL settings alone (the CLI's produce and dlq commands need no more).

    A combination that cannot work, or would silently not protect what the
    operator asked for (a CA file with PLAINTEXT, SASL without a password),
    fails here with one line naming the setting.
    """
    env = os.environ if env is None else env
    read = _Reader(env)
    security = KafkaSecurity(
        protocol=read(ENV["protocol"], _choice(PROTOCOLS), "PLAINTEXT"),
        sasl_mechanism=read(ENV["sasl_mechanism"], _choice(MECHANISMS), "PLAIN"),
        sasl_username=env.get(ENV["sasl_username"]) or None,
        sasl_password=env.get(ENV["sasl_password"]) or None,
        ssl_cafile=_optional_file(ENV["ssl_cafile"], env, read),
        ssl_certfile=_optional_file(ENV["ssl_certfile"], env, read),
        ssl_keyfile=_optional_file(ENV["ssl_keyfile"], env, read),
    )
    _check_kafka_security(security, env)
    return security


def _dagster_cafile(name: str, env: Mapping[str, str], read: _Reader) -> str | None:
    """A private CA for an https:// DAGSTER_GRAPHQL_URL; with http:// it would protect nothing."""
    cafile = _optional_file(name, env, read)
    if cafile is None:
        return None
    if not env.get("DAGSTER_GRAPHQL_URL", "").strip().startswith("https://"):
        raise ConfigurationError(f"invalid setting {name}: DAGSTER_GRAPHQL_URL is not an https:// URL")
    try:
        ssl.create_default_context(cafile=cafile)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(f"invalid setting {name}={cafile!r}: not a PEM certificate bundle "
                                 f"({exc.__class__.__name__})") from None
    return cafile


def _optional_file(name: str, env: Mapping[str, str], read: _Reader) -> str | None:
    if not env.get(name, "").strip():
        return None
    return str(read(name, _existing_file, ""))


def _check_kafka_security(security: KafkaSecurity, env: Mapping[str, str]) -> None:
    protocol = f"{ENV['protocol']}={security.protocol}"
    if security.uses_sasl:
        for field in ("sasl_username", "sasl_password"):
            if not getattr(security, field):
                raise ConfigurationError(f"invalid setting {ENV[field]}: must be set with {protocol}")
    else:
        for name in (ENV["sasl_username"], ENV["sasl_password"]):
            if env.get(name):
                raise ConfigurationError(f"invalid setting {name}: {protocol} does not use SASL; "
                                         "use SASL_PLAINTEXT or SASL_SSL, or unset it")
    if not security.uses_ssl:
        for name in (ENV["ssl_cafile"], ENV["ssl_certfile"], ENV["ssl_keyfile"]):
            if env.get(name, "").strip():
                raise ConfigurationError(f"invalid setting {name}: {protocol} does not use TLS; "
                                         "use SSL or SASL_SSL, or unset it")
        return
    if security.ssl_keyfile and not security.ssl_certfile:
        raise ConfigurationError("invalid setting KAFKA_SSL_KEYFILE: needs KAFKA_SSL_CERTFILE")
    _check_tls_files(security)


def _check_tls_files(security: KafkaSecurity) -> None:
    """Load the CA and client certificate once now, so a bad file fails at start, not at first connect."""
    try:
        ssl.create_default_context(cafile=security.ssl_cafile)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(f"invalid setting KAFKA_SSL_CAFILE={security.ssl_cafile!r}: "
                                 f"not a PEM certificate bundle ({exc.__class__.__name__})") from None
    try:
        ssl_context(security)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(f"invalid setting KAFKA_SSL_CERTFILE={security.ssl_certfile!r}: cannot load "
                                 f"it with KAFKA_SSL_KEYFILE ({exc.__class__.__name__})") from None


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


def _directory(raw: str) -> Path:
    path = Path(raw)
    if path.exists() and not path.is_dir():
        raise ValueError("not a directory")
    return path


def _choice(allowed: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.upper()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
    return level


def _transactions_mode(raw: str) -> str:
    if raw not in ("auto", "on", "off"):
        raise ValueError("must be 'auto', 'on' or 'off'")
    return raw


def _log_format(raw: str) -> str:
    if raw not in ("text", "json"):
        raise ValueError("must be 'text' or 'json'")
    return raw
