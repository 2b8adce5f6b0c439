"""Apache Kafka as a local process: a single-node KRaft broker for the tests.

The broker runs from the jars `service.dev.kafka_jars` resolves from Maven
Central, as one `java` process that is both broker and controller, in its own
process group. Its log directory is formatted once, on first start, so the
broker can be killed (SIGKILL) and started again on the same data: a restart
keeps every topic, record and committed offset, as a real cluster does.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from service.dev.kafka_jars import KAFKA_VERSION, ROOT, cache_dir, kafka_jars
from service.dev.stack import ManagedProcess, StackError, free_port, port_open, wait_until

logger = logging.getLogger(__name__)

LOG4J_CONFIG = ROOT / "dev" / "kafka" / "log4j.properties"
LOG4J2_CONFIG = ROOT / "dev" / "kafka" / "log4j2.properties"

# A small JVM: the broker of a test session holds little data (docs/development.md has its measured size).
JVM_FLAGS = ("-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true")

# What one node needs (replication factors of 1, one offsets partition), what makes it quick (no initial
# rebalance delay, a small log-cleaner buffer, few threads), and what production clusters set
# (no auto-created topics). Session timeouts down to 1 s are allowed, for tests that freeze workers.
# A broker started again after SIGKILL re-registers with its controller once its previous session has
# expired: a 3 s broker session (9 s by default) brings a restart from about 17 s down to about 5 s.
TEST_PROPERTIES: Mapping[str, str] = {
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "1",
    "group.initial.rebalance.delay.ms": "0",
    "group.min.session.timeout.ms": "1000",
    "log.cleaner.dedupe.buffer.size": "2097152",
    "num.network.threads": "2",
    "num.io.threads": "2",
    "background.threads": "2",
    "auto.create.topics.enable": "false",
    "broker.session.timeout.ms": "3000",
    "broker.heartbeat.interval.ms": "500",
}


# 4.x only: its share coordinator's state topic defaults to a replication factor of 3, like the offsets topic.
KAFKA4_PROPERTIES: Mapping[str, str] = {
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
}


def major_version(version: str) -> int:
    """3 for "3.9.1", 4 for "4.4.0"."""
    return int(version.split(".", 1)[0])


def logging_flag(version: str) -> str:
    """The JVM flag naming the broker's logging config: 3.x reads log4j 1 (reload4j), 4.x log4j2 (KIP-653)
    and silently ignores the old flag."""
    if major_version(version) >= 4:
        return f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}"
    return f"-Dlog4j.configuration=file:{LOG4J_CONFIG}"


def version_properties(version: str) -> Mapping[str, str]:
    """The test defaults only some versions accept or need."""
    return KAFKA4_PROPERTIES if major_version(version) >= 4 else {}


def new_cluster_id() -> str:
    """A KRaft cluster id: a UUID in 22 characters of URL-safe base64.

    Like Kafka's own Uuid.randomUuid, never one that starts with "-": kafka-storage's argument parser
    would read it as an option (one id in 64 did, and failed a whole CI run).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def server_properties(port: int, controller_port: int, log_dir: Path,
                      extra: Mapping[str, str] | None = None, version: str = KAFKA_VERSION) -> str:
    """server.properties of a combined broker and controller on 127.0.0.1."""
    properties = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "log.dirs": str(log_dir),
        **TEST_PROPERTIES,
        **version_properties(version),
        **(extra or {}),
    }
    return "".join(f"{key}={value}\n" for key, value in properties.items())


def require_java() -> None:
    if shutil.which("java") is None:
        raise StackError("java not found: run scripts/ensure-system-deps.sh (or apt-get install default-jre-headless)")


class ApacheKafka:
    """A single-node KRaft Apache Kafka broker, its data under `workdir`.

    :param workdir: where its server.properties, log directory and log file go.
    :param port: the client (PLAINTEXT) port; a free one by default. The controller gets another.
    :param name: names its log file (`<name>.log`) and its data folder (`<name>-data`).
    :param extra_properties: server.properties entries added to, or replacing, the test defaults.
    :param version: the Apache Kafka version, with its build file under `dev/kafka/<version>/`.
    :param format_args: more arguments of `kafka-storage format` (e.g. `--add-scram` users).
    """

    def __init__(self, workdir: Path, port: int | None = None, name: str = "kafka",
                 extra_properties: Mapping[str, str] | None = None, version: str = KAFKA_VERSION,
                 format_args: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.controller_port = free_port()
        while self.controller_port == self.port:  # a probed port is released: the kernel may offer it again
            self.controller_port = free_port()
        self.name = name
        self.version = version
        self.extra_properties = dict(extra_properties or {})
        self.format_args = tuple(format_args)
        self.cluster_id = new_cluster_id()
        self.log_dir = workdir / f"{name}-data"
        self.config_path = workdir / f"{name}.properties"
        self.log_path = workdir / f"{name}.log"
        self.process = ManagedProcess(name, self._java("kafka.Kafka", str(self.config_path)), self.log_path)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120.0) -> None:
        """Start the broker (formatting its log directory on first start); return once a client sees it."""
        if self.process.alive:
            raise StackError(f"{self.name} is already running; see {self.log_path}")
        began = time.monotonic()
        require_java()
        kafka_jars(self.version)
        self._configure()
        self.process.start()
        wait_until(self._ready, timeout_s, f"Apache Kafka {self.version} on port {self.port}", interval_s=0.25)
        logger.info("Apache Kafka %s ready on port %d in %.1fs", self.version, self.port, time.monotonic() - began)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), SIGKILL if it takes longer than 30 s."""
        self.process.stop(timeout_s=30.0)

    def kill(self) -> None:
        """SIGKILL: a crash. `start` again recovers on the same log directory."""
        self.process.kill()

    def _java(self, main_class: str, *args: str) -> list[str]:
        classpath = f"{cache_dir(self.version) / 'lib'}/*"
        return ["java", *JVM_FLAGS, logging_flag(self.version), "-cp", classpath, main_class, *args]

    def _configure(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            server_properties(self.port, self.controller_port, self.log_dir, self.extra_properties, self.version))
        if not (self.log_dir / "meta.properties").is_file():
            self._format()

    def _format(self) -> None:
        """Format the log directory with this broker's cluster id (once: a restart keeps it)."""
        argv = self._java("kafka.tools.StorageTool", "format", "-t", self.cluster_id, "-c", str(self.config_path),
                          *self.format_args)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise StackError(f"formatting {self.log_dir} failed: {(result.stdout + result.stderr).strip()}")

    def _ready(self) -> bool:
        self.process.check_alive()
        return port_open(self.port) and cluster_answers(self.bootstrap_servers)


def cluster_answers(bootstrap_servers: str, timeout_s: float = 5.0) -> bool:
    """True once a Kafka client's metadata request lists a broker and a controller.

    The client runs on an event loop of its own thread, so this may be called from
    synchronous code and from inside a running loop alike.
    """
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _describe(bootstrap_servers, timeout_s)).result()


async def _describe(bootstrap_servers: str, timeout_s: float) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout_s * 1000))
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
    except (KafkaError, OSError):  # TimeoutError is an OSError
        return False
    finally:
        await admin.close()
    return bool(cluster.get("brokers")) and cluster.get("controller_id", -1) >= 0
