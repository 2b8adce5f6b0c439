"""The Apache Kafka test broker's configuration and the suite's broker choice, without starting a broker."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from service.dev.apache_kafka import (
    LOG4J2_CONFIG,
    TEST_PROPERTIES,
    ApacheKafka,
    logging_flag,
    new_cluster_id,
    server_properties,
)
from service.dev.kafka_jars import KAFKA4_VERSION, KAFKA_VERSION, build_file, kafka_jars
from service.dev.stack import Broker, StackError
from tests.brokers import BOOTSTRAP_ENV, BROKER_ENV, ExternalCluster, new_broker, selected_broker


def parsed(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


def test_server_properties_describe_one_combined_kraft_node_on_two_ports() -> None:
    properties = parsed(server_properties(9092, 9093, Path("/data")))

    assert properties["process.roles"] == "broker,controller"
    assert properties["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert properties["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert properties["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    assert properties["log.dirs"] == "/data"
    assert properties["auto.create.topics.enable"] == "false"
    assert properties["offsets.topic.replication.factor"] == "1"


def test_extra_properties_replace_the_test_defaults() -> None:
    properties = parsed(server_properties(1, 2, Path("/d"), {"auto.create.topics.enable": "true", "x.y": "z"}))

    assert properties["auto.create.topics.enable"] == "true"
    assert properties["x.y"] == "z"


def test_the_tests_session_timeout_is_within_the_brokers_bounds() -> None:
    assert int(TEST_PROPERTIES["group.min.session.timeout.ms"]) <= 10_000  # KAFKA_DAGSTER_SESSION_TIMEOUT_S=10


def test_a_cluster_id_is_a_uuid_in_22_url_safe_characters() -> None:
    cluster_id = new_cluster_id()

    assert len(cluster_id) == 22
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    assert cluster_id != new_cluster_id()


def test_no_cluster_id_starts_with_a_dash_the_storage_tool_would_read_as_an_option() -> None:
    assert not any(new_cluster_id().startswith("-") for _ in range(2000))


def test_the_pinned_build_file_names_the_broker_and_its_logging_binding() -> None:
    pom = build_file().read_text()

    assert f"<version>{KAFKA_VERSION}</version>" in pom
    assert "<artifactId>kafka_2.13</artifactId>" in pom
    assert "<artifactId>slf4j-reload4j</artifactId>" in pom
    assert "<artifactId>maven-dependency-plugin</artifactId>" in pom


def test_the_pinned_4x_build_file_brings_the_log4j2_binding_of_slf4j_1_7() -> None:
    pom = build_file(KAFKA4_VERSION).read_text()

    assert KAFKA4_VERSION.startswith("4.")
    assert f"<version>{KAFKA4_VERSION}</version>" in pom
    assert "<artifactId>log4j-slf4j-impl</artifactId>" in pom  # kafka 4.x resolves slf4j-api 1.7.36
    assert "slf4j-reload4j" not in pom


def test_kafka_4_reads_a_log4j2_config_and_3_a_log4j_one() -> None:
    assert logging_flag(KAFKA4_VERSION) == f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}"
    assert LOG4J2_CONFIG.is_file()
    assert logging_flag(KAFKA_VERSION).startswith("-Dlog4j.configuration=file:")


def test_only_kafka_4_gets_the_share_coordinator_defaults() -> None:
    four = parsed(server_properties(1, 2, Path("/d"), version=KAFKA4_VERSION))
    three = parsed(server_properties(1, 2, Path("/d"), version=KAFKA_VERSION))

    assert four["share.coordinator.state.topic.replication.factor"] == "1"
    assert "share.coordinator.state.topic.replication.factor" not in three


def test_a_version_without_a_build_file_fails_with_one_line() -> None:
    with pytest.raises(StackError, match=r"no build file for Apache Kafka 0\.0\.0"):
        kafka_jars("0.0.0")


def test_a_broker_keeps_its_data_config_and_log_under_its_workdir(tmp_path: Path) -> None:
    broker = ApacheKafka(tmp_path, name="k")

    assert broker.log_dir == tmp_path / "k-data"
    assert broker.bootstrap_servers == f"127.0.0.1:{broker.port}"
    assert broker.process.argv[-2:] == ["kafka.Kafka", str(tmp_path / "k.properties")]


def test_the_suite_runs_apache_kafka_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(BROKER_ENV, raising=False)
    assert selected_broker() == "apache"
    assert isinstance(new_broker(tmp_path), ApacheKafka)

    monkeypatch.setenv(BROKER_ENV, "Tansu")
    assert selected_broker() == "tansu"
    assert isinstance(new_broker(tmp_path), Broker)


def test_an_unknown_broker_kind_is_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BROKER_ENV, "redpanda")

    with pytest.raises(ValueError, match=f"invalid setting {BROKER_ENV}='redpanda'"):
        selected_broker()


def test_a_cluster_of_your_own_needs_its_bootstrap_address(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(BROKER_ENV, "external")
    monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    with pytest.raises(ValueError, match=f"needs {BOOTSTRAP_ENV}=host:port"):
        new_broker(tmp_path)
    monkeypatch.setenv(BOOTSTRAP_ENV, "kafka-1.internal:9092")
    cluster = new_broker(tmp_path)
    assert isinstance(cluster, ExternalCluster) and cluster.bootstrap_servers == "kafka-1.internal:9092"
