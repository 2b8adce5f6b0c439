"""Delivery: from consumed records to launched runs and dead letters.

This is where the delivery invariant is kept. Every record of a routed topic
ends in exactly one launched run's offset range or in the DLQ (stages decode,
validate, and launch where a route asks to dead-letter refused launches), and
only then is it marked done, so its offset may be committed. Records arrive as
fetched chunks of one partition, in offset order; each partition's records are
marked done in that same order.

`Delivery` is the facade the worker calls; it holds no rules and hands each
call to the part that owns it, a record's way top-down:

- `ownership`: each owned topic-partition is one `OwnedPartition`, made when
  it is assigned and dropped when it is revoked, with a state (assigned,
  handing over, fenced, dropped) and the named rules `may_launch`,
  `may_commit` and `owns(record)`; `lanes`: its route's closed batches and
  dead letters, worked one at a time in offset order (a full lane blocks the
  consumer, which keeps memory bounded while Dagster is down).
- `reconcile`: before the first record of a partition is handled, runs tagged
  with its topic, partition, consumer group and route tell the highest offset
  already covered, and those records are skipped.
- `intake`: records are routed, decoded, checked and batched; a bad record
  goes to the DLQ alone.
- `launcher`: a batch is launched through the route's rate limits, Dagster's
  refusals (the route pauses: `route_retry`, `service.retry`) and transient
  failures; before every launch the worker proves with the group coordinator
  that it still owns the partition, and a worker that lost it drops the
  partition's batches and launches nothing.
- `dead_letters`, `failed_runs`: the DLQ writes (one by one:
  `DeadLetterWriter`; with transactions, a partition's dead letters and the
  commit that covers them in one transaction: `DeadLetterCommits`), and the
  batches of runs that did not succeed, settled by the one rule of
  `service.verdicts` (their records' copies: `DeadLetterWriter`).
- `handover`: what is open at a rebalance or shutdown; `snapshot`: /status.

The way back up to the consumer is one protocol, `links.ConsumerLink` (fence,
mark done, pause, resume), handed over with the rest of what the delivery
reaches the world through as one `links.Links`. What every part uses alike
(settings, metrics, retries, route pauses, clocks) is one `config.Tools`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any

from service.contract import TAG_CONSUMER_GROUP  # noqa: F401  (re-exported)
from service.dagster import DagsterClient
from service.delivery.config import MAX_SYSTEM_FAILURES, DeliverySettings, Tools
from service.delivery.dead_letters import DeadLetterCommits, DeadLetterWriter
from service.delivery.failed_runs import FailedRuns, RunRecords
from service.delivery.framed import FramedValues
from service.delivery.handover import HandOver
from service.delivery.intake import Intake, batchers_of
from service.delivery.launcher import Launcher
from service.delivery.links import ConsumerLink, Links
from service.delivery.ownership import Partitions
from service.delivery.reconcile import Reconciler
from service.delivery.route_retry import RouteRetry
from service.delivery.snapshot import snapshot
from service.duplicates import DuplicateRuns
from service.metrics import Metrics
from service.pauses import RoutePauses
from service.records import TP, Record
from service.retry import Retrying
from service.routes import RouteTable
from service.run_request import inline_records_json, run_config, run_tags
from service.throttle import Throttle
from service.watcher import LaunchedRun, RunWatcher

__all__ = ["MAX_SYSTEM_FAILURES", "ConsumerLink", "Delivery", "DeliverySettings", "Links", "inline_records_json",
           "run_config", "run_tags"]


class Delivery:
    """Batching, launching, reconciling and dead-lettering for one worker: the worker's one entry, which hands
    each call to the part that owns it.

    :param settings: how it batches, launches, waits and retries
    :param routes: the routes (`service.routes.RouteTable`: by name, and which read each topic)
    :param client: the Dagster GraphQL client
    :param links: what it reaches the world through: the consumer, the DLQ producer, the outcomes topic, the
        reader of offset ranges, the worker's stop, and the schema registry and transactional producers where
        there are (`links.Links`)
    :param metrics: the worker's metrics
    :param clock: monotonic time, for batch deadlines and waits
    :param wall_clock: epoch time, to credit a batch's clock with its first record's way to the worker
    """

    def __init__(self, settings: DeliverySettings, routes: RouteTable, client: DagsterClient, links: Links,
                 metrics: Metrics, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.routes = routes
        self.consumer = consumer = links.consumer
        self.clock = clock
        self.retrying = Retrying(metrics, settings.retry_max_delay_s, settings.route_retry_max_delay_s,
                                 settings.route_retry_base_s)
        self.pauses = RoutePauses(metrics, self._on_route_pause)
        tools = Tools(settings, metrics, self.retrying, self.pauses, clock, wall_clock)
        self.partitions = Partitions(routes, batchers_of(routes), consumer, settings.queued_batches_per_partition,
                                     links.on_fatal)
        self.throttles = {name: Throttle(name, r.job, metrics, max_runs_per_minute=r.max_runs_per_minute,
                                         max_queued_runs=r.max_queued_runs,
                                         queued_runs=lambda job: client.count_runs(job, ["QUEUED"]), clock=clock)
                          for name, r in routes.items() if r.throttled}
        self.duplicates = DuplicateRuns(client, metrics, links.outcomes, settings.duplicate_window_s,
                                        MAX_SYSTEM_FAILURES, clock)
        self.watcher = RunWatcher(client, metrics, self.on_run_failed, settings.max_inflight_runs,
                                  settings.run_poll_interval_s, sweep=self.duplicates.sweep)
        route_retry = RouteRetry(tools, client)
        self.framed = None if links.registry is None else FramedValues(links.registry, route_retry, self.retrying)
        self.transactions = transactions = links.transactions
        dead_letter_writer = DeadLetterWriter(tools, links.dead_letters, transactions)
        self.launcher = Launcher(tools, client, consumer, route_retry, self.throttles, self.duplicates,
                                 dead_letter_writer, self.watcher)
        self.partitions.work = self.launcher.handle
        self.reconciler = Reconciler(tools, self.partitions, client, route_retry, self.watcher, links.outcomes,
                                     consumer)
        self.intake = Intake(tools, self.partitions, self.reconciler, self.throttles, self.framed)
        self.failed_runs = FailedRuns(tools, self.partitions, self.launcher, dead_letter_writer, self.duplicates,
                                      self.watcher, links.outcomes,
                                      RunRecords(tools, routes, links.read_range, self.framed))
        self.dead_letter_commits = None if transactions is None else DeadLetterCommits(
            tools, self.partitions, transactions, consumer, self.launcher.drop_fenced)
        commits = self.dead_letter_commits
        self.hand_over = HandOver(self.partitions, self.intake, None if commits is None else commits.flush_partition,
                                  None if transactions is None else transactions.release)

    # -- the consumer's calls, in a record's order --------------------------

    def epoch(self, tp: TP) -> int:
        """The current assignment epoch of `tp`, stamped on its fetched records; 0 while shutting down."""
        return self.partitions.epoch(tp)

    def on_assigned(self, tps: Iterable[TP]) -> None:
        self.reconciler.on_assigned(tps)

    async def on_records(self, records: Sequence[Record]) -> None:
        await self.intake.on_records(records)

    async def tick(self) -> None:
        await self.intake.tick()

    def seconds_to_next_deadline(self, at_most: float) -> float:
        return self.intake.seconds_to_next_deadline(at_most)

    async def on_run_failed(self, run: LaunchedRun, status: str) -> None:
        await self.failed_runs.on_run_failed(run, status)

    async def before_seek(self, tps: Iterable[TP]) -> None:
        """Partitions are assigned and their committed offsets about to be read: with transactions, take over
        their transactional ids first (fencing any earlier holder, ending its open transaction)."""
        if self.transactions is not None:
            await self.retrying.transient(partial(self.transactions.acquire, list(tps)),
                                          "initialising the partitions' transactional ids")

    async def flush_dead_letters(self) -> None:
        """With transactions: write every partition's due dead letters with the commit that covers them."""
        if self.dead_letter_commits is not None:
            await self.dead_letter_commits.flush()

    async def on_revoked(self, tps: Iterable[TP], timeout_s: float) -> None:
        await self.hand_over.on_revoked(tps, timeout_s)

    async def close(self, timeout_s: float) -> None:
        await self.hand_over.close(timeout_s)

    # -- what the worker reads ----------------------------------------------

    async def retry_transient(self, call: Callable[[], Awaitable[Any]], what: str) -> Any:
        """`call()`, retried with backoff for as long as it fails transiently."""
        return await self.retrying.transient(call, what)

    @property
    def next_offsets(self) -> dict[TP, int]:
        return self.partitions.next_offsets

    @property
    def positions(self) -> dict[TP, int]:
        return self.partitions.positions

    def snapshot(self) -> dict[str, Any]:
        """What this worker holds right now, as JSON-ready data for /status; reads, changes nothing."""
        return snapshot(self.partitions, self.watcher, self.pauses, self.throttles, self.clock())

    def _on_route_pause(self, route: str, paused: bool) -> None:
        tps = self.partitions.with_route(route)
        if tps:
            (self.consumer.pause if paused else self.consumer.resume)(tps)
