"""load_settings: contract defaults, one-line errors naming the variable, no token in repr."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import ConfigurationError
from service.settings import Settings, load_settings


@pytest.fixture
def routes_file(tmp_path: Path) -> Path:
    path = tmp_path / "routes.toml"
    path.write_text("")
    return path


@pytest.fixture
def env(routes_file: Path) -> dict[str, str]:
    return {"KAFKA_DAGSTER_ROUTES": str(routes_file)}


def test_defaults(env: dict[str, str], routes_file: Path) -> None:
    settings = load_settings(env)
    assert settings.bootstrap_servers == "localhost:9092"
    assert settings.dagster_graphql_url == "http://localhost:3000/graphql"
    assert settings.dagster_api_token is None
    assert settings.routes_path == routes_file
    assert settings.group_id == "kafka-dagster"
    assert settings.dlq_topic == "kafka-dagster.dlq"
    assert settings.web_port == 6066
    assert settings.broker_urls == ["kafka://localhost:9092"]
    assert settings == Settings(routes_path=routes_file)


def test_default_routes_path_is_routes_toml_in_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "routes.toml").write_text("")
    assert load_settings({}).routes_path == Path("routes.toml")


def test_reads_the_process_environment_by_default(
        routes_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_DAGSTER_ROUTES", str(routes_file))
    monkeypatch.setenv("KAFKA_DAGSTER_GROUP_ID", "from-os-environ")
    assert load_settings().group_id == "from-os-environ"


def test_every_contract_variable_is_read(env: dict[str, str]) -> None:
    env.update(
        KAFKA_BOOTSTRAP_SERVERS="k1:9092, k2:9093",
        DAGSTER_GRAPHQL_URL="https://dagster.example.com/graphql",
        DAGSTER_API_TOKEN="s3cr3t-t0ken",
        KAFKA_DAGSTER_GROUP_ID="g1",
        KAFKA_DAGSTER_DLQ_TOPIC="my.dlq",
        KAFKA_DAGSTER_WEB_PORT="8080",
        KAFKA_DAGSTER_LOG_LEVEL="debug",
    )
    settings = load_settings(env)
    assert settings.bootstrap_servers == "k1:9092, k2:9093"
    assert settings.broker_urls == ["kafka://k1:9092", "kafka://k2:9093"]
    assert settings.dagster_graphql_url == "https://dagster.example.com/graphql"
    assert settings.dagster_api_token == "s3cr3t-t0ken"
    assert (settings.group_id, settings.dlq_topic, settings.web_port) == ("g1", "my.dlq", 8080)
    assert settings.log_level == "DEBUG"


def test_empty_values_mean_the_default(env: dict[str, str]) -> None:
    env.update(KAFKA_DAGSTER_WEB_PORT="", DAGSTER_API_TOKEN="", KAFKA_DAGSTER_GROUP_ID="  ")
    settings = load_settings(env)
    assert settings.web_port == 6066
    assert settings.dagster_api_token is None
    assert settings.group_id == "kafka-dagster"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KAFKA_DAGSTER_WEB_PORT", "abc"),
        ("KAFKA_DAGSTER_WEB_PORT", "0"),
        ("KAFKA_DAGSTER_WEB_PORT", "-1"),
        ("KAFKA_DAGSTER_WEB_PORT", "65536"),
        ("KAFKA_DAGSTER_WEB_PORT", "80.5"),
        ("KAFKA_BOOTSTRAP_SERVERS", "localhost"),
        ("KAFKA_BOOTSTRAP_SERVERS", "localhost:abc"),
        ("KAFKA_BOOTSTRAP_SERVERS", ":9092"),
        ("KAFKA_BOOTSTRAP_SERVERS", "a:1,,b:2"),
        ("DAGSTER_GRAPHQL_URL", "localhost:3000/graphql"),
        ("DAGSTER_GRAPHQL_URL", "ftp://dagster/graphql"),
        ("DAGSTER_GRAPHQL_URL", "http://"),
        ("KAFKA_DAGSTER_ROUTES", "/no/such/routes.toml"),
        ("KAFKA_DAGSTER_SESSION_TIMEOUT_S", "soon"),
        ("KAFKA_DAGSTER_SESSION_TIMEOUT_S", "0"),
        ("KAFKA_DAGSTER_SESSION_TIMEOUT_S", "nan"),
        ("KAFKA_DAGSTER_MAX_MESSAGE_BYTES", "1MB"),
        ("KAFKA_DAGSTER_MAX_MESSAGE_BYTES", "0"),
        ("KAFKA_DAGSTER_QUEUED_BATCHES", "-4"),
        ("KAFKA_DAGSTER_DAGSTER_TIMEOUT_S", "-1"),
        ("KAFKA_DAGSTER_RETRY_MAX_DELAY_S", "x"),
        ("KAFKA_DAGSTER_SHUTDOWN_TIMEOUT_S", "0"),
        ("KAFKA_DAGSTER_MAX_INFLIGHT_RUNS", "many"),
        ("KAFKA_DAGSTER_LOG_LEVEL", "LOUD"),
        ("KAFKA_DAGSTER_LOG_FORMAT", "xml"),
    ],
)
def test_bad_value_fails_with_one_line_naming_the_variable(env: dict[str, str], name: str, value: str) -> None:
    env[name] = value
    with pytest.raises(ConfigurationError) as info:
        load_settings(env)
    message = str(info.value)
    assert "\n" not in message
    assert name in message
    assert value in message


def test_routes_path_that_is_a_directory(env: dict[str, str], tmp_path: Path) -> None:
    env["KAFKA_DAGSTER_ROUTES"] = str(tmp_path)
    with pytest.raises(ConfigurationError, match="KAFKA_DAGSTER_ROUTES"):
        load_settings(env)


def test_a_value_with_a_newline_still_gives_one_line(env: dict[str, str]) -> None:
    env["KAFKA_DAGSTER_WEB_PORT"] = "80\n80"
    with pytest.raises(ConfigurationError) as info:
        load_settings(env)
    assert "\n" not in str(info.value)
    assert "KAFKA_DAGSTER_WEB_PORT" in str(info.value)


def test_token_never_appears_in_repr(env: dict[str, str]) -> None:
    env["DAGSTER_API_TOKEN"] = "tok-9f8e7d6c5b4a"
    settings = load_settings(env)
    assert settings.dagster_api_token == "tok-9f8e7d6c5b4a"
    for text in (repr(settings), str(settings), f"{settings}", f"{settings!r}", repr([settings])):
        assert "tok-9f8e7d6c5b4a" not in text
    assert "dagster_api_token='***'" in repr(settings)
    assert "dagster_api_token=None" in repr(load_settings({**env, "DAGSTER_API_TOKEN": ""}))


def test_token_never_appears_in_a_configuration_error(env: dict[str, str]) -> None:
    env.update(DAGSTER_API_TOKEN="tok-9f8e7d6c5b4a", KAFKA_DAGSTER_WEB_PORT="abc")
    with pytest.raises(ConfigurationError) as info:
        load_settings(env)
    assert "tok-9f8e7d6c5b4a" not in str(info.value)


def test_settings_are_frozen(env: dict[str, str]) -> None:
    settings = load_settings(env)
    with pytest.raises(AttributeError):
        settings.web_port = 1  # type: ignore[misc]


def test_dagster_private_ca_needs_https(env: dict[str, str], tmp_path: Path) -> None:
    from tests.tls import make_ca

    ca = make_ca(tmp_path, "dagster-ca")
    env.update(DAGSTER_GRAPHQL_URL="https://dagster.internal/graphql", DAGSTER_SSL_CAFILE=str(ca.cert))
    assert load_settings(env).dagster_ssl_cafile == str(ca.cert)
    for bad, named in ((dict(DAGSTER_GRAPHQL_URL="http://dagster.internal/graphql"), "DAGSTER_SSL_CAFILE"),
                       (dict(DAGSTER_SSL_CAFILE="/etc/hostname"), "DAGSTER_SSL_CAFILE"),
                       (dict(DAGSTER_SSL_CAFILE="/no/such.pem"), "DAGSTER_SSL_CAFILE")):
        with pytest.raises(ConfigurationError, match=named) as info:
            load_settings({**env, **bad})
        assert "\n" not in str(info.value)


def test_json_bounds_are_settings(env: dict[str, str]) -> None:
    assert (load_settings(env).max_json_depth, load_settings(env).max_json_keys) == (32, 10_000)
    env.update(KAFKA_DAGSTER_MAX_JSON_DEPTH="8", KAFKA_DAGSTER_MAX_JSON_KEYS="100")
    assert (load_settings(env).max_json_depth, load_settings(env).max_json_keys) == (8, 100)
    for name in ("KAFKA_DAGSTER_MAX_JSON_DEPTH", "KAFKA_DAGSTER_MAX_JSON_KEYS"):
        with pytest.raises(ConfigurationError, match=name):
            load_settings({**env, name: "0"})


def test_schema_registry_settings_come_from_the_environment(env: dict[str, str]) -> None:
    settings = load_settings({**env, "KAFKA_DAGSTER_SCHEMA_REGISTRY_URL": "http://registry:8081",
                              "KAFKA_DAGSTER_SCHEMA_REGISTRY_USERNAME": "svc",
                              "KAFKA_DAGSTER_SCHEMA_REGISTRY_PASSWORD": "s3cret"})
    registry = settings.schema_registry
    assert (registry.url, registry.username, registry.password, registry.timeout_s) == (
        "http://registry:8081", "svc", "s3cret", 10.0)
    assert "s3cret" not in repr(settings) and "s3cret" not in repr(registry)
    assert registry.with_url("http://other:8081") is registry  # the environment wins over the routes file
    assert load_settings(env).schema_registry.with_url("http://file:8081").url == "http://file:8081"


@pytest.mark.parametrize(("extra", "named"), [
    ({"KAFKA_DAGSTER_SCHEMA_REGISTRY_URL": "registry:8081"}, "KAFKA_DAGSTER_SCHEMA_REGISTRY_URL"),
    ({"KAFKA_DAGSTER_SCHEMA_REGISTRY_URL": "http://u:p@registry:8081"}, "KAFKA_DAGSTER_SCHEMA_REGISTRY_URL"),
    ({"KAFKA_DAGSTER_SCHEMA_REGISTRY_USERNAME": "svc"}, "KAFKA_DAGSTER_SCHEMA_REGISTRY_PASSWORD"),
    ({"KAFKA_DAGSTER_SCHEMA_REGISTRY_PASSWORD": "pw"}, "KAFKA_DAGSTER_SCHEMA_REGISTRY_USERNAME"),
    ({"KAFKA_DAGSTER_SCHEMA_REGISTRY_CAFILE": "/nonexistent.pem"}, "KAFKA_DAGSTER_SCHEMA_REGISTRY_CAFILE"),
    ({"KAFKA_DAGSTER_SCHEMA_REGISTRY_TIMEOUT_S": "0"}, "KAFKA_DAGSTER_SCHEMA_REGISTRY_TIMEOUT_S"),
])
def test_bad_schema_registry_settings_name_the_variable(env: dict[str, str], extra: dict[str, str],
                                                        named: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings({**env, **extra})
    assert named in str(info.value) and "\n" not in str(info.value)
    assert ":p@" not in str(info.value)


def test_a_relaunch_never_waits_longer_than_a_paused_route(routes_file: Path) -> None:
    from service.delivery.config import DeliverySettings

    assert DeliverySettings.from_settings(Settings(routes_path=routes_file)).relaunch_max_delay_s == 60.0
    short = Settings(routes_path=routes_file, route_retry_max_delay_s=2.0)
    assert DeliverySettings.from_settings(short).relaunch_max_delay_s == 2.0
