"""One benchmark run: start the stack, measure every figure, write the outputs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import framed, matching, report, transactions, validators
from bench.amortisation import amortisation
from bench.backpressure import backpressure
from bench.broker import broker_name, new_broker
from bench.config import Mode
from bench.context import Context
from bench.data import make_values, produce_fast
from bench.latency import WARM_UP_S, launch_latencies
from bench.limit import run_limit
from bench.naive import run_naive
from bench.pause import pause_resume
from bench.queue_growth import queue_growth
from bench.record_sizes import record_sizes
from bench.sensor import (
    SensorControl,
    event_to_launch_side_by_side,
    hold_runs,
    kill_sensor_daemon,
    kill_worker,
    sensor_dir,
    sensor_throughput,
)
from bench.sensor_names import DIR_ENV
from bench.service import run_scaling, run_service
from bench.stats import median, percentile, ratios
from bench.worker import ROOT, unique
from service.dev.postgres import postgres_server
from service.dev.stack import Dagster, StackError, running, temporary_database

logger = logging.getLogger("bench")
RESULTS = ROOT / "bench" / "results"
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL")  # default: a server of the run's own (service.dev.postgres)


def _step(what: str, started: float) -> None:
    logger.info("[%5.0fs] %s", time.monotonic() - started, what)


# `python -m bench --only PART`: one part of the run, on the same stack and data set (the rest is skipped).
PARTS = ("sensor", "throughput", "sizes", "record_sizes", "growth")


def measure(ctx: Context, started: float, profile: bool = False, only: str | None = None) -> dict[str, Any]:
    """Every figure (or those of the part `only`), in an order that keeps runs from disturbing later ones."""
    mode = ctx.mode
    results: dict[str, Any] = {}
    if only is None:
        _step("per-record costs of validation and route matching (no broker)", started)
        results["validation_us_per_record"] = validators.costs(mode.micro_records, passes=3)
        results["matching_ns_per_record"] = matching.costs(mode.micro_records, passes=3)
        results["framed_us_per_record"] = framed.costs(mode.micro_records, passes=3)
        if ctx.broker_serves_transactions:
            _step(f"dead letters in transactions vs plain writes ({mode.txn_flushes} flushes per size)", started)
            results["transactions"] = asyncio.run(transactions.measure(ctx.bootstrap, mode.txn_flushes))
    if only in (None, "sizes"):
        _step(f"into SUCCESS runs, daemon running: {mode.amortisation_runs} batches of max_records "
              + ", ".join(map(str, mode.amortisation_sizes)), started)
        results["amortisation"] = [asdict(point) for point in amortisation(ctx)]
    if only in (None, "growth"):
        _step(f"live stream into SUCCESS runs, without and with max_queued_runs {mode.growth_max_queued_runs}: "
              f"{mode.growth_records:,} records at {mode.growth_rate:,} msg/s", started)
        results["queue_growth"] = {
            "records": mode.growth_records, "rate": mode.growth_rate, "max_wait_s": mode.growth_max_wait_s,
            "max_records": mode.growth_max_records, "points": [asdict(point) for point in queue_growth(ctx)]}
    # From here on runs are launched (queued) but not executed: the daemon would compete for the CPU.
    ctx.dagster.daemon.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    _step(f"producing {mode.messages:,} messages to {mode.partitions} partitions", started)
    produce_rate = asyncio.run(produce_fast(ctx.bootstrap, ctx.topic, make_values(mode.messages, mode.value_bytes),
                                            mode.partitions))
    results["producer_msgs_per_s"] = produce_rate
    if only in (None, "sensor"):
        results |= measure_sensor(ctx, started)
    if only in (None, "throughput"):
        results |= measure_throughput(ctx, started, profile)
    if only in (None, "sizes"):
        results["sizes"] = measure_sizes(ctx, started)
    if only in (None, "record_sizes"):
        _step("limit and service by record size: " + ", ".join(f"{b:,} B" for b in ctx.mode.record_sizes), started)
        results["record_sizes"] = record_sizes(ctx)
    if only is None:
        results |= measure_rest(ctx, started)
    return results


def measure_sizes(ctx: Context, started: float) -> dict[str, Any]:
    """The service on the data set at the batch sizes users configure, into launched runs (one sample each):
    records/s, and what the launches cost (their `launchRun` calls, summed over the partitions' lanes)."""
    found: dict[str, Any] = {}
    for size in ctx.mode.amortisation_sizes:
        _step(f"service at max_records {size:,}: into launched runs", started)
        service = run_service(ctx, max_records=size)
        found[str(size)] = {"msgs_per_s": service.msgs_per_s, "consumed_msgs_per_s": service.consumed_msgs_per_s,
                            "runs": service.runs, "launch_s": service.launch_s, "fence_s": service.fence_s,
                            "elapsed_s": service.elapsed_s}
    return found


def measure_throughput(ctx: Context, started: float, profile: bool) -> dict[str, Any]:
    """The limit, naive and service contenders on the data set, interleaved, `repetitions` times."""
    mode = ctx.mode
    results: dict[str, Any] = {}
    services = {"service": {}, "service_schema": {"schema": True}, "service_routes": {"routes": True}}
    samples: dict[str, list[float]] = {"limit": [], "naive": [], **{name: [] for name in services}}
    consumed: dict[str, list[float]] = {name: [] for name in services}
    costs: list[dict[str, float]] = []
    for repetition in range(1, mode.repetitions + 1):
        _step(f"repetition {repetition}/{mode.repetitions}: limit, naive, " + ", ".join(services), started)
        samples["limit"].append(run_limit(ctx.bootstrap, ctx.topic, mode.messages))
        samples["naive"].append(run_naive(ctx.bootstrap, ctx.topic, mode, ctx.workdir))
        for name, options in services.items():
            flame = RESULTS / f"profile-{name.replace('_', '-')}.txt" if profile and repetition == 1 else None
            service = run_service(ctx, flame, **options)
            samples[name].append(service.msgs_per_s)
            consumed[name].append(service.consumed_msgs_per_s)
            if name == "service":
                costs.append({"runs": service.runs, "fence_s": service.fence_s, "launch_s": service.launch_s,
                              "elapsed_s": service.elapsed_s})
        _step("  " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in samples.items()), started)
    results["throughput_samples"] = samples
    results["throughput_msgs_per_s"] = {name: median(values) for name, values in samples.items()}
    for name, values in consumed.items():
        results[f"{name}_consumed_msgs_per_s"] = {"median": median(values), "samples": values}
    results["fencing"] = _fencing(costs)
    return results


