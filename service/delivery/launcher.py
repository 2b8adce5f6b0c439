"""The launcher: one run per batch, through the route's rate limits, Dagster's refusals and transient
failures; never launched twice knowingly, and only after proving with the group coordinator, with nothing
awaited in between, that this worker owns the partition (`_fenced_launch`)."""

from __future__ import annotations

import contextlib
import logging
import time
from functools import partial
from typing import Any

from service.batching import Batch
from service.contract import STAGE_LAUNCH
from service.dagster import DagsterClient, Target, location_failure
from service.delivery.config import MAX_DAGSTER_ERROR_ATTEMPTS, Tools
from service.delivery.dead_letters import DeadLetterWriter
from service.delivery.lanes import DeadLetters
from service.delivery.links import ConsumerLink
from service.delivery.ownership import OwnedPartition, RouteShare
from service.delivery.route_retry import RouteRetry
from service.dlq import Failure
from service.duplicates import DuplicateRuns
from service.errors import (
    BatchTooLarge,
    DagsterError,
    DagsterUnavailable,
    Fenced,
    LaunchRejected,
    RateLimited,
    RecordError,
    RequestRejected,
    RouteError,
    TransientError,
)
from service.logs import batch_extra
from service.partition_sets import PartitionSets
from service.retry import Refusal, route_refusal
from service.routes import Route
from service.run_request import launched_run, run_config, run_tags
from service.throttle import Throttle
from service.watcher import RunWatcher

logger = logging.getLogger(__name__)


