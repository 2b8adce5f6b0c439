"""Framed records: a partition's records of a route that reads the Confluent wire format (its values, its
keys, or both), decoded before they are routed, so `match`, `partition_key` and the route schema read them.

Each record's `decoded` is set to its value (`service.wire.Decoded`, with its schema id and subject) or to
the RecordError saying why it has none (stage `decode`: routing dead-letters it alone); with a framed
`key_format`, `decoded_key` likewise to its key (a key that does not decode is dead-lettered for every route
of the record still in the running: `service.routing`). The registry is asked once per new schema
(`service.registry`); while it is unreachable the records wait (transient retries: consumption of the
partition pauses, nothing is dead-lettered), and while it refuses the worker the route pauses
(`schema_registry_auth`) through the one pause-and-retry loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from service.delivery.route_retry import RouteRetry
from service.framed_decode import decode_formats
from service.records import Record
from service.registry import SchemaRegistry
from service.retry import OWN_PAUSE, Retrying
from service.routes import Route
from service.wire import JSON


class FramedValues:
    """Decodes framed values and keys with their writer schemas from the registry.

    :param registry: the schema registry client (schemas cached by id)
    :param route_retry: pauses a route the registry refuses, and retries
    :param retrying: the transient retries of a registry that cannot be reached
    """

    def __init__(self, registry: SchemaRegistry, route_retry: RouteRetry, retrying: Retrying) -> None:
        self.registry = registry
        self.route_retry = route_retry
        self.retrying = retrying

    async def decode(self, route: Route, records: Sequence[Record]) -> None:
        """Set `decoded` (and `decoded_key`) on each of `records`, read in `route`'s value (and key) format;
        returns once every one has it."""
        if not route.framed:
            return
        attempt = partial(self.retrying.transient, partial(self._decode_all, route, records),
                          f"schema registry look-up for route {route.name}")
        await self.route_retry.until_accepted(route, attempt, resumes=OWN_PAUSE)

    async def _decode_all(self, route: Route, records: Sequence[Record]) -> None:
        for record in records:  # a retry resumes where the registry stopped answering
            await decode_formats(self.registry, route.value_format, route.key_format, record)


def framed_route(routes: Sequence[Route]) -> Route | None:
    """The route whose formats a partition's records are decoded in: the first that reads framed values, else
    the first that reads framed keys (the routes of a topic have one `key_format`: `service.routes`)."""
    return next((r for r in routes if r.value_format != JSON), None) or next((r for r in routes if r.framed), None)
