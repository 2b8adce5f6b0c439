"""`python -m bench.transactions`: what writing dead letters in transactions costs, against plain writes.

Side by side on one broker, for a flush of `k` dead letters of one partition
and the offset commit that covers them:

- plain: what the worker does without transactions: each dead letter sent and
  acknowledged one at a time (`service.kafka.Producer.send`), then one offset
  commit of the group (OffsetCommit);
- transactional: `service.kafka.transactions.Transactions.write`: begin, the `k`
  letters, `send_offsets_to_transaction`, commit.

It reports milliseconds per flush and per dead letter for each `k`, the ratio
transactional / plain, and what taking over a partition's transactional id
(InitProducerId, at each assignment) costs. No Dagster.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from bench.stats import median, ratio
from bench.worker import unique
from service.kafka import Producer, ensure_topics
from service.kafka.transactions import Outgoing, Transactions
from service.records import TP

LETTER = Outgoing("", b"key", b'{"order_id": "broken", ' + b"x" * 250, [("dlq.stage", b"decode")] * 9)
SIZES = (1, 10, 100)


async def _timed(flushes: int, flush: Callable[[int], Awaitable[None]]) -> list[float]:
    seconds = []
    for index in range(flushes):
        started = time.perf_counter()
        await flush(index)
        seconds.append(time.perf_counter() - started)
    return seconds


async def measure(bootstrap: str, flushes: int = 20, partitions: int = 8) -> dict[str, Any]:
    """Per `k` in SIZES: median ms per flush and per dead letter, plain and transactional, and their ratio."""
    source, dlq, group = unique("txn-source"), unique("txn-dlq"), unique("txn-group")
    await ensure_topics(bootstrap, {source: partitions, dlq: 1})
    tp = TP(source, 0)
    letter = Outgoing(dlq, LETTER.key, LETTER.value, LETTER.headers)
    producer = Producer(bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    transactions = Transactions(bootstrap, group, group)
    results: dict[str, Any] = {"flushes": flushes, "by_letters": {}}
    try:
        await producer.start()
        await consumer.start()
        consumer.assign([TopicPartition(source, 0)])
        started = time.perf_counter()
        await transactions.acquire([TP(source, p) for p in range(partitions)])
        results["acquire_ms_per_partition"] = (time.perf_counter() - started) / partitions * 1000
        offset = 0
        for k in SIZES:
            async def plain(index: int, k: int = k) -> None:
                nonlocal offset
                for _ in range(k):
                    await producer.send(dlq, letter.key, letter.value, letter.headers)
                offset += k
                await consumer.commit({TopicPartition(source, 0): OffsetAndMetadata(offset, "")})

            async def transactional(index: int, k: int = k) -> None:
                nonlocal offset
                offset += k
                await transactions.write(tp, [letter] * k, offset)

            await plain(0)
            await transactional(0)  # warm both paths up
            plain_s = median(await _timed(flushes, plain))
            txn_s = median(await _timed(flushes, transactional))
            results["by_letters"][str(k)] = {
                "plain_ms_per_flush": plain_s * 1000, "transactional_ms_per_flush": txn_s * 1000,
                "plain_ms_per_letter": plain_s / k * 1000, "transactional_ms_per_letter": txn_s / k * 1000,
                "transactional_over_plain": ratio(txn_s, plain_s)}
    finally:
        await transactions.stop()
        await consumer.stop()
        await producer.stop()
    return results


def lines(results: dict[str, Any]) -> list[str]:
    """The report's lines for `measure`'s results."""
    out = [f"dead letters in transactions (median of {results['flushes']} flushes of one partition; "
           f"taking over a transactional id {results['acquire_ms_per_partition']:.1f} ms per partition):"]
    for k, row in results["by_letters"].items():
        out.append(f"  {k:>4} letter(s) + commit: plain {row['plain_ms_per_flush']:7.2f} ms "
                   f"({row['plain_ms_per_letter']:6.2f}/letter), transactional {row['transactional_ms_per_flush']:7.2f}"
                   f" ms ({row['transactional_ms_per_letter']:6.2f}/letter): x{row['transactional_over_plain']:.2f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.transactions", description=__doc__)
    parser.add_argument("--bootstrap-servers", required=True, help="a broker that serves transactions")
    parser.add_argument("--flushes", type=int, default=20)
    args = parser.parse_args()
    print("\n".join(lines(asyncio.run(measure(args.bootstrap_servers, args.flushes)))))


if __name__ == "__main__":
    main()
