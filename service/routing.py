"""Which routes a record goes to, and whether each can take it: one decision, shared by the worker and `routes test`.

Pure logic. For each route of the record's topic, in file order:
1. the route's key and header conditions (`match`) decide first, without decoding the value (a framed
   key, `key_format`, is decoded before: they read its text; a key that does not decode is dead-lettered
   once, for every route its header conditions leave in the running, as in 2.);
2. the value is decoded once, for every route still in the running (however
   many routes it feeds, and each route's batch shares the one `Record`): a value
   that does not decode (or is over a size bound) is dead-lettered once, for
   all of them (`Verdict.shared`), since none can tell whether it would have
   matched, and one copy in the DLQ is what a replay should send back;
3. the value conditions decide; a route that matches checks its schema (stage
   `validate` when it fails; routes with the same schema check it once per
   record) and reads the record's partition key, if it has a `partition_key`
   (stage `validate` when the record has none).
A record no route matches is unmatched: skipped, or dead-lettered at stage
`route` where its topic says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from service.decoding import JsonBounds, check_schema, parse_value
from service.errors import RecordError
from service.matching import Headers
from service.records import Record
from service.routes import Route
from service.schemas import CompiledSchema


@dataclass(frozen=True, slots=True)
class Verdict:
    """The record matches `route`; `failure` is why it is dead-lettered for it instead (None: it joins a batch)."""

    route: Route
    failure: RecordError | None = None
    shared: bool = False  # the failure is the value's own, the same for every route of the record
    partition_key: str | None = None  # the record's partition key, for a route with a partition_key


@dataclass(frozen=True, slots=True)
class _Step:
    """One route of a `Fanout`, ready for the per-record decision."""

    route: Route
    meta: Callable[[bytes | None, Headers], bool] | None  # None: no key or header condition
    value: Callable[[Any], bool] | None  # None: no value condition
    schema: int | None  # the fanout's validator slot; None: no schema
    taken: Verdict  # the record joins the route's batch (one object for every record: verdicts are immutable)


class Fanout:
    """The routes of one topic, compiled once for `decide`: the value decoded once for all of them, each
    distinct schema checked once, and no new object for a record that simply joins a route's batch."""

    def __init__(self, routes: Sequence[Route]) -> None:
        slots: dict[str, int] = {}
        self.validators: list[CompiledSchema] = []
        steps = []
        for route in routes:
            validator = route.validator()
            slot = None
            if validator is not None:
                text = json.dumps(route.schema, sort_keys=True)
                if text not in slots:
                    slots[text] = len(self.validators)
                    self.validators.append(validator)
                slot = slots[text]
            match = route.match
            steps.append(_Step(route, match.select_meta if match is not None and match.needs_meta else None,
                               match.select_value if match is not None and match.needs_value else None,
                               slot, Verdict(route)))
        self.steps = tuple(steps)
        self.routes = tuple(routes)
        # Whole chunks at once (`sort`) unless a route decides on keys or headers, or reads a partition key.
        self.by_chunk = all(step.meta is None and step.route.partition_key is None for step in steps)

    def sort(self, records: Sequence[Record], max_message_bytes: int,
             bounds: JsonBounds | None = None) -> list[list[int]] | None:
        """For each route in order, the indexes of the `records` it batches: what `decide` says record by
        record, a route at a time. None when the chunk needs `decide` (a value fails to decode or to
        validate, or `by_chunk` is False): one bad record sends its chunk down the per-record path."""
        if not self.by_chunk:
            return None
        try:
            values = [parse_value(record, max_message_bytes, bounds) for record in records]
        except RecordError:
            return None
        everything = range(len(values))
        valid: list[set[int]] = [set() for _ in self.validators]
        taken: list[list[int]] = []
        for step in self.steps:
            test = step.value
            chosen = list(everything) if test is None else [i for i in everything if test(values[i])]
            if step.schema is not None:
                validator, known = self.validators[step.schema], valid[step.schema]
                for i in chosen:
                    if i not in known:
                        if not validator.is_valid(values[i]):
                            return None
                        known.add(i)
            taken.append(chosen)
        return taken

    def decide(self, record: Record, max_message_bytes: int, bounds: JsonBounds | None = None) -> list[Verdict]:
        """The routes `record` matches, each with its verdict, in route order; empty when it matches none."""
        decoded_key = record.decoded_key
        if decoded_key is None:
            key = record.key
        elif isinstance(decoded_key, RecordError):
            return self._unreadable_key(record, decoded_key)
        else:
            key = record.match_key
        steps = [s for s in self.steps if s.meta is None or s.meta(key, record.headers)]
        if not steps:
            return []
        try:
            value = parse_value(record, max_message_bytes, bounds)
        except RecordError as exc:
            return [Verdict(step.route, exc, shared=True) for step in steps]
        checked: dict[int, RecordError | None] = {}
        verdicts = []
        for step in steps:
            if step.value is not None and not step.value(value):
                continue
            if step.schema is not None:
                if step.schema not in checked:
                    checked[step.schema] = _schema_failure(self.validators[step.schema], value)
                failure = checked[step.schema]
                if failure is not None:
                    verdicts.append(Verdict(step.route, failure))
                    continue
            if step.route.partition_key is not None:
                verdicts.append(_keyed(step.route, record, value))
                continue
            verdicts.append(step.taken)
        return verdicts

    def _unreadable_key(self, record: Record, failure: RecordError) -> list[Verdict]:
        """A framed key that does not decode: no key condition can decide, so every route the header
        conditions leave in the running gets the one failure (shared, as for a value no route can read)."""
        return [Verdict(step.route, failure, shared=True) for step in self.steps
                if step.route.match is None or step.route.match.select_headers(record.headers)]


def route_record(routes: Sequence[Route], record: Record, max_message_bytes: int,
                 bounds: JsonBounds | None = None) -> list[Verdict]:
    """The routes `record` matches, each with its verdict; empty when it matches none.

    For many records of the same routes, build a `Fanout` once and call its `decide`.
    """
    return Fanout(routes).decide(record, max_message_bytes, bounds)


def _schema_failure(validator: CompiledSchema, value: Any) -> RecordError | None:
    try:
        check_schema(validator, value)
    except RecordError as exc:
        return exc
    return None


def _keyed(route: Route, record: Record, value: Any) -> Verdict:
    assert route.partition_key is not None
    try:
        return Verdict(route, partition_key=route.partition_key.key_of(record, value))
    except RecordError as exc:
        return Verdict(route, exc)


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
    if isinstance(record.decoded_key, RecordError):  # a framed key that does not decode: headers decide alone
        reason = route.match.explain_headers(record.headers) if route.match is not None else None
        if reason is not None:
            return f"no match: {reason}"
        return f"dead-letter at stage {record.decoded_key.stage}: {record.decoded_key}"
    key = record.match_key
    if route.match is not None and not route.match.select_meta(key, record.headers):
        return f"no match: {route.match.explain(key, record.headers, None)}"
    try:
        value = parse_value(record, max_message_bytes, bounds)
    except RecordError as exc:
        return f"dead-letter at stage {exc.stage}: {exc}"
    if route.match is not None and not route.match.select_value(value):
        return f"no match: {route.match.explain(key, record.headers, value)}"
    verdict = _verdict(route, record, value)
    if verdict.failure is not None:
        return f"dead-letter at stage {verdict.failure.stage}: {verdict.failure}"
    return "batch" if verdict.partition_key is None else f"batch (partition {verdict.partition_key})"
