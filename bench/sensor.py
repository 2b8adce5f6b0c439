"""The sensor contender (`bench.sensor_location`) beside the worker: throughput, latency, a kill -9 each.

Both contenders' runs carry the `kafka/*` tags, so one reading of Dagster's
runs (`runsOrError`, by `kafka/consumer_group`) counts records for both: what
each launched, when (the run's `creationTime`), and which records no run, or
more than one live run, covers.

While these phases run the daemon holds every run in the queue
(`max_concurrent_runs: 0`): runs are launched (created and queued, as the
worker's are in the other phases) but their processes do not compete for the CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.context import Context
from bench.data import make_values, produce_fast, produce_steady
from bench.sensor_names import SENSORS, TAG_TICK
from bench.stats import percentile
from bench.worker import RouteSpec, Worker, unique, wait_launched, worker_env
from service.contract import TAG_CONSUMER_GROUP, TAG_OFFSET_END, TAG_OFFSET_START, TAG_PARTITION
from service.dagster import DagsterClient
from service.dev.stack import Dagster, StackError, wait_until
from service.kafka import ensure_topics, read_topic

RUNS_QUERY = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) { ... on Runs { results { runId status creationTime tags { key value } } } }
}"""
NOT_LIVE = {"CANCELED", "CANCELING"}  # a duplicate the worker's rule stood down: not a launch that counts


@dataclass(frozen=True)
class RunCover:
    """One run of a contender: the offsets it covers, when it was created, and (sensors) its tick."""

    partition: int
    offset_start: int
    offset_end: int
    created: float
    status: str
    tick: float | None = None

    @property
    def records(self) -> int:
        return self.offset_end - self.offset_start + 1


@dataclass(frozen=True)
class Coverage:
    """Records produced, in no live run (lost), and in more than one (launched twice)."""

    produced: int
    covered: int
    lost: int
    duplicated: int
    runs: int


def coverage(runs: Iterable[RunCover], produced: Mapping[int, int]) -> Coverage:
    """`produced`: partition -> records (offsets 0 .. n-1). Cancelled runs do not count."""
    live = [run for run in runs if run.status not in NOT_LIVE]
    counts: dict[int, Counter[int]] = {partition: Counter() for partition in produced}
    for run in live:
        counts.setdefault(run.partition, Counter()).update(range(run.offset_start, run.offset_end + 1))
    total = sum(produced.values())
    covered = sum(1 for p, n in produced.items() for offset in range(n) if counts[p][offset] > 0)
    duplicated = sum(1 for p in counts for offset, seen in counts[p].items() if seen > 1)
    return Coverage(total, covered, total - covered, duplicated, len(live))


def tick_rate(runs: Sequence[RunCover], tick_starts: Sequence[float]) -> float | None:
    """Records per second a sensor takes in its steady state: the records of each tick from the first one
    that requested runs up to (not including) the last tick started, over the time between those starts."""
    with_runs = sorted({run.tick for run in runs if run.tick is not None})
    if not with_runs:
        return None
    first = with_runs[0]
    later = sorted(start for start in tick_starts if start > first + 0.001)
    if not later:
        return None
    last = later[-1]
    records = sum(run.records for run in runs if run.tick is not None and first - 0.001 <= run.tick < last - 0.001)
    return records / (last - first)


def latencies(runs: Iterable[RunCover], timestamps: Mapping[tuple[int, int], float], since: float) -> list[float]:
    """Per run: its first record's timestamp -> the run's creation, for runs whose first record is after `since`."""
    born = [(timestamps[(run.partition, run.offset_start)], run.created) for run in runs
            if run.status not in NOT_LIVE and (run.partition, run.offset_start) in timestamps]
    return sorted(created - ts for ts, created in born if ts >= since)


def _cover(run: Mapping[str, Any]) -> RunCover | None:
    tags = {tag["key"]: tag["value"] for tag in run["tags"]}
    if TAG_OFFSET_START not in tags:
        return None
    tick = tags.get(TAG_TICK)
    return RunCover(int(tags[TAG_PARTITION]), int(tags[TAG_OFFSET_START]), int(tags[TAG_OFFSET_END]),
                    float(run["creationTime"]), run["status"], float(tick) if tick else None)


async def _runs(graphql_url: str, group: str) -> list[RunCover]:
    client = DagsterClient(graphql_url)
    try:
        data = await client.execute(RUNS_QUERY, {"filter": {"tags": [{"key": TAG_CONSUMER_GROUP, "value": group}]}})
    finally:
        await client.aclose()
    return [cover for run in data["runsOrError"]["results"] if (cover := _cover(run)) is not None]


def runs_of_group(ctx: Context, group: str) -> list[RunCover]:
    """Every run Dagster holds of consumer group `group` (the worker's or a sensor's)."""
    return asyncio.run(_runs(ctx.dagster.graphql_url, group))


