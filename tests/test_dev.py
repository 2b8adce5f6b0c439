"""`kafka-dagster dev` (what `make run` starts) on its embedded Tansu broker, end to end.

The rest of the suite runs on Apache Kafka; `make run` keeps Tansu so that
trying the project needs no Java. This test starts the command as a user
does, waits for demo events to become successful runs (the worker's own
metrics say so), presses Ctrl-C, and checks that no process it started is
left behind.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]


def _processes_under(workdir: Path) -> list[int]:
    """Processes whose environment names `workdir` (each child of `dev` gets its routes file or DAGSTER_HOME)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if str(workdir).encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


async def test_make_run_turns_demo_events_into_successful_runs_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    workdir = tmp_path / "dev"
    output = tmp_path / "dev.out"
    env = dict(os.environ, DAGSTER_DISABLE_TELEMETRY="1", KAFKA_DAGSTER_DEV_MARKER=str(workdir))
    with output.open("wb") as out:
        dev = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", "dev", "--workdir", str(workdir), "--rate", "10",
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        async def metrics_url() -> str | None:
            match = re.search(r"Worker metrics\s+(\S+)", output.read_text(errors="replace"))
            return match.group(1) if match else None

        url = await eventually(metrics_url, 240, "kafka-dagster dev to print where to look")

        async def successful_runs() -> float:
            try:
                async with httpx.AsyncClient() as client:
                    text = (await client.get(url, timeout=5)).text
            except httpx.HTTPError:  # the worker's web server starts after the banner
                return 0.0
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("kafka_dagster_runs_finished_total{") and 'status="SUCCESS"' in line)

        await eventually(successful_runs, 180, "demo events in successful runs")
    finally:
        dev.send_signal(signal.SIGINT)  # Ctrl-C
        code = await asyncio.wait_for(dev.wait(), 90)
    assert code == 0, output.read_text(errors="replace")[-2000:]
    assert "Stopped every process." in output.read_text(errors="replace")

    async def none_left() -> bool:
        return not _processes_under(workdir)

    await eventually(none_left, 30, "every process kafka-dagster dev started to have exited")
