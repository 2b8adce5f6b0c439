"""What a benchmark run measures, and how much of it: the full run and the quick one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    """Sizes of one benchmark run. Every contender reads the same `messages` from one topic."""

    name: str
    messages: int
    repetitions: int
    backlog: int
    steady_s: float
    launch_samples: int
    amortisation_runs: int
    workers: tuple[int, ...]
    backpressure_hold_s: float
    worker_start_s: float = 8.0  # before the backlog arrives: Faust start and a group join
    backlog_step_pause_s: float = 1.0
    partitions: int = 8
    value_bytes: int = 300
    naive_take: int = 1000
    naive_within_s: float = 1.0
    inline_records: int = 300  # a 2.5 s batch of one partition at 1,000 msg/s over 8 partitions
    steady_rate: int = 1000
    steady_max_wait_s: float = 2.5  # 8 partitions: ~3 launches/s, what one SQLite webserver here absorbs
    # The batch sizes users configure (a run every few hundred ms per partition at 500): each into launched
    # runs on the data set, and into SUCCESS runs (`amortisation_runs` batches, the daemon running them).
    amortisation_sizes: tuple[int, ...] = (500, 5_000)
    pause_down_s: float = 30.0  # how long a route stays paused (code location down) before the fix
    micro_records: int = 20_000  # values per pass of the per-record validation and matching costs
    # The sensor contender (bench.sensor_location): which sensors, records a tick polls at most, ticks to time.
    sensors: tuple[str, ...] = ("kafka_sensor_30s", "kafka_sensor_5s")
    sensor_max_records: int = 25_000  # as the service's runs: one run per partition's slice of a tick
    sensor_ticks: int = 3
    kill_records: int = 40_000  # the kill -9 scenarios' data set
    kill_max_records: int = 500  # the worker's batches there: a launch every few hundred ms per partition
    kill_after_runs: int = 12
    txn_flushes: int = 30  # flushes per size, transactional and plain (`bench.transactions`)
    # One worker's throughput by record size (`bench.record_sizes`): JSON orders padded to each size, as many
    # as `record_sizes_budget_bytes` holds (at most `messages`). A demo order is about 200 bytes unpadded.
    record_sizes: tuple[int, ...] = (200, 1_000, 10_000)
    record_sizes_budget_bytes: int = 200_000_000
    # Batches that grow while Dagster queues the route's runs (`bench.queue_growth`): a live stream of
    # `growth_records` at `growth_rate` msg/s, into SUCCESS runs, without a queue limit and with
    # `max_queued_runs` = `growth_max_queued_runs`.
    growth_records: int = 15_000
    growth_rate: int = 1_000
    growth_partitions: int = 2
    growth_max_records: int = 5_000
    growth_max_wait_s: float = 1.0
    growth_max_queued_runs: int = 1

    @property
    def service_max_records(self) -> int:
        """One run per partition, the fewest launches there can be: each `launchRun` costs ~0.1 s here."""
        return self.messages // self.partitions


FULL = Mode("full", messages=200_000, repetitions=3, backlog=1_000_000, steady_s=20, launch_samples=50,
            amortisation_runs=8, workers=(1, 2, 3), backpressure_hold_s=10)
# The quick run reads the full run's data set once, so its service contender launches runs of the same size
# (25,000 records) and its ratios read like the full run's; it saves on repetitions and the other scenarios.
QUICK = Mode("quick", messages=200_000, repetitions=1, backlog=100_000, steady_s=6, launch_samples=10,
             amortisation_runs=4, workers=(1, 2), backpressure_hold_s=2, worker_start_s=5, backlog_step_pause_s=0.5,
             micro_records=5_000, pause_down_s=10.0, sensors=("kafka_sensor_5s",), sensor_ticks=2,
             kill_records=20_000, txn_flushes=10, record_sizes_budget_bytes=60_000_000,
             growth_records=8_000)
