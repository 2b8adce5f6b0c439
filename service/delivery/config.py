"""The delivery's configuration, read once from the worker's settings (`DeliverySettings`), and the tools
every part of it uses alike (`Tools`): two frozen objects."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from service.decoding import JsonBounds
from service.metrics import Metrics
from service.pauses import RoutePauses
from service.retry import ROUTE_RETRY_BASE_S, Retrying
from service.settings import Settings

# A batch whose runs all failed before processing it is launched again at most this many times, after
# `relaunch_base_s`, doubling; then its records go to the DLQ with the reason (docs/delivery.md, Run outcomes).
MAX_SYSTEM_FAILURES = 4
# Dagster answering PythonError this many times in a row is no passing trouble: the route pauses.
MAX_DAGSTER_ERROR_ATTEMPTS = 10


@dataclass(frozen=True)
class DeliverySettings:
    """How the delivery batches, launches, waits and retries.

    :param group_id: the consumer group, tagged on every run and used to reconcile
    :param dlq_topic: the dead-letter topic
    :param max_message_bytes: the record size bound (stage `validate` above it)
    :param json_bounds: depth and key bounds of decoded values
    :param queued_batches_per_partition: closed batches a lane holds before the consumer blocks
    :param retry_max_delay_s: the cap of the backoff for transient failures
    :param route_retry_base_s: the first wait of a paused route
    :param route_retry_max_delay_s: the cap of the backoff of a paused route
    :param location_probe_s: how often a route paused for its code location asks whether it loads again
    :param max_inflight_runs: launched runs watched at once before launching waits
    :param run_poll_interval_s: how often run statuses are polled
    :param duplicate_window_s: how long a batch whose launch answer was lost is checked for duplicates
    :param relaunch_base_s: the first wait before a batch whose runs failed for the system is launched again
    :param relaunch_max_delay_s: the cap of that wait
    """

    group_id: str
    dlq_topic: str
    max_message_bytes: int
    json_bounds: JsonBounds = field(default_factory=JsonBounds)
    queued_batches_per_partition: int = 4
    retry_max_delay_s: float = 30.0
    route_retry_base_s: float = ROUTE_RETRY_BASE_S
    route_retry_max_delay_s: float = 120.0
    location_probe_s: float = 3.0
    max_inflight_runs: int = 64
    run_poll_interval_s: float = 1.0
    duplicate_window_s: float = 120.0
    relaunch_base_s: float = 5.0
    relaunch_max_delay_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliverySettings:
        return cls(
            group_id=settings.group_id,
            dlq_topic=settings.dlq_topic,
            max_message_bytes=settings.max_message_bytes,
            json_bounds=JsonBounds(settings.max_json_depth, settings.max_json_keys),
            queued_batches_per_partition=settings.queued_batches_per_partition,
            retry_max_delay_s=settings.retry_max_delay_s,
            route_retry_max_delay_s=settings.route_retry_max_delay_s,
            max_inflight_runs=settings.max_inflight_runs,
            duplicate_window_s=2 * settings.dagster_timeout_s + 60,
            relaunch_max_delay_s=min(cls.relaunch_max_delay_s, settings.route_retry_max_delay_s),
        )


@dataclass(frozen=True)
class Tools:
    """What every part of the delivery uses alike, made once by `Delivery`: a part takes them as one, and its
    constructor names besides only what it needs of its own.

    :param settings: how it batches, launches, waits and retries
    :param metrics: the worker's metrics
    :param retrying: the transient retries, and the backoff of a paused route (`service.retry`)
    :param pauses: which routes are paused, and why (`service.pauses`)
    :param clock: monotonic time, for batch deadlines and waits
    :param wall_clock: epoch time, for a record's way to the worker and when a reconcile ran
    """

    settings: DeliverySettings
    metrics: Metrics
    retrying: Retrying
    pauses: RoutePauses
    clock: Callable[[], float]
    wall_clock: Callable[[], float]
