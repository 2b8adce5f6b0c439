"""One Maven goal on a pinned, checked-in build file, into a git-ignored folder, once per version of that file.

Both the test broker's jars (`service.dev.kafka_jars`) and the test registry's distribution
(`service.dev.apicurio`) come from Maven Central this way: the output folder is rebuilt only when the
build file's digest differs from its stamp, under a file lock so two sessions at once build once, and
into a `.partial` folder renamed at the end, so an interrupted build leaves nothing half-made.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from service.dev.stack import StackError

logger = logging.getLogger(__name__)

GOAL_TIMEOUT_S = 600.0


def built_once(pom: Path, output: Path, goal: Sequence[str], what: str,
               complete: Callable[[Path], bool] = Path.is_dir) -> Path:
    """`output`, made by `mvn -f pom <goal> -DoutputDirectory=...` unless its stamp holds `pom`'s digest.

    :param goal: the goal and its own `-D` options (the output directory is added).
    :param what: for log and error lines (e.g. "resolve", "unpack").
    :param complete: whether a fresh output holds what it must (a failure otherwise).
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    with (output.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two sessions at once build once
        stamp = output.with_name(output.name + ".stamp")
        digest = hashlib.sha256(pom.read_bytes()).hexdigest()
        if not (output.is_dir() and stamp.is_file() and stamp.read_text() == digest):
            _run_goal(pom, output, goal, what, complete)
            stamp.write_text(digest)
    return output


def _run_goal(pom: Path, output: Path, goal: Sequence[str], what: str, complete: Callable[[Path], bool]) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("mvn not found: run scripts/ensure-system-deps.sh (or apt-get install maven)")
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    logger.info("running mvn to %s %s into %s", what, pom, output)
    argv = [mvn, "-q", "-B", "-f", str(pom), *goal, f"-DoutputDirectory={partial}"]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=GOAL_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise StackError(f"mvn did not {what} {pom} within {GOAL_TIMEOUT_S:.0f}s") from None
    if result.returncode != 0 or not complete(partial):
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise StackError(f"mvn failed to {what} {pom}: {' | '.join(tail)}")
    shutil.rmtree(output, ignore_errors=True)
    partial.rename(output)
