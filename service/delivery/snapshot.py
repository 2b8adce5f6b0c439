"""The status snapshot: what this worker holds right now, as JSON-ready data for /status."""

from __future__ import annotations

import collections
from datetime import UTC, datetime
from typing import Any

from service.delivery.ownership import OwnedPartition, Partitions, PartitionState, RouteShare
from service.dlq import utc_iso
from service.pauses import RoutePauses
from service.records import TP
from service.throttle import Throttle
from service.watcher import RunWatcher


def snapshot(partitions: Partitions, watcher: RunWatcher, pauses: RoutePauses, throttles: dict[str, Throttle],
             now: float) -> dict[str, Any]:
    """What this worker holds right now, as JSON-ready data for /status; reads, changes nothing."""
    inflight = collections.Counter((run.route, run.topic, run.partition)
                                   for run in watcher.inflight.values())
    rows = [_partition_status(owned, now, inflight) for owned in sorted(partitions, key=lambda owned: owned.tp)]
    return {
        "partitions": rows,
        "inflight_runs": len(watcher.inflight),
        "paused_routes": pauses.status(),
        "throttled_routes": {name: throttle.reason for name, throttle in sorted(throttles.items())
                             if throttle.reason is not None},
    }


def _partition_status(owned: OwnedPartition, now: float, inflight: collections.Counter[tuple[str, str, int]]
                      ) -> dict[str, Any]:
    tp = owned.tp
    return {
        "topic": tp.topic, "partition": tp.partition, "epoch": owned.epoch, "position": owned.position,
        "next_offset": owned.next_offset, "done_below": owned.done_below(),
        "handing_over": owned.state is PartitionState.HANDING_OVER,
        "fenced": owned.state is PartitionState.FENCED,
        "unmatched_queued": owned.unmatched.queue.qsize() if owned.unmatched is not None else None,
        "dead_letters_waiting": len(owned.letters),
        "routes": [_share_status(share, tp, now, inflight[(share.route.name, tp.topic, tp.partition)])
                   for share in owned.shares],
    }


def _share_status(share: RouteShare, tp: TP, now: float, inflight: int) -> dict[str, Any]:
    batch = share.batcher.open.get(tp)
    reconciled = share.reconciled
    return {
        "route": share.route.name,
        "open_batch": None if batch is None else {
            "records": len(batch.records), "bytes": batch.size, "age_s": round(now - batch.opened_at, 3),
            "offset_start": batch.offset_start, "offset_end": batch.offset_end,
            "closes_in_s": round(max(0.0, batch.opened_at + batch.wait_s - now), 3)},
        "queued": share.lane.queue.qsize(),
        "covered": share.covered,
        "inflight_runs": inflight,
        "reconcile": None if reconciled is None else {
            "at": utc_iso(datetime.fromtimestamp(reconciled.at, UTC), timespec="seconds"),
            "runs_found": reconciled.runs_found, "covered": reconciled.covered},
    }
