"""Kafka over TLS, for real: an Apache Kafka broker of this module's own with TLS listeners, and a CA made
in the test.

The broker listens on PLAINTEXT (the protocol-mismatch test), SSL (the
broker's certificate verified by the client) and MTLS (SSL with
`ssl.client.auth=required`: a client certificate from the test's CA). It
advertises each listener's own address, so metadata sends every client back
through the listener it came in by: nothing reaches the broker in the clear.
The worker, the CLI and the code location's Kafka resource use the same
settings and the same mapping (`service.kafka.security`). SASL logins:
tests/test_kafka_sasl.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from dagster_project.resources import KafkaMessage, KafkaResource
from service.dev.apache_kafka import ApacheKafka
from service.dlq import DeadLetter
from service.kafka import Producer, ensure_topics, read_topic
from service.kafka.security import KafkaSecurity
from tests.conftest import Stack
from tests.support import ROOT, DagsterApi, eventually, finished_runs, route_toml, unique
from tests.test_kafka_sasl import distinct_free_ports
from tests.tls import CertPair, issue_server_cert, make_ca

pytestmark = pytest.mark.integration

LISTENERS = ("PLAINTEXT", "SSL", "MTLS")


@dataclass
class TlsBroker:
    broker: ApacheKafka
    ports: dict[str, int]  # listener name -> port
    ca: CertPair
    other_ca: CertPair  # a CA the broker's certificate is not from, and the stranger's certificate is
    client: CertPair  # a client certificate the MTLS listener accepts
    stranger: CertPair  # a client certificate from the other CA


@pytest.fixture(scope="module")
def tls_broker(stack: Stack) -> Iterator[TlsBroker]:
    workdir = stack.workdir / unique("tls-kafka")
    ca, other_ca = make_ca(workdir, "test-ca"), make_ca(workdir, "untrusted-ca")
    server = issue_server_cert(workdir, ca)
    client = issue_server_cert(workdir, ca, "kafka-dagster-client", usage="clientAuth")
    stranger = issue_server_cert(workdir, other_ca, "stranger-client", usage="clientAuth")
    keystore = workdir / "server-keystore.pem"  # Kafka's PEM keystore: the key, then the certificate
    keystore.write_text(server.key.read_text() + server.cert.read_text())
    controller, *listener_ports = distinct_free_ports(1 + len(LISTENERS))
    ports = dict(zip(LISTENERS, listener_ports, strict=True))
    broker = ApacheKafka(workdir, port=ports["PLAINTEXT"], name="tls-kafka")
    broker.controller_port = controller
    listeners = {name: f"{name}://127.0.0.1:{port}" for name, port in ports.items()}
    broker.extra_properties = {
        "listeners": ",".join([*listeners.values(), f"CONTROLLER://127.0.0.1:{controller}"]),
        "advertised.listeners": ",".join(listeners.values()),
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,SSL:SSL,MTLS:SSL,CONTROLLER:PLAINTEXT",
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(ca.cert),
        "listener.name.mtls.ssl.client.auth": "required",
    }
    try:
        broker.start()
        yield TlsBroker(broker, ports, ca, other_ca, client, stranger)
    finally:
        broker.stop()


@dataclass
class TlsKafka:
    bootstrap: str  # the SSL listener: TLS only
    plaintext_port: int  # the same broker's PLAINTEXT listener, for the protocol-mismatch test
    ca: CertPair
    other_ca: CertPair

    @property
    def security(self) -> KafkaSecurity:
        return KafkaSecurity(protocol="SSL", ssl_cafile=str(self.ca.cert))

    def env(self, cafile: Path | None = None) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "KAFKA_SECURITY_PROTOCOL": "SSL",
                "KAFKA_SSL_CAFILE": str(cafile or self.ca.cert)}


@pytest.fixture(scope="module")
def tls_kafka(tls_broker: TlsBroker) -> TlsKafka:
    """The broker's SSL listener: the broker's certificate verified, no client certificate asked for."""
    return TlsKafka(f"127.0.0.1:{tls_broker.ports['SSL']}", tls_broker.ports["PLAINTEXT"], tls_broker.ca,
                    tls_broker.other_ca)


async def _produce(kafka: TlsKafka, topic: str, values: list[bytes]) -> None:
    await ensure_topics(kafka.bootstrap, {topic: 1}, kafka.security)
    producer = Producer(kafka.bootstrap, security=kafka.security)
    try:
        await producer.send_batch(topic, [(None, v) for v in values])
    finally:
        await producer.stop()


async def _dead_letters(kafka: TlsKafka, dlq_topic: str) -> list[DeadLetter]:
    try:
        messages = await read_topic(kafka.bootstrap, dlq_topic, timeout_s=10, security=kafka.security)
    except Exception:
        return []
    return [DeadLetter.parse(m.key, m.value, m.timestamp, list(m.headers or ()), offset)  # type: ignore[attr-defined]
            for _, offset, m in messages]


async def test_worker_consumes_launches_and_dead_letters_through_tls(
        tls_kafka: TlsKafka, dagster_api: DagsterApi, start_worker) -> None:
    topic, dlq_topic = unique("tls-orders"), unique("tls-dlq")
    good = [orjson.dumps({"order_id": f"o-{i}", "customer": "c", "amount": 1.0}) for i in range(20)]
    await _produce(tls_kafka, topic, [*good[:10], b"{not json", *good[10:]])

    await start_worker(route_toml(topic, max_records=50, max_wait_s=1.0), KAFKA_DAGSTER_DLQ_TOPIC=dlq_topic,
                       **tls_kafka.env())

    runs = await eventually(lambda: finished_runs(dagster_api, topic, 20), 180, "runs covering the 20 good records")
    assert {r["status"] for r in runs} == {"SUCCESS"}
    letters = await eventually(lambda: _dead_letters(tls_kafka, dlq_topic), 60, "the dead letter, through TLS")
    assert [(d.origin, d.stage, d.value) for d in letters] == [((topic, 0, 10), "decode", b"{not json")]

    # A run that fails: the worker reads its records back (read_range) and copies them, all through TLS.
    failing = orjson.dumps({"order_id": "o-fail", "customer": "c", "amount": 1.0, "fail_run": True})
    await _produce(tls_kafka, topic, [failing])

    async def run_copy() -> list[DeadLetter]:
        return [d for d in await _dead_letters(tls_kafka, dlq_topic) if d.stage == "run"]

    [copied] = await eventually(run_copy, 180, "the failed run's record copied to the DLQ, through TLS")
    assert (copied.origin, copied.value) == ((topic, 0, 21), failing) and copied.dlq["dlq.run_id"]


def _cli(*args: str, env: dict[str, str], stdin: bytes = b"", timeout_s: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", *args], input=stdin, capture_output=True,
                          env={**os.environ, **env}, cwd=ROOT, timeout=timeout_s)


async def test_cli_produce_and_dlq_inspect_and_replay_through_tls(tls_kafka: TlsKafka) -> None:
    topic = unique("tls-cli")
    done = await asyncio.to_thread(_cli, "produce", "--topic", topic, env=tls_kafka.env(),
                                   stdin=b'{"a": 1}\n{"a": 2}\n')
    assert done.returncode == 0, done.stderr.decode()
    values = [m.value for _, _, m in await read_topic(tls_kafka.bootstrap, topic, security=tls_kafka.security)]  # type: ignore[attr-defined]
    assert [orjson.loads(v) for v in values] == [{"a": 1}, {"a": 2}]

    dlq_topic = unique("tls-cli-dlq")
    await _produce(tls_kafka, dlq_topic, [])
    producer = Producer(tls_kafka.bootstrap, security=tls_kafka.security)
    try:
        await producer.send(dlq_topic, None, b"x", [("dlq.topic", topic.encode()), ("dlq.partition", b"0"),
                                                    ("dlq.offset", b"7"), ("dlq.stage", b"decode")])
    finally:
        await producer.stop()
    done = await asyncio.to_thread(_cli, "dlq", "inspect", "--dlq-topic", dlq_topic, "--json", env=tls_kafka.env())
    assert done.returncode == 0, done.stderr.decode()
    assert orjson.loads(done.stdout.splitlines()[0])["dlq.offset"] == "7"

    replayed = unique("tls-replayed")
    await _produce(tls_kafka, replayed, [])
    done = await asyncio.to_thread(_cli, "dlq", "replay", "--yes", "--dlq-topic", dlq_topic, "--to", replayed,
                                   env=tls_kafka.env())
    assert done.returncode == 0, done.stderr.decode()
    [(_, _, message)] = await read_topic(tls_kafka.bootstrap, replayed, security=tls_kafka.security)
    assert message.value == b"x"  # type: ignore[attr-defined]


async def test_code_location_kafka_resource_through_tls(tls_kafka: TlsKafka) -> None:
    resource = KafkaResource(bootstrap_servers=tls_kafka.bootstrap, security_protocol="SSL",
                             ssl_cafile=str(tls_kafka.ca.cert), request_timeout_s=20)
    topic = unique("tls-resource")
    sent = [KafkaMessage(-1, None, b"k", f"v{i}".encode(), (("h", b"1"),)) for i in range(3)]
    await asyncio.to_thread(resource.publish, topic, sent)
    read = await asyncio.to_thread(resource.read_range, topic, 0, 0, 2)
    assert [(m.offset, m.key, m.value, m.headers) for m in read] == [
        (i, b"k", f"v{i}".encode(), (("h", b"1"),)) for i in range(3)]
    assert (await asyncio.to_thread(resource.end_offsets, [topic]))[topic][0] >= 1


def _one_line_failure(done: subprocess.CompletedProcess) -> str:
    stderr = done.stderr.decode()
    assert done.returncode != 0, stderr
    assert "Traceback" not in stderr, stderr
    return stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("command", [("worker",), ("produce", "--topic", "never-created")])
async def test_untrusted_certificate_fails_at_start_with_one_line(tls_kafka: TlsKafka, tmp_path: Path,
                                                                  command: tuple[str, ...]) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text(route_toml(unique("never")))
    env = {**tls_kafka.env(cafile=tls_kafka.other_ca.cert), "KAFKA_DAGSTER_ROUTES": str(routes)}
    done = await asyncio.to_thread(_cli, *command, env=env, timeout_s=60)
    line = _one_line_failure(done)
    assert "certificate is not trusted" in line and "KAFKA_SSL_CAFILE" in line, line
    assert tls_kafka.bootstrap in line


async def test_tls_to_a_plaintext_listener_fails_at_start_with_one_line(tls_kafka: TlsKafka, tmp_path: Path) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text(route_toml(unique("never")))
    env = {**tls_kafka.env(), "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{tls_kafka.plaintext_port}",
           "KAFKA_DAGSTER_ROUTES": str(routes)}
    done = await asyncio.to_thread(_cli, "worker", env=env, timeout_s=60)
    line = _one_line_failure(done)
    assert "KAFKA_SECURITY_PROTOCOL" in line, line


@dataclass
class MutualTlsKafka:
    bootstrap: str
    ca: CertPair
    client: CertPair
    stranger: CertPair  # a client certificate from another CA

    def env(self, client: CertPair | None) -> dict[str, str]:
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "KAFKA_SECURITY_PROTOCOL": "SSL",
               "KAFKA_SSL_CAFILE": str(self.ca.cert)}
        if client is not None:
            env.update(KAFKA_SSL_CERTFILE=str(client.cert), KAFKA_SSL_KEYFILE=str(client.key))
        return env


@pytest.fixture(scope="module")
def mtls_kafka(tls_broker: TlsBroker) -> MutualTlsKafka:
    """The broker's MTLS listener: it demands a client certificate from the test CA."""
    return MutualTlsKafka(f"127.0.0.1:{tls_broker.ports['MTLS']}", tls_broker.ca, tls_broker.client,
                          tls_broker.stranger)


