"""Kafka TLS/SASL settings: validation at start, and what each client is built with.

SASL cannot be completed against a real broker here (docs/security.md), so
these tests pin the client boundary: the arguments aiokafka, Faust and the
code location's resource receive for each protocol and mechanism.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from dagster_project.resources import KafkaResource
from service.app import create_app, faust_credentials
from service.errors import ConfigurationError
from service.kafka.security import KafkaSecurity, aiokafka_kwargs
from service.settings import load_kafka_security, load_settings
from tests.tls import CertPair, issue_server_cert, make_ca

PASSWORD = "pw-7c1d9e2f4a6b"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertPair, CertPair]:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "unit-ca")
    return ca, issue_server_cert(directory, ca, "client")


def sasl_env(protocol: str = "SASL_PLAINTEXT", mechanism: str = "SCRAM-SHA-512") -> dict[str, str]:
    return {"KAFKA_SECURITY_PROTOCOL": protocol, "KAFKA_SASL_MECHANISM": mechanism,
            "KAFKA_SASL_USERNAME": "alice", "KAFKA_SASL_PASSWORD": PASSWORD}


def test_plaintext_by_default() -> None:
    security = load_kafka_security({})
    assert security == KafkaSecurity()
    assert aiokafka_kwargs(security) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(security) is None


def test_ssl_verifies_the_broker_against_the_ca_file(pki: tuple[CertPair, CertPair]) -> None:
    ca, _ = pki
    security = load_kafka_security({"KAFKA_SECURITY_PROTOCOL": "ssl", "KAFKA_SSL_CAFILE": str(ca.cert)})
    kwargs = aiokafka_kwargs(security)
    assert kwargs["security_protocol"] == "SSL"
    context: ssl.SSLContext = kwargs["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "unit-ca"),),)]
    assert credentials_to_aiokafka_auth(faust_credentials(security))["security_protocol"] == "SSL"


def test_ssl_without_a_ca_file_uses_the_system_cas() -> None:
    context = aiokafka_kwargs(load_kafka_security({"KAFKA_SECURITY_PROTOCOL": "SSL"}))["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_client_certificate_is_loaded(pki: tuple[CertPair, CertPair]) -> None:
    ca, client = pki
    security = load_kafka_security({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(ca.cert),
                                    "KAFKA_SSL_CERTFILE": str(client.cert), "KAFKA_SSL_KEYFILE": str(client.key)})
    assert (security.ssl_certfile, security.ssl_keyfile) == (str(client.cert), str(client.key))
    assert aiokafka_kwargs(security)["ssl_context"] is not None


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_reaches_aiokafka_and_faust_alike(protocol: str, mechanism: str) -> None:
    security = load_kafka_security(sasl_env(protocol, mechanism))
    expected = {"security_protocol": protocol, "sasl_mechanism": mechanism,
                "sasl_plain_username": "alice", "sasl_plain_password": PASSWORD}
    ours = aiokafka_kwargs(security)
    faust_side = credentials_to_aiokafka_auth(faust_credentials(security))
    for kwargs in (ours, faust_side):
        assert {k: kwargs[k] for k in expected} == expected
        assert (kwargs.get("ssl_context") is not None) == (protocol == "SASL_SSL")


async def test_every_aiokafka_client_accepts_the_arguments() -> None:
    kwargs = aiokafka_kwargs(load_kafka_security(sasl_env("SASL_SSL", "SCRAM-SHA-256")))
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", **kwargs)
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", **kwargs)
    admin = AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:1", **kwargs)
    try:
        for inner in (producer.client, consumer._client, admin._client):
            assert inner._security_protocol == "SASL_SSL"
            assert inner._sasl_mechanism == "SCRAM-SHA-256"
            assert inner._sasl_plain_password == PASSWORD
            assert inner._ssl_context is kwargs["ssl_context"]
    finally:
        await producer.stop()
        await consumer.stop()
        await admin.close()


def test_faust_app_gets_the_credentials(tmp_path: Path) -> None:
    (tmp_path / "routes.toml").write_text("")
    settings = load_settings({"KAFKA_DAGSTER_ROUTES": str(tmp_path / "routes.toml"), **sasl_env("SASL_SSL")})
    app = create_app(settings)
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
    assert (auth["security_protocol"], auth["sasl_mechanism"], auth["sasl_plain_username"]) == (
        "SASL_SSL", "SCRAM-SHA-512", "alice")


def test_code_location_resource_maps_the_same_way() -> None:
    resource = KafkaResource(bootstrap_servers="k:9092", security_protocol="SASL_SSL",
                             sasl_mechanism="SCRAM-SHA-256", sasl_username="alice", sasl_password=PASSWORD)
    kwargs = resource.client_kwargs()
    assert kwargs["bootstrap_servers"] == "k:9092"
    assert (kwargs["security_protocol"], kwargs["sasl_mechanism"], kwargs["sasl_plain_password"]) == (
        "SASL_SSL", "SCRAM-SHA-256", PASSWORD)
    with pytest.raises(ConfigurationError, match="KAFKA_SASL_PASSWORD"):
        KafkaResource(bootstrap_servers="k:9092", security_protocol="SASL_SSL", sasl_username="a").client_kwargs()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
        ({**sasl_env(), "KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM"),
        ({**sasl_env(), "KAFKA_SASL_USERNAME": ""}, "KAFKA_SASL_USERNAME"),
        ({**sasl_env(), "KAFKA_SASL_PASSWORD": ""}, "KAFKA_SASL_PASSWORD"),
        ({**sasl_env(), "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}, "KAFKA_SASL_USERNAME"),
        ({**sasl_env(), "KAFKA_SECURITY_PROTOCOL": "SSL"}, "KAFKA_SASL_USERNAME"),
        ({"KAFKA_SASL_PASSWORD": PASSWORD}, "KAFKA_SASL_PASSWORD"),
        ({"KAFKA_SSL_CAFILE": "/etc/hostname"}, "KAFKA_SSL_CAFILE"),
        ({**sasl_env(), "KAFKA_SSL_CAFILE": "/etc/hostname"}, "KAFKA_SSL_CAFILE"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/no/such/ca.pem"}, "KAFKA_SSL_CAFILE"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/etc/hostname"}, "KAFKA_SSL_CAFILE"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_KEYFILE": "/etc/hostname"}, "KAFKA_SSL_KEYFILE"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": "/etc/hostname"}, "KAFKA_SSL_CERTFILE"),
    ],
)
def test_bad_combination_fails_with_one_line_naming_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_kafka_security(env)
    message = str(info.value)
    assert "\n" not in message and named in message, message
    assert PASSWORD not in message


def test_password_never_in_repr(tmp_path: Path) -> None:
    (tmp_path / "routes.toml").write_text("")
    settings = load_settings({"KAFKA_DAGSTER_ROUTES": str(tmp_path / "routes.toml"), **sasl_env("SASL_SSL")})
    for text in (repr(settings), repr(settings.kafka_security), str(settings.kafka_security),
                 settings.kafka_security.describe(), repr(faust_credentials(settings.kafka_security))):
        assert PASSWORD not in text
    assert settings.kafka_security.describe() == "SASL_SSL (SCRAM-SHA-512 as 'alice')"


def test_code_location_reads_the_settings_as_env_vars_and_shows_only_their_names(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What docker-compose gives the code server (.env, empty values included) resolves; the password stays out."""
    import dagster as dg

    from dagster_project.definitions import build_definitions

    for name, value in {**sasl_env("SASL_SSL", "SCRAM-SHA-256"), "KAFKA_SSL_CAFILE": "", "KAFKA_SSL_CERTFILE": "",
                        "KAFKA_SSL_KEYFILE": ""}.items():
        monkeypatch.setenv(name, value)
    resource = build_definitions(["orders"]).resources["kafka"]
    assert PASSWORD not in repr(resource) and "sasl_password='KAFKA_SASL_PASSWORD'" in repr(resource)
    with dg.build_resources({"kafka": resource}) as resources:
        kwargs = resources.kafka.client_kwargs()
    assert (kwargs["security_protocol"], kwargs["sasl_mechanism"], kwargs["sasl_plain_password"]) == (
        "SASL_SSL", "SCRAM-SHA-256", PASSWORD)


async def test_an_unreachable_broker_is_not_a_security_failure(caplog: pytest.LogCaptureFixture) -> None:
    """The worker starts and retries as without TLS; only a broker that answers and refuses ends it."""
    from service.dev.stack import free_port
    from service.kafka import check_security

    await check_security(f"127.0.0.1:{free_port()}", KafkaSecurity(protocol="SSL"), timeout_s=2)
    assert "TLS/SASL not checked yet" in caplog.text
    await check_security("127.0.0.1:1", KafkaSecurity())  # PLAINTEXT: nothing to check, no connection