class SensorControl:
    """Points the running sensors of `bench.sensor_location` at a topic, and reads what their ticks did."""

    def __init__(self, folder: Path, bootstrap: str) -> None:
        self.folder = folder
        self.bootstrap = bootstrap
        folder.mkdir(parents=True, exist_ok=True)

    def point(self, sensor: str, topic: str, max_records: int) -> str:
        """Consume `topic` from its start in a fresh group from the sensor's next tick; return the group."""
        group = unique(f"bench-{sensor}")
        (self.folder / f"{sensor}.json").write_text(json.dumps(
            {"bootstrap": self.bootstrap, "topic": topic, "group": group, "max_records": max_records}))
        return group

    def stop(self, sensor: str) -> None:
        (self.folder / f"{sensor}.json").unlink(missing_ok=True)

    def events(self, sensor: str, since: float = 0.0) -> list[dict[str, Any]]:
        path = self.folder / f"{sensor}.events"
        if not path.exists():
            return []
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [event for event in lines if event["tick"] >= since]

    def tick_starts(self, sensor: str, since: float) -> list[float]:
        return [event["tick"] for event in self.events(sensor, since) if event["event"] == "started"]


def sensor_dir(workdir: Path) -> Path:
    """Where the benchmark tells the sensors what to consume (`$BENCH_SENSOR_DIR` of the Dagster processes)."""
    return workdir / "sensors"


def hold_runs(dagster: Dagster) -> None:
    """Restart the daemon with `max_concurrent_runs: 0`: it runs the sensors and queues runs, launches none."""
    dagster.daemon.stop()
    dagster.max_concurrent_runs = 0
    dagster.write_config()
    dagster.daemon.start()


def _interval(sensor: str) -> float:
    return float(SENSORS[sensor])


