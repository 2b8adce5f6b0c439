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

from bench import framed, matching, report, validators
from bench.amortisation import amortisation
from bench.backpressure import backpressure
from bench.broker import broker_name, new_broker
from bench.config import Mode
from bench.context import Context
from bench.data import make_values, produce_fast
from bench.latency import event_to_launch, launch_latencies
from bench.limit import run_limit
from bench.naive import run_naive
from bench.pause import pause_resume
from bench.service import run_scaling, run_service
from bench.stats import median, percentile, ratio
from bench.worker import ROOT, unique
from service.dev.postgres import postgres_server
from service.dev.stack import Dagster, StackError, running, temporary_database

logger = logging.getLogger("bench")
RESULTS = ROOT / "bench" / "results"
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL")  # default: a server of the run's own (service.dev.postgres)


def _step(what: str, started: float) -> None:
    logger.info("[%5.0fs] %s", time.monotonic() - started, what)


def measure(ctx: Context, started: float, profile: bool = False) -> dict[str, Any]:
    """Every figure, in an order that keeps runs from disturbing later measurements."""
    mode = ctx.mode
    results: dict[str, Any] = {}
    _step("per-record costs of validation and route matching (no broker)", started)
    results["validation_us_per_record"] = validators.costs(mode.micro_records, passes=3)
    results["matching_ns_per_record"] = matching.costs(mode.micro_records, passes=3)
    results["framed_us_per_record"] = framed.costs(mode.micro_records, passes=3)
    _step("amortisation: runs to SUCCESS for max_records " + ", ".join(map(str, mode.amortisation_sizes)), started)
    results["amortisation"] = [asdict(point) for point in amortisation(ctx)]
    # From here on runs are launched (queued) but not executed: the daemon would compete for the CPU.
    ctx.dagster.daemon.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    _step(f"producing {mode.messages:,} messages to {mode.partitions} partitions", started)
    produce_rate = asyncio.run(produce_fast(ctx.bootstrap, ctx.topic, make_values(mode.messages, mode.value_bytes),
                                            mode.partitions))
    results["producer_msgs_per_s"] = produce_rate
    services = {"service": {}, "service_schema": {"schema": True}, "service_routes": {"routes": True}}
    samples: dict[str, list[float]] = {"limit": [], "naive": [], **{name: [] for name in services}}
    consumed: dict[str, list[float]] = {name: [] for name in services}
    costs: list[dict[str, float]] = []
    for repetition in range(1, mode.repetitions + 1):
        _step(f"repetition {repetition}/{mode.repetitions}: limit, naive, " + ", ".join(services), started)
        samples["limit"].append(run_limit(ctx.bootstrap, ctx.topic, mode.messages))
        samples["naive"].append(run_naive(ctx.bootstrap, ctx.topic, mode, ctx.workdir))
        for name, options in services.items():
            flame = RESULTS / f"profile-{name.replace('_', '-')}.svg" if profile and repetition == 1 else None
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
    _step(f"event -> launch at {mode.steady_rate} msg/s for {mode.steady_s:.0f}s", started)
    e2e = event_to_launch(ctx)
    results["event_to_launch_s"] = _percentiles(e2e) | {
        "rate": mode.steady_rate, "max_wait_s": mode.steady_max_wait_s, "batches": len(e2e), "values": e2e}
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


def run(mode: Mode, keep: bool = False, profile: bool = False, broker_kind: str = "apache") -> dict[str, Any]:
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
            dagster = Dagster(workdir / "dagster", {"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers},
                              pg_url=pg_url)
            _step(f"starting {broker_name(results)} and Dagster ({storage} storage)", started)
            with running(broker, dagster):
                results |= measure(Context(mode, broker, dagster, workdir), started, profile)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    t = results["throughput_msgs_per_s"]
    results["ratios"] = {"service_over_limit": ratio(t["service"], t["limit"]),
                         "service_over_naive": ratio(t["service"], t["naive"]),
                         "service_schema_over_limit": ratio(t["service_schema"], t["limit"]),
                         "service_schema_over_naive": ratio(t["service_schema"], t["naive"]),
                         "service_routes_over_limit": ratio(t["service_routes"], t["limit"]),
                         "service_routes_over_naive": ratio(t["service_routes"], t["naive"])}
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    return results


def write_outputs(results: dict[str, Any], name: str = "latest") -> Path:
    report.write_json(results, RESULTS / f"{name}.json")
    report.plot(results, RESULTS / f"{name}.png")
    return RESULTS / f"{name}.json"
