"""Which routes a record goes to, and whether each can take it: one decision, shared by the worker and `routes test`.

Pure logic. For each route of the record's topic, in file order:
1. the route's key and header conditions (`match`) decide first, without decoding;
2. the value is decoded once, for every route still in the running: a value
   that does not decode (or is over a size bound) is dead-lettered once, for
   all of them (`Verdict.shared`), since none can tell whether it would have
   matched, and one copy in the DLQ is what a replay should send back;
3. the value conditions decide; a route that matches checks its schema (stage
   `validate` when it fails) and reads the record's partition key, if it has a
   `partition_key` (stage `validate` when the record has none).
A record no route matches is unmatched: skipped, or dead-lettered at stage
`route` where its topic says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.decoding import JsonBounds, check_schema, parse_value
from service.errors import RecordError
from service.records import Record
from service.routes import Route


@dataclass(frozen=True, slots=True)
class Verdict:
    """The record matches `route`; `failure` is why it is dead-lettered for it instead (None: it joins a batch)."""

    route: Route
    failure: RecordError | None = None
    shared: bool = False  # the failure is the value's own, the same for every route of the record
    partition_key: str | None = None  # the record's partition key, for a route with a partition_key


def route_record(routes: Sequence[Route], record: Record, max_message_bytes: int,
                 bounds: JsonBounds | None = None) -> list[Verdict]:
    """The routes `record` matches, each with its verdict; empty when it matches none."""
    candidates = [r for r in routes if r.match is None or r.match.select_meta(record.key, record.headers)]
    if not candidates:
        return []
    try:
        value = parse_value(record, max_message_bytes, bounds)
    except RecordError as exc:
        return [Verdict(route, exc, shared=True) for route in candidates]
    return [_verdict(route, record, value) for route in candidates
            if route.match is None or route.match.select_value(value)]


def _verdict(route: Route, record: Record, value: Any) -> Verdict:
    validator = route.validator()
    try:
        if validator is not None:
            check_schema(validator, value)
        if route.partition_key is not None:
            return Verdict(route, partition_key=route.partition_key.key_of(record, value))
    except RecordError as exc:
        return Verdict(route, exc)
    return Verdict(route)


def selects(route: Route, record: Record, max_message_bytes: int, bounds: JsonBounds | None = None) -> bool:
    """True when `record` is in `route`'s batches: it matches and decodes and validates (a failed run's
    offset range also holds records of other routes; these are the run's own)."""
    verdicts = route_record([route], record, max_message_bytes, bounds)
    return bool(verdicts) and verdicts[0].failure is None


def explain(route: Route, record: Record, max_message_bytes: int, bounds: JsonBounds | None = None) -> str:
    """In words, what `route` does with `record`: "batch", "dead-letter at stage ...: ...", or why it does not match."""
    if route.match is not None and not route.match.select_meta(record.key, record.headers):
        return f"no match: {route.match.explain(record.key, record.headers, None)}"
    try:
        value = parse_value(record, max_message_bytes, bounds)
    except RecordError as exc:
        return f"dead-letter at stage {exc.stage}: {exc}"
    if route.match is not None and not route.match.select_value(value):
        return f"no match: {route.match.explain(record.key, record.headers, value)}"
    verdict = _verdict(route, record, value)
    if verdict.failure is not None:
        return f"dead-letter at stage {verdict.failure.stage}: {verdict.failure}"
    return "batch" if verdict.partition_key is None else f"batch (partition {verdict.partition_key})"