def _ticks(wanted: int, sensor: str) -> int:
    """Ticks to time after the first with runs: `wanted`, or fewer for a sensor whose ticks are far apart."""
    return max(1, min(wanted, int(60 // _interval(sensor))))


def sensor_throughput(ctx: Context, control: SensorControl, sensors: Sequence[str]) -> dict[str, Any]:
    """Each sensor on the pre-produced data set in a group of its own, all at once, until each has
    `sensor_ticks` ticks after its first with runs (2 for the 30 s one); records/s in its steady state
    (`tick_rate`)."""
    mode = ctx.mode
    since = time.time()
    groups = {sensor: control.point(sensor, ctx.topic, mode.sensor_max_records) for sensor in sensors}
    results: dict[str, Any] = {}
    try:
        def enough(sensor: str) -> bool:
            runs = runs_of_group(ctx, groups[sensor])
            ticks = [t for t in control.tick_starts(sensor, since) if runs and t > min(r.tick or 0 for r in runs)]
            return len(ticks) >= _ticks(mode.sensor_ticks, sensor)
        for sensor in sorted(sensors, key=_interval):
            needed = _ticks(mode.sensor_ticks, sensor)
            wait_until(lambda s=sensor: enough(s), _interval(sensor) * (needed + 3) + 30,
                       f"{sensor} to tick {needed} times after its first with runs")
            runs = runs_of_group(ctx, groups[sensor])
            starts = control.tick_starts(sensor, since)
            rate = tick_rate(runs, starts)
            per_tick = [event for event in control.events(sensor, since) if event["event"] == "committed"]
            results[sensor] = {"msgs_per_s": rate, "interval_s": _interval(sensor), "runs": len(runs),
                               "records": sum(r.records for r in runs),
                               "tick_s": [round(e["at"] - e["tick"], 2) for e in per_tick]}
    finally:
        for sensor in sensors:
            control.stop(sensor)
    return results


def event_to_launch_side_by_side(ctx: Context, control: SensorControl, sensors: Sequence[str],
                                 warm_up_s: float) -> dict[str, Any]:
    """The worker (`max_wait_s` as the latency figure's) and each sensor on one topic at the steady rate:
    per run, its first record's timestamp -> the run's creation in Dagster (`service`, `<sensor>`), and for
    the worker also -> its `LaunchRunSuccess` (`service_launch_success`, from its log).

    The worker's runs whose first record came in the first `warm_up_s` (its one-off reconcile with Dagster
    when it gets a partition) are left out; every sensor run counts (each tick pays its group join).
    """
    mode = ctx.mode
    topic = unique("bench.side")
    count = int(mode.steady_rate * mode.steady_s)
    values = make_values(count, mode.value_bytes)
    asyncio.run(ensure_topics(ctx.bootstrap, {topic: mode.partitions}))
    groups = {sensor: control.point(sensor, topic, mode.sensor_max_records) for sensor in sensors}
    try:
        with ctx.workers(1, RouteSpec(topic, 1_000_000, mode.steady_max_wait_s)) as workers:
            workers[0].wait_ready()
            asyncio.run(produce_steady(ctx.bootstrap, topic, values, mode.steady_rate, mode.partitions))
            _, launches = wait_launched(workers, count, timeout_s=60)
            groups["service"] = worker_group(workers[0])
        for sensor in sorted(sensors, key=_interval):
            wait_until(lambda s=sensor: coverage(runs_of_group(ctx, groups[s]), _ends(count, mode.partitions)).lost
                       == 0, _interval(sensor) * 2 + 60, f"{sensor} to launch the steady records", interval_s=1.0)
    finally:
        for sensor in sensors:
            control.stop(sensor)
    read = asyncio.run(read_topic(ctx.bootstrap, topic))
    timestamps = {(p, o): m.timestamp / 1000 for p, o, m in read}  # type: ignore[attr-defined]
    first = min(timestamps.values())
    by_launch = [RunCover(launch.partition, launch.offset_start, launch.offset_end, launch.at, "QUEUED")
                 for launch in launches]
    results = {name: latencies(runs_of_group(ctx, group), timestamps, first + (warm_up_s if name == "service" else 0))
               for name, group in groups.items()}
    results["service_launch_success"] = latencies(by_launch, timestamps, first + warm_up_s)
    return {name: {"p50": percentile(values_s, 50), "p99": percentile(values_s, 99), "batches": len(values_s),
                   "values": values_s} for name, values_s in results.items()}


def worker_group(worker: Worker) -> str:
    return worker.process.env["KAFKA_DAGSTER_GROUP_ID"]


def _ends(count: int, partitions: int) -> dict[int, int]:
    """Records per partition of `count` values produced round-robin."""
    return {p: len(range(p, count, partitions)) for p in range(partitions)}


def _produce(ctx: Context, topic: str, count: int) -> dict[int, int]:
    asyncio.run(produce_fast(ctx.bootstrap, topic, make_values(count, ctx.mode.value_bytes), ctx.mode.partitions))
    return _ends(count, ctx.mode.partitions)


def _settled(ctx: Context, group: str, produced: Mapping[int, int], quiet_s: float,
             drained: Callable[[], bool]) -> Coverage:
    """Wait until no run of `group` appeared for `quiet_s`, and either every record is in a run or the
    contender says it has read everything (`drained`); the coverage then: what is missing is lost."""
    seen = {"runs": -1, "since": time.monotonic()}

    def done() -> bool:
        runs = runs_of_group(ctx, group)
        if len(runs) != seen["runs"]:
            seen["runs"], seen["since"] = len(runs), time.monotonic()
        quiet = time.monotonic() - seen["since"] >= quiet_s
        return quiet and (coverage(runs, produced).lost == 0 or drained())
    with contextlib.suppress(StackError):  # out of time: what is still missing counts as lost
        wait_until(done, 120, f"the runs of {group} to cover the records", interval_s=1.0)
    return coverage(runs_of_group(ctx, group), produced)


def kill_sensor_daemon(ctx: Context, control: SensorControl, sensor: str = "kafka_sensor_5s") -> dict[str, Any]:
    """kill -9 the daemon as the sensor's second tick starts (the code server evaluates it), start it again,
    and let the sensor drain the topic: what no run covers, and what two runs cover."""
    mode = ctx.mode
    topic = unique("bench.kill-sensor")
    produced = _produce(ctx, topic, mode.kill_records)
    since = time.time()
    group = control.point(sensor, topic, mode.kill_records // 4)
    try:
        wait_until(lambda: len(control.tick_starts(sensor, since)) >= 2, _interval(sensor) * 4 + 30,
                   f"{sensor}'s second tick", interval_s=0.02)
        ctx.dagster.daemon.kill()
        killed_at = time.time()
        time.sleep(1.0)
        ctx.dagster.daemon.start()

        def drained() -> bool:  # a tick since the restart read nothing: the group is at the topic's end
            return any(e["event"] == "committed" and e["records"] == 0 for e in control.events(sensor, killed_at))
        result = _settled(ctx, group, produced, quiet_s=_interval(sensor) * 2, drained=drained)
    finally:
        control.stop(sensor)
    killed_tick = [e for e in control.events(sensor, since) if e["event"] == "committed" and e["tick"] < killed_at]
    return asdict(result) | {"killed": "daemon", "ticks_before_kill": len(killed_tick)}


def kill_worker(ctx: Context) -> dict[str, Any]:
    """kill -9 the worker once it has launched `kill_after_runs` runs, start another in its group, and let
    it finish: what no run covers, and what two live runs cover."""
    mode = ctx.mode
    topic = unique("bench.kill-worker")
    produced = _produce(ctx, topic, mode.kill_records)
    routes_path = ctx.routes([RouteSpec(topic, mode.kill_max_records, 1.0)])
    group = unique("bench-group")
    env = worker_env(ctx.bootstrap, ctx.dagster.graphql_url, routes_path, group)
    first = Worker(ctx.workdir, f"{group}-killed", env)
    second = Worker(ctx.workdir, f"{group}-after", env)
    try:
        first.start()
        wait_until(lambda: len(first.launches()) >= mode.kill_after_runs, 120,
                   f"{mode.kill_after_runs} launches before the kill", interval_s=0.05)
        first.process.kill()
        launched_before = len(first.launches())
        second.start()
        result = _settled(ctx, group, produced, quiet_s=5.0, drained=lambda: False)
    finally:
        first.stop()
        second.stop()
    return asdict(result) | {"killed": "worker", "runs_before_kill": launched_before}