class Launcher:
    """Works a lane's items: launches a route's batch, or writes its dead letters (`handle`).

    :param tools: the settings, the retries, the metrics and the clocks
    :param client: the Dagster GraphQL client
    :param consumer: proves with the group coordinator that this worker owns a partition (`fence`)
    :param route_retry: pauses a route Dagster refuses, and retries
    :param throttles: the run-rate limits of the routes that have them, by route name
    :param duplicates: settles a batch whose launch answer was lost (no second run knowingly)
    :param dead_letters: writes the dead letters of a lane, and the records of a batch refused for them
    :param watcher: follows each launched run to its end
    """

    def __init__(self, tools: Tools, client: DagsterClient, consumer: ConsumerLink, route_retry: RouteRetry,
                 throttles: dict[str, Throttle], duplicates: DuplicateRuns, dead_letters: DeadLetterWriter,
                 watcher: RunWatcher) -> None:
        self.settings = tools.settings
        self.retrying = tools.retrying
        self.metrics = tools.metrics
        self.clock = tools.clock
        self.wall_clock = tools.wall_clock
        self.client = client
        self.consumer = consumer
        self.route_retry = route_retry
        self.throttles = throttles
        self.duplicates = duplicates
        self.dead_letters = dead_letters
        self.watcher = watcher
        self.partition_sets = PartitionSets(client)

    async def handle(self, owned: OwnedPartition, share: RouteShare | None, item: Batch | DeadLetters) -> None:
        if not owned.may_launch:
            return  # dropped: launch nothing for a partition another worker owns now
        if isinstance(item, DeadLetters):
            await self.dead_letters.write(item.records, item.failure, owned)
        elif share is not None:
            await self._launch(owned, share, item)

    async def _launch(self, owned: OwnedPartition, share: RouteShare, batch: Batch) -> None:
        """Launch the batch's run, then watch it; a route with run-rate limits first waits for a launch slot. A
        batch refused for its records, or by a route that dead-letters refused launches, goes to the DLQ."""
        route = share.route
        throttle = self.throttles.get(route.name)
        try:
            async with throttle.launching() if throttle is not None else contextlib.nullcontext():
                run_id = await self.launch_through_refusals(owned, route, batch)
        except Fenced as exc:
            self.drop_fenced(owned, exc, batch)
            return
        except RecordError as exc:  # its partition key is not a partition of the target: every record's
            logger.error("batch %s (%s/%d offsets %d-%d) not launched: %s; dead-lettering its %d records",
                         batch.batch_id, batch.topic, batch.partition, batch.offset_start, batch.offset_end, exc,
                         len(batch.records), extra=batch_extra(batch))
            failure = Failure.from_exception(exc.stage, exc, route=route.name)
            await self.dead_letters.write(batch.records, failure, owned)
            return
        except RouteError as exc:  # only where the route dead-letters refused launches
            logger.error("launch of batch %s (%s/%d offsets %d-%d) rejected: %s; dead-lettering it "
                         "(on_launch_rejected = \"dead_letter\")", batch.batch_id, batch.topic, batch.partition,
                         batch.offset_start, batch.offset_end, exc, extra=batch_extra(batch))
            failure = Failure.from_exception(STAGE_LAUNCH, exc, route=route.name)
            await self.dead_letters.write(batch.records, failure, owned)
            return
        share.covered = max(share.covered if share.covered is not None else -1, batch.offset_end)
        self._observe_launched(batch, run_id)
        await self.watcher.add(launched_run(run_id, route.job, run_tags(route, batch, self.settings.group_id)))

    def _observe_launched(self, batch: Batch, run_id: str) -> None:
        oldest = min((r.timestamp_ms for r in batch.records if r.timestamp_ms), default=None)
        if oldest:
            self.metrics.event_to_launch.labels(batch.topic).observe(max(0.0, self.wall_clock() - oldest / 1000))
        waited_s = self.clock() - batch.closed_at if batch.closed_at is not None else 0.0
        logger.info("launched run %s for batch %s (route %r, %s/%d offsets %d-%d, %d records, closed by %s "
                    "%.3fs ago)", run_id, batch.batch_id, batch.route, batch.topic, batch.partition,
                    batch.offset_start, batch.offset_end, len(batch.records), batch.reason, waited_s,
                    extra=batch_extra(batch, run_id) | {"closed_s_ago": round(waited_s, 3)})

    async def launch_through_refusals(self, owned: OwnedPartition, route: Route, batch: Batch) -> str:
        """Launch the batch's run; while the route is refused, pause it and retry the same batch.

        Raises `Fenced` if the partition moved, and `RouteError` only for a route that
        dead-letters refused launches. A batch refused for its size goes again with its
        offset range only (the run reads the records back from Kafka).
        """
        inline = True
        too_large: RouteError | None = None  # refused for its size even with the offset range only: a pause

        async def attempt() -> str:
            nonlocal inline, too_large
            while True:
                try:
                    return await self._launch_once(owned, route, batch, inline)
                except BatchTooLarge as exc:
                    if not inline:
                        too_large = RequestRejected(f"{exc}, even with the offset range only",
                                                    hint="raise the request size limit of the proxy in front of "
                                                    "Dagster")
                        raise too_large from exc
                    logger.warning("batch %s was refused for its size (%s); launching it with its offset range "
                                   "only", batch.batch_id, exc, extra=batch_extra(batch))
                    inline = False

        def refusal(exc: Exception) -> Refusal | None:
            if route.dead_letters_rejected_launches and isinstance(exc, RouteError) and exc is not too_large:
                return None  # raised: the route dead-letters refused launches
            return route_refusal(exc)

        return await self.route_retry.until_accepted(route, attempt, refusal)

    async def _launch_once(self, owned: OwnedPartition, route: Route, batch: Batch, inline: bool) -> str:
        """Launch the batch's run, retrying transient failures; never launches it twice knowingly."""
        tags = run_tags(route, batch, self.settings.group_id)
        dagster_errors = 0
        outcome_unknown = False

        async def attempt() -> tuple[str, bool]:
            """The run's id, and whether it is the one an earlier lost answer left (no launch now)."""
            try:
                target = await self.client.workspace.resolve_target(route.job, route.assets, route.location,
                                                                    route.repository, route.batch_op)
                if batch.partition_key is not None:
                    await self.partition_sets.prepare(route, target, batch.partition_key)
                if outcome_unknown:
                    kept = await self.duplicates.settle(route.job, batch.batch_id)
                    if kept is not None:
                        return kept, True
                config = run_config(route, batch, inline, target.batch_ops)
                return await self._fenced_launch(owned, route, batch, target, config, tags), False
            except (RouteError, BatchTooLarge) as exc:
                self._count_launch(route, getattr(exc, "typename", type(exc).__name__))
                raise

        async def on_failure(exc: TransientError) -> None:
            nonlocal dagster_errors, outcome_unknown
            if isinstance(exc, DagsterError):
                dagster_errors += 1
                self._count_launch(route, exc.typename)
                if dagster_errors >= MAX_DAGSTER_ERROR_ATTEMPTS:
                    raise LaunchRejected(exc.typename, f"{exc} ({dagster_errors} times in a row)") from exc
                return
            # The request may have reached Dagster: a run may exist that this worker never heard of.
            outcome_unknown = outcome_unknown or (isinstance(exc, DagsterUnavailable)
                                                  and not isinstance(exc, RateLimited))
            if isinstance(exc, DagsterUnavailable) and exc.http_status is not None and exc.http_status >= 500:
                await self._raise_if_location_broken(route)

        run_id, kept = await self.retrying.transient(attempt, f"launch of batch {batch.batch_id}", on_failure)
        if outcome_unknown and not kept:
            run_id = await self.duplicates.settle(route.job, batch.batch_id) or run_id
        return run_id

    async def _raise_if_location_broken(self, route: Route) -> None:
        """The webserver is up but failed: if the route's code location failed to load, that is a route fault."""
        try:
            broken = await self.client.workspace.broken_locations()
        except TransientError:
            return
        failure = location_failure("CodeLocationError", "Dagster answered HTTP 5xx", broken, route.location)
        if failure is not None:
            raise failure

    async def _fenced_launch(self, owned: OwnedPartition, route: Route, batch: Batch, target: Target,
                             config: dict[str, Any], tags: dict[str, str]) -> str:
        """Prove ownership of the partition, then launch: nothing is awaited between the two."""
        await self._prove_ownership(owned, batch)
        started = time.monotonic()
        try:
            run_id = await self.client.launch_run(target, config, tags)
        except DagsterUnavailable:
            self._count_launch(route, "transport_error")
            raise
        finally:
            self.metrics.run_launch_duration.labels(batch.topic).observe(time.monotonic() - started)
        self._count_launch(route, "LaunchRunSuccess")
        self.metrics.dagster_up.set(1)
        return run_id

    def _count_launch(self, route: Route, result: str) -> None:
        self.metrics.run_launches.labels(route.job, result).inc()

    async def _prove_ownership(self, owned: OwnedPartition, batch: Batch) -> None:
        """Raise `Fenced` unless the coordinator confirms this worker owns the partition now."""
        if not owned.may_launch:
            raise Fenced(f"{owned.tp.topic}/{owned.tp.partition} is no longer assigned to this worker")
        # The commit proving it is of what the partition is done with (every route of it), at most the batch's
        # start, unless the whole batch lies below that (a batch launched again: its offsets are covered).
        done = owned.done_below()
        if done is None:
            offset = batch.offset_start
        elif batch.offset_end < done:
            offset = done
        else:
            offset = min(done, batch.offset_start)
        with self.metrics.fence_duration.time():
            owns = await self.retrying.transient(partial(self.consumer.fence, owned.tp, offset),
                                              f"proving ownership of {owned.tp.topic}/{owned.tp.partition}")
        if not owns:
            raise Fenced(f"the group coordinator refused this worker's commit for "
                         f"{owned.tp.topic}/{owned.tp.partition}: the group has rebalanced without it")

    def drop_fenced(self, owned: OwnedPartition, exc: Fenced, batch: Batch | None = None) -> None:
        """Another worker owns the partition (a launch's fence, or a dead-letter transaction, was refused): launch,
        dead-letter and commit nothing more for it here."""
        owned.fence()
        letters = len(owned.letters)
        owned.letters.clear()
        open_batches = [b for share in owned.shares for b in share.batcher.drain({owned.tp})]
        queued = [item for lane in owned.lanes for item in lane.drain() if isinstance(item, Batch)]
        dropped = [*([batch] if batch is not None else []), *queued, *open_batches]
        self.metrics.fenced.labels(owned.tp.topic).inc(len(dropped))
        span = f" (offsets {min(b.offset_start for b in dropped)}-{max(b.offset_end for b in dropped)})" \
            if dropped else ""
        logger.warning("%s; dropped %d unlaunched batches%s and %d unwritten dead letters for its new owner to "
                       "reconcile and handle", exc, len(dropped), span, letters)
