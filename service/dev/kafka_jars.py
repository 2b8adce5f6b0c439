"""The Apache Kafka broker's jars, resolved from Maven Central by a pinned, checked-in build file.

`dev/kafka/<version>/pom.xml` names the broker artifact and its logging
binding; Maven copies their runtime closure into the git-ignored
`.kafka/<version>/lib`. A stamp beside the jars records the build file they
were resolved from, so a second run does nothing and an edited build file
resolves again (`~/.m2` caches every download).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from service.dev.stack import StackError

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
KAFKA_VERSION = "3.9.1"
# The newest 4.x Maven Central serves: the suite runs its end-to-end, kill -9 and rolling-restart scenarios
# on it too (tests/test_kafka4.py).
KAFKA4_VERSION = "4.4.0"
TESTED_VERSIONS = (KAFKA_VERSION, KAFKA4_VERSION)
RESOLVE_TIMEOUT_S = 600.0


def build_file(version: str = KAFKA_VERSION) -> Path:
    """The checked-in pom.xml that pins `version`'s broker runtime."""
    return ROOT / "dev" / "kafka" / version / "pom.xml"


def cache_dir(version: str = KAFKA_VERSION) -> Path:
    """The git-ignored folder the jars of `version` are copied to."""
    return ROOT / ".kafka" / version


def kafka_jars(version: str = KAFKA_VERSION) -> Path:
    """The folder holding `version`'s broker jars, resolved first if missing or stale."""
    pom = build_file(version)
    if not pom.is_file():
        raise StackError(f"no build file for Apache Kafka {version} at {pom} (it ships with a source checkout)")
    folder = cache_dir(version)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two sessions at once resolve once
        lib = folder / "lib"
        stamp = folder / "lib.stamp"
        digest = hashlib.sha256(pom.read_bytes()).hexdigest()
        if not (lib.is_dir() and stamp.is_file() and stamp.read_text() == digest):
            _resolve(pom, lib)
            stamp.write_text(digest)
    return lib


def _resolve(pom: Path, lib: Path) -> None:
    """Copy the runtime closure of `pom` into `lib`, replacing what was there."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("mvn not found: run scripts/ensure-system-deps.sh (or apt-get install maven)")
    partial = lib.with_name(lib.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    logger.info("resolving the broker's jars from %s into %s", pom, lib)
    argv = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
            "-DincludeScope=runtime", f"-DoutputDirectory={partial}"]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=RESOLVE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise StackError(f"mvn did not resolve {pom} within {RESOLVE_TIMEOUT_S:.0f}s") from None
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise StackError(f"mvn failed to resolve {pom}: {' | '.join(tail)}")
    shutil.rmtree(lib, ignore_errors=True)
    partial.rename(lib)


def main(versions: list[str]) -> None:
    """Resolve the jars of each version named (every tested one by default) and print their folders."""
    for version in versions or TESTED_VERSIONS:
        print(kafka_jars(version))


if __name__ == "__main__":  # `make test` and `make bench` resolve the jars before they start
    main(sys.argv[1:])
