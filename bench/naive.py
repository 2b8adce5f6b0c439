"""Contender 2, the naive approach: `bench.naive_app` as a Faust worker process."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from bench.config import Mode
from bench.worker import ROOT, unique
from service.dev.stack import ManagedProcess, StackError


def run_naive(bootstrap: str, topic: str, mode: Mode, workdir: Path, timeout_s: float = 180) -> float:
    """Messages per second after the agent's first batch, until it has seen `mode.messages`."""
    group = unique("bench-naive")
    result_path = workdir / f"{group}.json"
    env = dict(os.environ, BENCH_GROUP=group, BENCH_BOOTSTRAP=bootstrap, BENCH_TOPIC=topic,
               BENCH_TAKE=str(mode.naive_take), BENCH_WITHIN_S=str(mode.naive_within_s),
               BENCH_EXPECTED=str(mode.messages), BENCH_RESULT=str(result_path), PYTHONPATH=str(ROOT))
    process = ManagedProcess(group, [sys.executable, "-m", "bench.naive_app", "worker", "-l", "warn"],
                             workdir / f"{group}.log", env)
    process.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not result_path.exists():
            process.check_alive()
            if time.monotonic() > deadline:
                raise StackError(f"the naive agent did not see {mode.messages} messages in {timeout_s:.0f}s")
            time.sleep(0.25)
        time.sleep(0.1)
        result = json.loads(result_path.read_text())
    finally:
        process.stop(timeout_s=5)
    return float((result["seen"] - result["first_count"]) / (result["last_at"] - result["first_at"]))
