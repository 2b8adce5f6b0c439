"""`kafka-dagster dev`'s live summary line, read from the worker's /metrics.

On a terminal the line is rewritten in place (`\\r`) every `TTY_INTERVAL_S`;
into a file or a pipe a plain line goes out every `PLAIN_INTERVAL_S`, so logs
stay readable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import httpx
from prometheus_client.parser import text_string_to_metric_families

TTY_INTERVAL_S = 2.0
PLAIN_INTERVAL_S = 10.0
CLEAR_TO_END = "\x1b[K"


@dataclass(frozen=True)
class Totals:
    """The worker's counters since it started, summed over their labels."""

    consumed: float = 0
    batches: float = 0
    launched: float = 0
    succeeded: float = 0
    failed: float = 0
    dead_letters: float = 0
    lag: float = 0
    inflight: float = 0


def totals(metrics_text: str) -> Totals:
    """`Totals` from a /metrics page (Prometheus text format)."""
    sums: dict[str, float] = {}

    def add(key: str, value: float) -> None:
        sums[key] = sums.get(key, 0.0) + value

    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "kafka_dagster_messages_consumed_total":
                add("consumed", value)
            elif name == "kafka_dagster_batches_total":
                add("batches", value)
            elif name == "kafka_dagster_run_launches_total" and labels.get("result") == "LaunchRunSuccess":
                add("launched", value)
            elif name == "kafka_dagster_runs_finished_total":
                add("succeeded" if labels.get("status") == "SUCCESS" else "failed", value)
            elif name == "kafka_dagster_dlq_messages_total":
                add("dead_letters", value)
            elif name == "kafka_dagster_consumer_lag":
                add("lag", value)
            elif name == "kafka_dagster_inflight_runs":
                add("inflight", value)
    return Totals(**sums)


def summary_line(now: Totals, before: Totals | None = None, elapsed_s: float = 0.0) -> str:
    """One line: totals, and the consume rate since `before` (`elapsed_s` ago)."""
    rate = ""
    if before is not None and elapsed_s > 0:
        rate = f" ({max(0.0, now.consumed - before.consumed) / elapsed_s:,.0f}/s)"
    return (f"consumed {now.consumed:,.0f}{rate} | batches {now.batches:,.0f} | runs launched {now.launched:,.0f}, "
            f"succeeded {now.succeeded:,.0f}, failed {now.failed:,.0f}, in flight {now.inflight:,.0f} | "
            f"dead letters {now.dead_letters:,.0f} | lag {now.lag:,.0f}")


class SummaryPrinter:
    """Prints the summary line when it is due: `tick(now)` as often as you like.

    :param fetch: the worker's /metrics text (raises `httpx.HTTPError` while it does not answer)
    :param stream: where the line goes (stdout)
    :param tty: rewrite one line in place, rather than print a line each `PLAIN_INTERVAL_S`
    """

    def __init__(self, fetch: Callable[[], str], stream: TextIO, tty: bool) -> None:
        self.fetch = fetch
        self.stream = stream
        self.tty = tty
        self.interval_s = TTY_INTERVAL_S if tty else PLAIN_INTERVAL_S
        self._due = 0.0
        self._last: tuple[float, Totals] | None = None
        self._open_line = False

    def tick(self, now: float) -> None:
        if now < self._due:
            return
        self._due = now + self.interval_s
        try:
            current = totals(self.fetch())
        except (httpx.HTTPError, ValueError):
            self._write("worker not answering on /metrics yet")
            return
        before, elapsed = (self._last[1], now - self._last[0]) if self._last else (None, 0.0)
        self._last = (now, current)
        self._write(summary_line(current, before, elapsed))

    def finish(self) -> None:
        """End the line being rewritten, so what follows starts on a line of its own."""
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False

    def _write(self, line: str) -> None:
        if self.tty:
            self.stream.write(f"\r{line}{CLEAR_TO_END}")
            self._open_line = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def metrics_fetcher(url: str, timeout_s: float = 1.0) -> Callable[[], str]:
    def fetch() -> str:
        response = httpx.get(url, timeout=timeout_s)
        response.raise_for_status()
        return response.text

    return fetch
