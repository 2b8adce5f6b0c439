"""The benchmark's outputs: a table on stdout, raw numbers as JSON, and a PNG plot."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import psutil

from bench import transactions
from bench.broker import broker_name


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def table(results: dict[str, Any]) -> str:
    """The human-readable summary: ratios first, then every figure."""
    t = results["throughput_msgs_per_s"]
    r = results["ratios"]
    launch, e2e = results["launch_latency_s"], results["event_to_launch_s"]
    lines = [
        f"kafka-dagster benchmark ({results['mode']}): {results['messages']:,} JSON messages of "
        f"~{results['value_bytes']} B, {results['partitions']} partitions, median of {results['repetitions']}",
        f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f"load {results['machine']['load_average_at_start']} at start; date {results['date']}; "
        f"Dagster storage {results.get('dagster_storage', 'sqlite')}; broker {broker_name(results)}",
        "",
        f"service / limit          {r['service_over_limit']:.2f}x   (target >= 0.75x on Apache Kafka, issue 26)",
        f"service_schema / limit   {r['service_schema_over_limit']:.2f}x   (target >= 0.7x)",
        f"service / naive          {r['service_over_naive']:.1f}x   (target >= 10x)",
        f"service_schema / naive   {r['service_schema_over_naive']:.1f}x   (target >= 10x)",
        f"service_routes / limit   {r['service_routes_over_limit']:.2f}x   (target >= 0.5x)",
        "",
        f"{'contender':<46}{'msgs/s':>12}",
        f"{'limit: bare aiokafka consumer + orjson':<46}{_fmt(t['limit']):>12}",
        f"{'naive: Faust take(' + str(results['naive_take']) + ') agent, JSON values':<46}{_fmt(t['naive']):>12}",
        f"{'service: worker, max_records ' + format(results['service_max_records'], ',') + ', launched':<46}"
        f"{_fmt(t['service']):>12}",
        f"{'  ... into closed batches, before the launch tail':<46}"
        f"{_fmt(results['service_consumed_msgs_per_s']['median']):>12}",
        f"{'service_schema: the same, schemas/order.json':<46}{_fmt(t['service_schema']):>12}",
        f"{'  ... into closed batches, before the launch tail':<46}"
        f"{_fmt(results['service_schema_consumed_msgs_per_s']['median']):>12}",
        f"{'service_routes: 3 matching routes on the topic':<46}{_fmt(t['service_routes']):>12}",
        f"{'  ... into closed batches, before the launch tail':<46}"
        f"{_fmt(results['service_routes_consumed_msgs_per_s']['median']):>12}",
    ]
    for size, figures in results.get("sizes", {}).items():
        lines.append(f"{'service at max_records ' + format(int(size), ',') + ', launched':<46}"
                     f"{_fmt(figures['msgs_per_s']):>12}   ({figures['runs']} runs, launchRun "
                     f"{figures['launch_s'] / max(1, figures['runs']) * 1000:.0f} ms each)")
    for size, figures in results.get("record_sizes", {}).items():
        label = f"records of {int(size):,} B ({figures['messages']:,}): limit"
        lines.append(f"{label:<46}{_fmt(figures['limit_msgs_per_s']):>12}")
        lines.append(f"{'  ... service, launched':<46}{_fmt(figures['service_msgs_per_s']):>12}   "
                     f"({figures['service_over_limit']:.2f}x the limit, {figures['service_mb_per_s']:.0f} MB/s, "
                     f"{figures['runs']} runs of {figures['max_records']:,})")
    lines += sensor_lines(results)
    for count, rate in results.get("workers", {}).items():
        lines.append(f"{'service, ' + count + ' worker(s), live producer':<46}{_fmt(rate):>12}")
    lines += [
        "",
        f"launchRun latency         p50 {launch['p50'] * 1000:7.1f} ms   p99 {launch['p99'] * 1000:7.1f} ms"
        f"   ({launch['samples']} sequential launches, offset range only)",
        f"  ... {results['launch_latency_inline_s']['records']} records inline"
        f"   p50 {results['launch_latency_inline_s']['p50'] * 1000:7.1f} ms"
        f"   p99 {results['launch_latency_inline_s']['p99'] * 1000:7.1f} ms   (records_json: one string)",
        f"  ... as a typed list (before 2026-12-06)"
        f"   p50 {results['launch_latency_inline_list_s']['p50'] * 1000:7.1f} ms"
        f"   p99 {results['launch_latency_inline_list_s']['p99'] * 1000:7.1f} ms",
        f"fencing (ownership proof per launch) {results['fencing']['per_launch_ms']:.2f} ms; launchRun "
        f"{results['fencing']['launch_call_ms']:.0f} ms; {results['fencing']['share_of_elapsed']:.2%} of service time"
        " (target < 5%)",
        *(transactions.lines(results["transactions"]) if "transactions" in results else []),
        f"route paused {results['route_pause']['paused_s']:.0f} s (code location down): next launch "
        f"{results['route_pause']['resume_s']:.2f} s after it answered again",
        f"event -> LaunchRunSuccess p50 {e2e['p50']:7.3f} s    p99 {e2e['p99']:7.3f} s "
        f"   (at {e2e['rate']:,} msg/s, max_wait_s {e2e['max_wait_s']}, {e2e['batches']} batches; "
        "target p99 <= max_wait_s + 0.1 s)",
        f"peak worker RSS, Dagster down, {results['backpressure']['backlog']:,} msgs backlog: "
        f"{results['peak_rss_mb_backpressure']:.0f} MB "
        f"(at start {results['backpressure']['rss_mb_at_backlog_start']:.0f} MB)",
        "",
        "per record, no broker (best of 3 passes over the same orders):",
        *(f"  {name:<60}{us:8.2f} µs" for name, us in results["validation_us_per_record"].items()),
        *(f"  match {name[:54]:<54}{ns / 1000:8.2f} µs" for name, ns in results["matching_ns_per_record"].items()),
        *(f"  decode {name[:53]:<53}{us:8.2f} µs" for name, us in results.get("framed_us_per_record", {}).items()),
        "",
        f"{'max_records':>12}{'runs':>6}{'records/s in SUCCESS runs':>28}{'run duration':>14}{'run CPU':>12}",
    ]
    for point in results["amortisation"]:
        lines.append(f"{point['max_records']:>12,}{point['runs']:>6}{_fmt(point['records_per_s'], 1):>28}"
                     f"{point['run_duration_s']:>12.1f} s{point.get('run_cpu_s', float('nan')):>10.2f} s")
    lines += growth_lines(results)
    return "\n".join(lines)


def growth_lines(results: dict[str, Any]) -> list[str]:
    """The live stream into SUCCESS runs, without and with `max_queued_runs` (`bench.queue_growth`)."""
    growth = results.get("queue_growth")
    if not growth:
        return []
    lines = ["", f"live stream into SUCCESS runs, max_wait_s {growth['max_wait_s']}, max_records "
                 f"{growth['max_records']:,} ({growth['records']:,} records at {growth['rate']:,} msg/s):"]
    for point in growth["points"]:
        limit = point["max_queued_runs"]
        name = "no queue limit" if limit is None else f"max_queued_runs {limit}"
        lines.append(f"  {name:<20}{point['runs']:>5} runs of {point['records_per_run']:>7,.0f} records"
                     f"{_fmt(point['records_per_s'], 1):>10} records/s into SUCCESS (drained in "
                     f"{point['drained_s']:.0f} s)")
    return lines


def sensor_lines(results: dict[str, Any]) -> list[str]:
    """The worker against the Dagster sensor that polls Kafka each tick: throughput, latency, a kill -9 each."""
    r = results["ratios"]
    created = results.get("event_to_run_created_s", {})
    lines = ["", "the peer: a Dagster sensor polling Kafka each tick (bench/sensor_location.py), daemon running"]
    for sensor, figures in results.get("sensor_throughput", {}).items():
        rate = figures["msgs_per_s"] or float("nan")
        lines.append(f"  {sensor}: {rate:,.0f} msgs/s into launched runs ({figures['interval_s']:.0f} s interval, "
                     f"tick took {', '.join(f'{t:.1f}' for t in figures['tick_s'])} s)")
        lines.append(f"    service / {sensor}  {r.get(f'service_over_{sensor}', float('nan')):.0f}x"
                     "   (target >= 10x for the tuned 5 s sensor)")
    for name, figures in created.items():
        lines.append(f"  event -> run created, {name:<18} p50 {figures['p50']:7.2f} s   p99 {figures['p99']:7.2f} s"
                     f"   ({figures['batches']} runs)")
    for sensor in results.get("sensor_throughput", {}):
        key = f"service_p99_over_{sensor}_p99"
        if key in r:
            lines.append(f"    service p99 / {sensor} p99  {r[key]:.2f}   (target <= 0.2 for the tuned sensor)")
    for name, kill in results.get("kill", {}).items():
        lines.append(f"  kill -9 the {kill['killed']} ({name}): {kill['lost']:,} of {kill['produced']:,} records in no "
                     f"run, {kill['duplicated']:,} in two; {kill['runs']} runs")
    return lines


def without_samples(results: Any) -> Any:
    """`results` without the long lists of raw values (what a console summary leaves out)."""
    if isinstance(results, dict):
        return {key: without_samples(value) for key, value in results.items()
                if not (key in ("values", "samples") and isinstance(value, list) and len(value) > 8)}
    return results


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def plot(results: dict[str, Any], path: Path) -> None:
    """Throughput per contender and batch size; latency distributions; RSS under backpressure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    t = results["throughput_msgs_per_s"]
    contenders = ["limit", "naive", "service", "service_schema", "service_routes"]
    names = contenders + [f"service x{n}" for n in results.get("workers", {})]
    rates = [t[name] for name in contenders] + list(results.get("workers", {}).values())
    axes[0][0].bar(names, rates, color=["grey", "tab:orange", "tab:blue", "tab:purple", "tab:olive"]
                   + ["tab:cyan"] * (len(names) - len(contenders)))
    axes[0][0].set(title="Throughput (msgs/s, median)", ylabel="msgs/s")
    axes[0][0].tick_params(axis="x", rotation=30)
    points = results["amortisation"]
    axes[0][1].plot([p["max_records"] for p in points], [p["records_per_s"] for p in points], marker="o")
    axes[0][1].set(title="Records/s in SUCCESS runs", xlabel="max_records", ylabel="records/s",
                   xscale="log", yscale="log")
    samples = results["backpressure"]["samples"]
    axes[0][2].plot([s[0] for s in samples], [s[2] for s in samples], label="worker RSS (MB)")
    twin = axes[0][2].twinx()
    twin.plot([s[0] for s in samples], [s[1] for s in samples], color="tab:red", label="backlog (msgs)")
    axes[0][2].set(title="Backpressure: Dagster down", xlabel="s", ylabel="RSS MB", ylim=(0, None))
    twin.set_ylabel("backlog produced (msgs)")
    axes[1][0].hist([s * 1000 for s in results["launch_latency_s"]["values"]], bins=30, alpha=0.7,
                    label="offset range only")
    axes[1][0].hist([s * 1000 for s in results["launch_latency_inline_s"]["values"]], bins=30, alpha=0.7,
                    label=f"{results['launch_latency_inline_s']['records']} records inline")
    axes[1][0].set(title="launchRun latency", xlabel="ms", ylabel="launches")
    axes[1][0].legend()
    axes[1][1].hist(results["event_to_launch_s"]["values"], bins=30, color="tab:green")
    axes[1][1].set(title=f"Event -> LaunchRunSuccess at {results['event_to_launch_s']['rate']} msg/s",
                   xlabel="s", ylabel="batches")
    for name, values in results["throughput_samples"].items():
        axes[1][2].plot(range(1, len(values) + 1), values, marker="o", label=name)
    axes[1][2].set(title="Throughput per repetition", xlabel="repetition", ylabel="msgs/s", yscale="log")
    axes[1][2].legend()
    fig.suptitle(f"kafka-dagster benchmark ({results['mode']}) on {broker_name(results)}, {results['date']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
