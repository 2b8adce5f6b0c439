"""`kafka-dagster dev`'s live summary line, from a real /metrics page of the worker's metrics."""

from __future__ import annotations

import io

import httpx
from prometheus_client import CollectorRegistry, generate_latest

from service.dev.summary import PLAIN_INTERVAL_S, TTY_INTERVAL_S, SummaryPrinter, Totals, summary_line, totals
from service.metrics import Metrics


def page(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def busy_worker(registry: CollectorRegistry) -> Metrics:
    metrics = Metrics(registry)
    metrics.messages_consumed.labels("orders").inc(1200)
    metrics.messages_consumed.labels("refunds").inc(34)
    metrics.batches.labels("orders", "records").inc(3)
    metrics.batches.labels("refunds", "time").inc(2)
    metrics.run_launches.labels("process_orders", "LaunchRunSuccess").inc(5)
    metrics.run_launches.labels("process_orders", "transport_error").inc(7)
    metrics.runs_finished.labels("process_orders", "SUCCESS").inc(3)
    metrics.runs_finished.labels("process_orders", "FAILURE").inc(1)
    metrics.runs_finished.labels("process_orders", "CANCELED").inc(1)
    metrics.dlq_messages.labels("orders", "validate").inc(2)
    metrics.consumer_lag.labels("orders", "0").set(10)
    metrics.consumer_lag.labels("orders", "1").set(5)
    metrics.inflight_runs.set(2)
    return metrics


def test_totals_sum_each_counter_over_its_labels(registry: CollectorRegistry) -> None:
    busy_worker(registry)

    assert totals(page(registry)) == Totals(consumed=1234, batches=5, launched=5, succeeded=3, failed=2,
                                            dead_letters=2, lag=15, inflight=2)


def test_the_line_says_what_the_worker_did_and_how_fast_it_consumes() -> None:
    before, now = Totals(consumed=1000), Totals(consumed=1234, batches=5, launched=5, succeeded=3, failed=2,
                                               dead_letters=2, lag=15, inflight=2)

    assert summary_line(now, before, elapsed_s=2.0) == (
        "consumed 1,234 (117/s) | batches 5 | runs launched 5, succeeded 3, failed 2, in flight 2 | "
        "dead letters 2 | lag 15")


def test_on_a_terminal_the_line_is_rewritten_in_place(registry: CollectorRegistry) -> None:
    metrics = busy_worker(registry)
    out = io.StringIO()
    printer = SummaryPrinter(lambda: page(registry), out, tty=True)

    printer.tick(100.0)
    printer.tick(100.0 + TTY_INTERVAL_S / 2)  # not due yet
    metrics.messages_consumed.labels("orders").inc(400)
    printer.tick(100.0 + TTY_INTERVAL_S)
    printer.finish()

    writes = out.getvalue()
    assert writes.count("\r") == 2 and writes.endswith("\n") and writes.count("\n") == 1
    assert "consumed 1,634 (200/s)" in writes


def test_into_a_file_a_plain_line_goes_out_every_ten_seconds(registry: CollectorRegistry) -> None:
    busy_worker(registry)
    out = io.StringIO()
    printer = SummaryPrinter(lambda: page(registry), out, tty=False)

    for second in range(0, 25):
        printer.tick(float(second))
    printer.finish()

    lines = out.getvalue().splitlines()
    assert PLAIN_INTERVAL_S == 10.0 and len(lines) == 3  # at 0, 10 and 20 s
    assert "\r" not in out.getvalue() and all(line.startswith("consumed 1,234") for line in lines)


def test_a_worker_not_answering_yet_is_said_so() -> None:
    def refused() -> str:
        raise httpx.ConnectError("connection refused")

    out = io.StringIO()
    SummaryPrinter(refused, out, tty=False).tick(0.0)

    assert out.getvalue() == "worker not answering on /metrics yet\n"
