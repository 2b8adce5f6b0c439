"""Every Prometheus metric of the worker, defined once, with the contract's names.

Besides its own, the registry carries what prometheus_client's default
registry would: the process (`process_cpu_seconds_total`,
`process_resident_memory_bytes`, `process_open_fds`, ...), Python's garbage
collector and `python_info`.

Labels take values from small fixed sets (topic, dagster_job, result typename,
status, stage, reason, partition, and the GraphQL type names of Dagster's
event log): never run ids, step keys, keys or offsets.

`dagster_events_total` and `event_processing_seconds` are the event guide's
run metrics. Runs are short-lived processes, so they are counted here, in the
long-running worker, from each finished run's event log (see `watcher.py`).
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

BATCH_RECORD_BUCKETS = (1, 5, 10, 50, 100, 500, 1_000, 5_000, 10_000, 50_000)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
FENCE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
PROCESSING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class Metrics:
    """The worker's metrics, registered on `registry` (a fresh one per worker or test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        PlatformCollector(registry=r)
        self.messages_consumed = Counter(
            "kafka_dagster_messages_consumed", "Messages read from routed topics.", ["topic"], registry=r)
        self.messages_unmatched = Counter(
            "kafka_dagster_messages_unmatched", "Messages of a routed topic that no route's match selected.",
            ["topic"], registry=r)
        self.route_throttled = Counter(
            "kafka_dagster_route_throttled_seconds",
            "Seconds a route held a launch back for its max_runs_per_minute or max_queued_runs.",
            ["route"], registry=r)
        self.batches = Counter(
            "kafka_dagster_batches", "Batches closed, by the reason they closed.",
            ["topic", "reason"], registry=r)
        self.batch_records = Histogram(
            "kafka_dagster_batch_records", "Records per closed batch.",
            ["topic"], buckets=BATCH_RECORD_BUCKETS, registry=r)
        self.run_launches = Counter(
            "kafka_dagster_run_launches",
            "launchRun calls, by the GraphQL result __typename or transport_error.",
            ["dagster_job", "result"], registry=r)
        self.run_launch_duration = Histogram(
            "kafka_dagster_run_launch_duration_seconds", "Duration of one launchRun call, by the batch's topic.",
            ["topic"], buckets=LATENCY_BUCKETS, registry=r)
        self.fence_duration = Histogram(
            "kafka_dagster_fence_duration_seconds",
            "Proving ownership of a partition before a launch (a synchronous offset commit), retries included.",
            buckets=FENCE_BUCKETS, registry=r)
        self.runs_finished = Counter(
            "kafka_dagster_runs_finished", "Launched runs seen reaching a terminal status.",
            ["dagster_job", "status"], registry=r)
        self.dlq_messages = Counter(
            "kafka_dagster_dlq_messages", "Messages written to the dead-letter topic.",
            ["topic", "stage"], registry=r)
        self.consumer_lag = Gauge(
            "kafka_dagster_consumer_lag", "End offset minus committed offset, per partition.",
            ["topic", "partition"], registry=r)
        self.inflight_runs = Gauge(
            "kafka_dagster_inflight_runs", "Launched runs not yet seen in a terminal status.",
            registry=r)
        self.event_to_launch = Histogram(
            "kafka_dagster_event_to_launch_seconds",
            "From the oldest message timestamp of a batch to its LaunchRunSuccess.",
            ["topic"], buckets=LATENCY_BUCKETS, registry=r)
        self.dagster_up = Gauge(
            "kafka_dagster_dagster_up",
            "1 when Dagster's GraphQL API answered the last probe or call (an HTTP answer counts).",
            registry=r)
        self.kafka_up = Gauge(
            "kafka_dagster_kafka_up", "1 when a Kafka bootstrap server answered the last probe.", registry=r)
        self.route_paused = Gauge(
            "kafka_dagster_route_paused",
            "1 while a route cannot launch (reason: unauthorized, job_not_found, code_location_error, "
            "run_config_invalid, "
            "bad_request, launch_rejected, dagster_error, dlq_write, topic_missing).",
            ["route", "reason"], registry=r)
        self.duplicate_runs_cancelled = Counter(
            "kafka_dagster_duplicate_runs_cancelled",
            "Queued runs canceled because another run of the same kafka/batch_id exists "
            "(a launch whose answer was lost, retried).",
            ["dagster_job"], registry=r)
        self.runs_relaunched = Counter(
            "kafka_dagster_runs_relaunched",
            "Batches launched again because none of their runs was left to process them (every run "
            "failed before its steps, or was canceled by the duplicate rule).",
            ["dagster_job"], registry=r)
        self.fenced = Counter(
            "kafka_dagster_fenced_batches",
            "Batches dropped unlaunched because the partition had moved to another worker.",
            ["topic"], registry=r)
        self.dlq_transactions = Counter(
            "kafka_dagster_dlq_transactions",
            "Transactions writing a partition's dead letters with the offset commit that covers them, by "
            "result: committed, failed (retried), fenced (another worker holds the partition now).",
            ["result"], registry=r)
        self.dlq_transaction_duration = Histogram(
            "kafka_dagster_dlq_transaction_duration_seconds",
            "Duration of a committed dead-letter transaction (begin, the letters, the offsets, commit).",
            registry=r)
        self.build_info = Gauge(
            "kafka_dagster_build_info", "The running kafka-dagster version (always 1).", ["version"],
            registry=r)
        self.dagster_events = Counter(
            "dagster_events",
            "Events in the logs of finished runs, by GraphQL event type and the run's terminal status.",
            ["event_type", "status"], registry=r)
        self.event_processing = Histogram(
            "event_processing_seconds",
            "Duration of finished runs' steps (event_type=step: step start to step success or failure) "
            "and of the runs themselves (event_type=run: run start to its terminal event).",
            ["event_type"], buckets=PROCESSING_BUCKETS, registry=r)
        self.event_log_failures = Counter(
            "kafka_dagster_run_event_log_failures",
            "Finished runs whose event log was not (fully) counted, by reason: "
            "unavailable, error, truncated, dropped.",
            ["reason"], registry=r)
