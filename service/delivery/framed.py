"""Framed values: a partition's records of a route that reads the Confluent wire format, decoded before
they are routed, so `match`, `partition_key` and the route schema read their fields.

Each record's `decoded` is set to its value (`service.wire.Decoded`, with its schema id and subject) or to
the RecordError saying why it has none (stage `decode`: routing dead-letters it alone). The registry is
asked once per new schema (`service.registry`); while it is unreachable the records wait (transient
retries: consumption of the partition pauses, nothing is dead-lettered), and while it refuses the worker
the route pauses (`schema_registry_auth`) through the one pause-and-retry loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from service.delivery.route_retry import RouteRetry
from service.errors import RecordError
from service.records import Record
from service.registry import SchemaRegistry
from service.retry import OWN_PAUSE, Retrying
from service.routes import Route
from service.wire import JSON, PROTOBUF, Decoded, decode_framed, read_frame, schema_id_header


class FramedValues:
    """Decodes framed values with their writer schemas from the registry.

    :param registry: the schema registry client (schemas cached by id)
    :param route_retry: pauses a route the registry refuses, and retries
    :param retrying: the transient retries of a registry that cannot be reached
    """

    def __init__(self, registry: SchemaRegistry, route_retry: RouteRetry, retrying: Retrying) -> None:
        self.registry = registry
        self.route_retry = route_retry
        self.retrying = retrying

    async def decode(self, route: Route, records: Sequence[Record]) -> None:
        """Set `decoded` on each of `records`, read in `route`'s value format; returns once every one has it."""
        if route.value_format == JSON:
            return
        attempt = partial(self.retrying.transient, partial(self._decode_all, route.value_format, records),
                          f"schema registry look-up for route {route.name}")
        await self.route_retry.until_accepted(route, attempt, resumes=OWN_PAUSE)

    async def _decode_all(self, fmt: str, records: Sequence[Record]) -> None:
        for record in records:
            if record.decoded is None:  # a retry resumes where the registry stopped answering
                record.decoded = await self.decode_one(fmt, record)

    async def decode_one(self, fmt: str, record: Record) -> object:
        """The record's value decoded, or the RecordError why not; registry faults are raised."""
        return await decode_record(self.registry, fmt, record)


async def decode_record(registry: SchemaRegistry, fmt: str, record: Record) -> object:
    """`record`'s value decoded in format `fmt` with its writer schema (`Decoded`, with the schema's id and
    subject), or the RecordError why not; registry faults are raised. `routes test` decodes samples with it."""
    try:
        frame = read_frame(record.value, schema_id_header(record.headers), protobuf=fmt == PROTOBUF)
        resolved = await registry.resolve(frame.ref)
        decoded = decode_framed(resolved.schema, frame, fmt)
    except RecordError as exc:
        return exc
    return Decoded(decoded.value, decoded.json, str(frame.ref), resolved.subject)


def framed_route(routes: Sequence[Route]) -> Route | None:
    """The route whose value format a partition's records are decoded in: the first framed one of them."""
    return next((r for r in routes if r.value_format != JSON), None)
