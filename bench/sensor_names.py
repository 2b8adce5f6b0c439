"""What the sensor contender's code location and the benchmark that drives it both name."""

from __future__ import annotations

SENSORS = {"kafka_sensor_30s": 30, "kafka_sensor_5s": 5}  # Dagster's default interval, and a tuned one
DIR_ENV = "BENCH_SENSOR_DIR"  # the folder of `<sensor>.json` (what to consume) and `<sensor>.events` (ticks)
TAG_TICK = "bench/tick"  # the tick's start (epoch seconds): which runs one tick requested
