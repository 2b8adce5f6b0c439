"""The naive approach as the Faust guide writes it: one agent, `stream.take()`, JSON values.

Run as `python -m bench.naive_app worker`; configured by BENCH_* environment
variables. When the agent has seen BENCH_EXPECTED messages it writes its timing
to BENCH_RESULT and keeps idling until it is stopped.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import faust

app = faust.App(
    os.environ.get("BENCH_GROUP", "bench-naive"),
    broker=f"kafka://{os.environ.get('BENCH_BOOTSTRAP', 'localhost:9092')}",
    store="memory://",
    datadir=str(Path(tempfile.gettempdir()) / "{conf.name}-data"),  # not the working directory (the checkout)
    web_enabled=False,
    broker_session_timeout=10,
    consumer_auto_offset_reset="earliest",
    topic_disable_leader=True,
    topic_allow_declare=False,
)
orders = app.topic(os.environ.get("BENCH_TOPIC", "orders"))  # values decoded by Faust's default JSON codec

TAKE = int(os.environ.get("BENCH_TAKE", "1000"))
WITHIN_S = float(os.environ.get("BENCH_WITHIN_S", "1.0"))
EXPECTED = int(os.environ.get("BENCH_EXPECTED", "0"))


@app.agent(orders)
async def count_orders(stream: faust.StreamT) -> None:
    seen = 0
    first_at, first_count = 0.0, 0
    async for values in stream.take(TAKE, within=WITHIN_S):
        seen += len(values)
        if not first_at:
            first_at, first_count = time.time(), len(values)
        if seen >= EXPECTED > 0:
            result = {"first_at": first_at, "first_count": first_count, "last_at": time.time(), "seen": seen}
            path = Path(os.environ["BENCH_RESULT"])
            path.with_suffix(".tmp").write_text(json.dumps(result))
            path.with_suffix(".tmp").replace(path)


if __name__ == "__main__":
    app.main()
