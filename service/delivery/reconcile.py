"""Reconcile: before a partition's first record is handled, Dagster tells which of its offsets runs already
cover, route by route; runs still going, or ended unsettled while no worker watched them, are watched."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from functools import partial

from service.contract import TAG_BATCH_ID, TAG_CONSUMER_GROUP, TAG_OFFSET_END, TAG_PARTITION, TAG_ROUTE, TAG_TOPIC
from service.dagster import DagsterClient
from service.delivery.config import Tools
from service.delivery.links import ConsumerLink, HandledOutcomes
from service.delivery.ownership import OwnedPartition, Partitions, Reconciled, RouteShare
from service.delivery.route_retry import RouteRetry
from service.outcomes import DUPLICATE
from service.records import TP
from service.run_request import launched_run
from service.verdicts import RunInfo, survivor
from service.watcher import FAILED, TERMINAL, RunWatcher

logger = logging.getLogger(__name__)


class Reconciler:
    """Asks Dagster, once per route of an owned partition, what its runs cover (`covered`).

    :param tools: the consumer group, the retries, the route pauses and the wall clock
    :param partitions: the owned partitions, with their routes and batchers
    :param client: the Dagster GraphQL client
    :param route_retry: pauses a route Dagster refuses, and retries
    :param watcher: follows the runs found still going or ended unsettled
    :param outcomes: which failed runs are settled already, by any worker
    :param consumer: stops fetching the partitions of a paused route
    """

    def __init__(self, tools: Tools, partitions: Partitions, client: DagsterClient, route_retry: RouteRetry,
                 watcher: RunWatcher, outcomes: HandledOutcomes, consumer: ConsumerLink) -> None:
        self.settings = tools.settings
        self.retrying = tools.retrying
        self.pauses = tools.pauses
        self.wall_clock = tools.wall_clock
        self.partitions = partitions
        self.client = client
        self.route_retry = route_retry
        self.watcher = watcher
        self.outcomes = outcomes
        self.consumer = consumer

    def on_assigned(self, tps: Iterable[TP]) -> None:
        """New assignment: reconcile each route of its partitions all at once, before their records
        arrive, spread their first batch deadlines, and keep paused routes' partitions from fetching."""
        tps = [tp for tp in tps if self.partitions.routes.for_topic(tp.topic)]
        for batcher in self.partitions.batchers.values():
            batcher.stagger(tp for tp in tps if self.partitions.routes[batcher.route].reads(tp.topic))
        paused: set[TP] = set()
        for tp in tps:
            owned = self.partitions.acquire(tp)
            for share in owned.shares:
                if share.covered is None:
                    self._task(owned, share)
                if self.pauses.is_paused(share.route.name):
                    paused.add(tp)
        if paused:
            self.consumer.pause(paused)

    async def covered(self, owned: OwnedPartition, share: RouteShare) -> int:
        """Highest offset of the partition inside a launched run of the route (-1: none); asks Dagster once."""
        if share.covered is None:
            task = self._task(owned, share)
            try:
                share.covered = await asyncio.shield(task)
            finally:
                if task.done() and share.covered is None:  # a failure is not kept: the next caller asks again
                    share.reconcile = None
        return share.covered

    def _task(self, owned: OwnedPartition, share: RouteShare) -> asyncio.Task[int]:
        if share.reconcile is None:
            share.reconcile = asyncio.create_task(
                self.route_retry.until_accepted(share.route, partial(self.retrying.transient,
                                                                     partial(self._reconcile, owned.tp, share),
                                                                     "reconcile")),
                name=f"reconcile-{share.route.name}-{owned.tp.topic}-{owned.tp.partition}")
        return share.reconcile

    async def _reconcile(self, tp: TP, share: RouteShare) -> int:
        route = share.route
        runs = await self.client.find_runs(
            {TAG_TOPIC: tp.topic, TAG_PARTITION: str(tp.partition), TAG_CONSUMER_GROUP: self.settings.group_id,
             TAG_ROUTE: route.name},
            job=route.job,
            limit=1000,
        )
        covered = max((int(run.tags[TAG_OFFSET_END]) for run in runs), default=-1)
        share.reconciled = Reconciled(self.wall_clock(), len(runs), covered)
        unsettled = 0
        for batch_runs in _by_batch(runs).values():
            unsettled += await self._adopt_unsettled(batch_runs)
        logger.info("reconciled route %r on %s/%d: %d earlier runs (%d ended ones not yet settled), covered "
                    "up to offset %d", route.name, tp.topic, tp.partition, len(runs), unsettled, covered)
        return covered

    async def _adopt_unsettled(self, batch_runs: list[RunInfo]) -> int:
        """Watch a batch's runs still going, and those that ended unsettled while no worker watched them (the
        watcher settles them at its next poll); a batch whose runs the duplicate rule all cancelled, once."""
        unsettled = 0
        outcomes = set()
        for run in batch_runs:
            if run.status not in TERMINAL:
                self.watcher.adopt(launched_run(run.run_id, run.job, run.tags))
            elif run.status in FAILED:
                outcome = await self.outcomes.outcome(run.run_id)
                outcomes.add(outcome)
                if outcome is None:
                    self.watcher.adopt(launched_run(run.run_id, run.job, run.tags))
                    unsettled += 1
        if outcomes == {DUPLICATE} and survivor(batch_runs) is None:  # a race, then its worker died
            newest = max(batch_runs, key=lambda run: (run.creation_time, run.run_id))
            self.watcher.adopt(launched_run(newest.run_id, newest.job, newest.tags))
            unsettled += 1
        return unsettled


def _by_batch(runs: Iterable[RunInfo]) -> dict[str, list[RunInfo]]:
    batches: dict[str, list[RunInfo]] = {}
    for run in runs:
        batches.setdefault(run.tags.get(TAG_BATCH_ID) or run.run_id, []).append(run)
    return batches