async def test_client_certificate_through_mutual_tls(mtls_kafka: MutualTlsKafka) -> None:
    topic = unique("mtls")
    done = await asyncio.to_thread(_cli, "produce", "--topic", topic, env=mtls_kafka.env(mtls_kafka.client),
                                   stdin=b'{"mtls": true}\n')
    assert done.returncode == 0, done.stderr.decode()
    resource = KafkaResource(bootstrap_servers=mtls_kafka.bootstrap, security_protocol="SSL",
                             ssl_cafile=str(mtls_kafka.ca.cert), ssl_certfile=str(mtls_kafka.client.cert),
                             ssl_keyfile=str(mtls_kafka.client.key), request_timeout_s=20)
    [message] = await asyncio.to_thread(resource.read_range, topic, 0, 0, 0)
    assert orjson.loads(message.value or b"") == {"mtls": True}


@pytest.mark.parametrize("who", ["no client certificate", "a certificate from another CA"])
async def test_missing_or_foreign_client_certificate_fails_at_start_with_one_line(
        mtls_kafka: MutualTlsKafka, who: str) -> None:
    client = None if who.startswith("no") else mtls_kafka.stranger
    done = await asyncio.to_thread(_cli, "produce", "--topic", unique("never"), env=mtls_kafka.env(client),
                                   stdin=b'{"a": 1}\n', timeout_s=60)
    line = _one_line_failure(done)
    assert mtls_kafka.bootstrap in line and "KAFKA_SSL_CERTFILE" in line, line
