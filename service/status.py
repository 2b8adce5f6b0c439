"""`kafka-dagster status`: the worker's /status document as a table for a terminal.

Pure: the document comes from `service.worker` (`Delivery.snapshot` plus
committed offsets and lag); docs/cli.md describes its fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

COLUMNS = ("ROUTE", "PARTITION", "OPEN BATCH", "QUEUED", "COMMITTED", "COVERED", "LAG", "IN-FLIGHT",
           "LAST RECONCILE")


def render(status: dict[str, Any]) -> str:
    """The summary lines, one table row per (route, partition), then paused and throttled routes."""
    partitions = status.get("partitions", [])
    lines = [f"kafka-dagster {status.get('version', '?')}  group {status.get('group_id', '?')}  "
             f"dlq {status.get('dlq_topic', '?')}",
             f"{len(partitions)} partitions owned, {status.get('inflight_runs', 0)} runs in flight"]
    rows = [row for partition in partitions for row in _rows(partition)]
    lines.append("")
    lines.extend(table(COLUMNS, rows) if rows else ["no partition assigned (yet)"])
    lines.append("")
    lines.extend(_routes(status))
    return "\n".join(lines)


def _rows(partition: dict[str, Any]) -> list[list[str]]:
    where = f"{partition['topic']}/{partition['partition']}"
    if partition.get("fenced"):
        where += " (fenced)"
    elif partition.get("handing_over"):
        where += " (handing over)"
    committed, lag = _text(partition.get("committed")), _text(partition.get("lag"))
    rows = []
    for share in partition.get("routes", []):
        rows.append([share["route"], where, _open_batch(share.get("open_batch")), str(share.get("queued", 0)),
                     committed, _text(share.get("covered")), lag, str(share.get("inflight_runs", 0)),
                     _reconcile(share.get("reconcile"))])
    if partition.get("unmatched_queued") is not None:
        rows.append(["(unmatched)", where, "-", str(partition["unmatched_queued"]), committed, "-", lag,
                     "-", "-"])
    return rows


def _open_batch(batch: dict[str, Any] | None) -> str:
    if batch is None:
        return "-"
    return (f"{batch['records']} rec, {human_bytes(batch['bytes'])}, {batch['age_s']:.1f}s old "
            f"(offsets {batch['offset_start']}-{batch['offset_end']})")


def _reconcile(reconcile: dict[str, Any] | None) -> str:
    if reconcile is None:
        return "pending"
    return f"{reconcile['at']}, {reconcile['runs_found']} runs"


def _routes(status: dict[str, Any]) -> list[str]:
    paused = status.get("paused_routes") or {}
    throttled = status.get("throttled_routes") or {}
    if not paused and not throttled:
        return ["no route paused or throttled"]
    lines = []
    for route, pause in paused.items():
        lines.append(f"paused    {route}: {pause.get('reason')} for {pause.get('paused_for_s')}s: "
                     f"{pause.get('error')} (fix: {pause.get('fix')})")
    for route, reason in throttled.items():
        lines.append(f"throttled {route}: {reason}")
    return lines


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "kB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]
