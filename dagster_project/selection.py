"""Which records of an offset range belong to a route's batch: the ones its `match` pattern selects.

A route's batch covers consecutive offsets among the records the route
matches, so when a run reads its range back from Kafka the range may hold
other records of the topic. The worker passes the route's pattern as JSON
(`KafkaBatch.match`, `Match.to_json`); the worker's own matcher
(`service.matching`) decides here too. A value is JSON when orjson says so, as
in the worker's decoding: a value that is not never matches a pattern with
value conditions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from dagster_project.resources import KafkaMessage
from service.matching import Match, match_from_json


def selected(messages: Sequence[KafkaMessage], match: str | None) -> list[KafkaMessage]:
    """The records of `messages` that the pattern `match` (JSON) selects; all of them without a pattern."""
    if match is None:
        return list(messages)
    pattern = match_from_json(match)
    return [m for m in messages if _selects(pattern, m)]


def _selects(pattern: Match, message: KafkaMessage) -> bool:
    if not pattern.select_meta(message.key, message.headers):
        return False
    if not pattern.needs_value:
        return True
    if message.value is None:
        return False
    try:
        value: Any = orjson.loads(message.value)
    except orjson.JSONDecodeError:
        return False
    return pattern.select_value(value)