def measure_rest(ctx: Context, started: float) -> dict[str, Any]:
    """launchRun latency, workers in one group, a route pause, backpressure."""
    mode = ctx.mode
    results: dict[str, Any] = {}
    _step(f"launchRun latency: {mode.launch_samples} launches", started)
    latencies = launch_latencies(ctx)
    results["launch_latency_s"] = _percentiles(latencies) | {"samples": len(latencies), "values": latencies}
    _step(f"launchRun latency: {mode.launch_samples} launches with {mode.inline_records} records inline", started)
    inline = launch_latencies(ctx, mode.inline_records)
    results["launch_latency_inline_s"] = _percentiles(inline) | {
        "samples": len(inline), "records": mode.inline_records, "values": inline}
    _step("launchRun latency: the same with the records as a typed list (the format before 2026-12-06)", started)
    as_list = launch_latencies(ctx, mode.inline_records, as_list=True)
    results["launch_latency_inline_list_s"] = _percentiles(as_list) | {
        "samples": len(as_list), "records": mode.inline_records, "values": as_list}
    results["workers"] = {}
    for count in mode.workers:
        _step(f"{count} worker(s) in one group, live producer", started)
        results["workers"][str(count)] = run_scaling(ctx, count)
    _step(f"route pause: code location down {mode.pause_down_s:.0f}s with records waiting, then back", started)
    pause = pause_resume(ctx, mode.pause_down_s)
    results["route_pause"] = {"paused_s": round(pause.paused_s, 2), "resume_s": round(pause.resume_s, 3)}
    _step(f"backpressure: webserver down, {mode.backlog:,} messages backlog", started)
    rss = backpressure(ctx)
    results["peak_rss_mb_backpressure"] = rss.peak_mb
    at_start = [mb for _, produced, mb in rss.points if produced == 0]
    results["backpressure"] = {"backlog": mode.backlog, "samples": rss.points,
                               "rss_mb_at_backlog_start": max(at_start, default=0.0)}
    return results


