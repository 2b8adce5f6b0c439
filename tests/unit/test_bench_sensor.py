"""The sensor contender's pure parts: its runs' offset ranges, and how the benchmark counts both contenders."""

from __future__ import annotations

import math

from bench.sensor import Coverage, RunCover, coverage, latencies, tick_rate
from bench.sensor_location import Slice, run_config, run_key, run_tags, slices
from bench.stats import ratios


def test_a_tick_yields_one_run_per_partition_with_a_run_key_of_its_offset_range() -> None:
    positions = [("t", 1, 10), ("t", 0, 5), ("t", 1, 11), ("t", 0, 6), ("t", 0, 7)]
    assert slices(positions) == [Slice("t", 0, 5, 7, 3), Slice("t", 1, 10, 11, 2)]
    assert slices([]) == []
    assert run_key("t", 1, 10, 11) == "t-1-10-11" == Slice("t", 1, 10, 11, 2).run_key


def test_the_sensor_runs_carry_the_workers_config_and_tags() -> None:
    piece = Slice("orders", 3, 100, 199, 100)
    config = run_config(piece, "g")["ops"]["read_batch"]["config"]
    assert (config["offset_start"], config["offset_end"], config["record_count"]) == (100, 199, 100)
    tags = run_tags(piece, "g", 12.5)
    assert (tags["kafka/partition"], tags["kafka/offset_start"], tags["kafka/offset_end"]) == ("3", "100", "199")
    assert tags["kafka/consumer_group"] == "g" and tags["bench/tick"] == "12.500"


def run(partition: int, start: int, end: int, created: float = 0.0, status: str = "QUEUED",
        tick: float | None = None) -> RunCover:
    return RunCover(partition, start, end, created, status, tick)


def test_coverage_counts_lost_and_twice_launched_records_and_ignores_cancelled_duplicates() -> None:
    runs = [run(0, 0, 4), run(0, 3, 6), run(1, 0, 9), run(0, 7, 9, status="CANCELED")]
    assert coverage(runs, {0: 10, 1: 10}) == Coverage(produced=20, covered=17, lost=3, duplicated=2, runs=3)
    assert coverage([], {0: 5}).lost == 5


def test_tick_rate_is_records_per_tick_period_from_the_first_tick_with_runs() -> None:
    runs = [run(0, 0, 99, tick=10.0), run(1, 0, 99, tick=10.0), run(0, 100, 199, tick=20.0),
            run(0, 200, 299, tick=30.0)]
    # ticks at 5 (nothing yet), 10, 20, 30: the records of the ticks at 10 and 20 over 20 s
    assert tick_rate(runs, [5.0, 10.0, 20.0, 30.0]) == 300 / 20
    assert tick_rate(runs, [10.0]) is None
    assert tick_rate([], [1.0, 2.0]) is None


def test_latency_is_first_record_to_run_creation_after_the_warm_up() -> None:
    stamps = {(0, 0): 100.0, (0, 10): 103.0, (1, 0): 100.5}
    runs = [run(0, 0, 9, created=102.0), run(0, 10, 19, created=105.5), run(1, 0, 9, created=104.0),
            run(1, 10, 19, created=110.0, status="CANCELED")]
    assert latencies(runs, stamps, since=0.0) == [2.0, 2.5, 3.5]
    assert latencies(runs, stamps, since=101.0) == [2.5]


def test_ratios_name_only_what_was_measured() -> None:
    results = {"throughput_msgs_per_s": {"limit": 200.0, "service": 100.0},
               "sensor_throughput": {"kafka_sensor_5s": {"msgs_per_s": 4.0}, "kafka_sensor_30s": {"msgs_per_s": None}},
               "event_to_run_created_s": {"service": {"p99": 2.0}, "kafka_sensor_5s": {"p99": 20.0}}}
    found = ratios(results)
    assert found == {"service_over_limit": 0.5, "service_over_kafka_sensor_5s": 25.0,
                     "service_p99_over_kafka_sensor_5s_p99": 0.1}
    assert math.isnan(ratios({"throughput_msgs_per_s": {"limit": 0.0, "service": 1.0}})["service_over_limit"])
