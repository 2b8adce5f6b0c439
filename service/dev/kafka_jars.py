"""The Apache Kafka broker's jars, resolved from Maven Central by a pinned, checked-in build file.

`dev/kafka/<version>/pom.xml` names the broker artifact and its logging
binding; Maven copies their runtime closure into the git-ignored
`.kafka/<version>/lib`. A stamp beside the jars records the build file they
were resolved from, so a second run does nothing and an edited build file
resolves again (`~/.m2` caches every download).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from service.dev.maven import built_once
from service.dev.stack import StackError

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
KAFKA_VERSION = "3.9.1"
# The newest 4.x Maven Central serves: the suite runs its end-to-end, kill -9 and rolling-restart scenarios
# on it too (tests/test_kafka4.py).
KAFKA4_VERSION = "4.4.0"
TESTED_VERSIONS = (KAFKA_VERSION, KAFKA4_VERSION)


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
    return built_once(pom, cache_dir(version) / "lib", ["dependency:copy-dependencies", "-DincludeScope=runtime"],
                      "resolve the jars of")


def main(versions: list[str]) -> None:
    """Resolve the jars of each version named (every tested one by default) and print their folders."""
    for version in versions or TESTED_VERSIONS:
        print(kafka_jars(version))


if __name__ == "__main__":  # `make test` and `make bench` resolve the jars before they start
    main(sys.argv[1:])
