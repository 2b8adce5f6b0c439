"""Which partition keys a route's target holds: asked of Dagster, cached; new dynamic keys added.

Before a partitioned route launches a batch (one partition key), `prepare`
makes sure the key is a partition of the target:

- `dynamic_partitions = "name"`: the key is added to that dynamic partitions
  definition (`addDynamicPartition`) unless this worker added or met it
  before; `DuplicateDynamicPartitionError` (a key added earlier, by this
  worker before a restart or by anyone) counts as present.
- otherwise (a static or time-window definition): the key must be one of the
  definition's keys, listed over GraphQL and cached; a missing key has them
  listed again (a time window grows) at most once every `refresh_s`, and is
  then a record failure (`PartitionKeyNotFound`, stage `validate`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from service.dagster import DagsterClient, Target
from service.errors import LaunchRejected, PartitionKeyNotFound
from service.routes import Route

logger = logging.getLogger(__name__)

REFRESH_S = 10.0


class PartitionSets:
    """The partition keys of each target, as far as this worker knows them."""

    def __init__(self, client: DagsterClient, refresh_s: float = REFRESH_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.refresh_s = refresh_s
        self.clock = clock
        self._dynamic: dict[tuple[str, str, str], set[str]] = {}
        self._keys: dict[Target, tuple[float, frozenset[str]]] = {}

    async def prepare(self, route: Route, target: Target, key: str) -> None:
        """Make `key` a partition of the route's target, or raise why it cannot be one."""
        if route.dynamic_partitions is not None:
            await self._add_dynamic(target, route.dynamic_partitions, key)
            return
        if target.partitions is None:
            raise LaunchRejected("NotPartitioned", f"route {route.name!r} has a partition_key, but {route.target} "
                                 "has no partitions definition", reason="partitions_not_found",
                                 hint="partition the assets, or drop the route's partition_key")
        keys = await self._known(target, refresh=False)
        if key not in keys:
            keys = await self._known(target, refresh=True)
        if key not in keys:
            shown = sorted(keys)
            span = f"{len(keys)} keys, {shown[0]} to {shown[-1]}" if shown else "no keys"
            raise PartitionKeyNotFound(f"partition key {key!r} is not a partition of {route.target} "
                                       f"({target.partitions.type.lower()} partitions: {span})")

    async def _known(self, target: Target, refresh: bool) -> frozenset[str]:
        cached = self._keys.get(target)
        if cached is not None and (not refresh or self.clock() - cached[0] < self.refresh_s):
            return cached[1]
        keys = frozenset(await self.client.workspace.partition_keys(target))
        self._keys[target] = (self.clock(), keys)
        return keys

    async def _add_dynamic(self, target: Target, name: str, key: str) -> None:
        known = self._dynamic.setdefault((target.selector.location, target.selector.repository, name), set())
        if key in known:
            return
        if await self.client.workspace.add_dynamic_partition(target, name, key):
            logger.info("added partition %r to the dynamic partitions %r of %s", key, name, target.selector.location)
        known.add(key)