def measure_sensor(ctx: Context, started: float) -> dict[str, Any]:
    """The sensor contender beside the worker, with the daemon running and holding every run in the queue."""
    mode = ctx.mode
    control = SensorControl(sensor_dir(ctx.workdir), ctx.bootstrap)
    results: dict[str, Any] = {}
    hold_runs(ctx.dagster)
    try:
        _step(f"sensors {', '.join(mode.sensors)} on the data set: {mode.sensor_ticks} ticks each", started)
        results["sensor_throughput"] = sensor_throughput(ctx, control, mode.sensors)
        _step(f"event -> launch at {mode.steady_rate} msg/s for {mode.steady_s:.0f}s: worker and sensors", started)
        side = event_to_launch_side_by_side(ctx, control, mode.sensors, WARM_UP_S)
        e2e = side.pop("service_launch_success")
        results["event_to_launch_s"] = e2e | {"rate": mode.steady_rate, "max_wait_s": mode.steady_max_wait_s}
        results["event_to_run_created_s"] = side
        _step(f"kill -9: the sensor's daemon, then the worker ({mode.kill_records:,} records each)", started)
        results["kill"] = {"sensor": kill_sensor_daemon(ctx, control), "service": kill_worker(ctx)}
    finally:
        ctx.dagster.daemon.stop()
    return results


def _fencing(costs: list[dict[str, float]]) -> dict[str, float]:
    """What proving ownership before each launch cost the service contender: per launch and as a share."""
    runs = sum(c["runs"] for c in costs) or 1
    return {"per_launch_ms": sum(c["fence_s"] for c in costs) / runs * 1000,
            "launch_call_ms": sum(c["launch_s"] for c in costs) / runs * 1000,
            "share_of_elapsed": sum(c["fence_s"] for c in costs) / (sum(c["elapsed_s"] for c in costs) or 1)}


def _percentiles(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 50), "p99": percentile(values, 99)}


def dagster_storage(stack: contextlib.ExitStack, workdir: Path, started: float) -> tuple[str | None, str]:
    """Dagster's storage for the run: a fresh PostgreSQL database, as docker-compose deploys, on a server the
    run starts (or `BENCH_POSTGRES_URL`'s), dropped when `stack` closes; SQLite, said so, when there is none."""
    try:
        admin_url = stack.enter_context(postgres_server(workdir, POSTGRES_URL))
        return stack.enter_context(temporary_database(admin_url, "kafka_dagster_bench")), "postgres"
    except StackError as exc:
        _step(f"Dagster storage: SQLite, not PostgreSQL as deployed ({exc}): launchRun takes ~3x longer", started)
        return None, "sqlite"


def run(mode: Mode, keep: bool = False, profile: bool = False, broker_kind: str = "apache",
        only: str | None = None) -> dict[str, Any]:
    started = time.monotonic()
    workdir = ROOT / ".bench-stack" / unique(mode.name)
    broker, broker_info = new_broker(broker_kind, workdir)
    results: dict[str, Any] = {
        "mode": mode.name, "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": report.machine(),
        "broker": broker_info,
        "messages": mode.messages, "value_bytes": mode.value_bytes, "partitions": mode.partitions,
        "repetitions": mode.repetitions, "naive_take": mode.naive_take,
        "service_max_records": mode.service_max_records,
    }
    try:
        with contextlib.ExitStack() as stack:
            pg_url, storage = dagster_storage(stack, workdir, started)
            results["dagster_storage"] = storage
            dagster = Dagster(workdir / "dagster", {"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                                                    DIR_ENV: str(sensor_dir(workdir)), "PYTHONPATH": str(ROOT)},
                              pg_url=pg_url, extra_locations={"bench_sensor": "bench.sensor_location"})
            _step(f"starting {broker_name(results)} and Dagster ({storage} storage)", started)
            with running(broker, dagster):
                results |= measure(Context(mode, broker, dagster, workdir), started, profile, only)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["ratios"] = ratios(results)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    return results


def write_outputs(results: dict[str, Any], name: str = "latest") -> Path:
    report.write_json(results, RESULTS / f"{name}.json")
    report.plot(results, RESULTS / f"{name}.png")
    return RESULTS / f"{name}.json"
