"""Framed values and keys read back by offset range, decoded the way the worker decodes them (`service.wire`,
`service.framed_decode`), so a run gets the same records whether they came inline or from Kafka.

Imported only when a batch's route reads a framed format (`KafkaBatch.value_format`, `key_format`): the schema
registry client (`service.registry`, httpx) stays out of code locations that never need it. The registry is
the worker's (`KAFKA_DAGSTER_SCHEMA_REGISTRY_URL`, `_USERNAME`, `_PASSWORD`, `_CAFILE`, read from the
environment when the run starts). A record whose value or key does not decode is not the batch's: the worker
dead-lettered it for the route.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

from dagster_project.resources import KafkaMessage, KafkaUnavailable
from service.errors import RecordError, RouteError, TransientError
from service.framed_decode import decode_formats
from service.records import Record
from service.registry import SchemaRegistry
from service.settings import RegistrySettings, load_registry_settings
from service.wire import JSON, Decoded


class RegistryRefusedRun(Exception):
    """The schema registry refuses the code location (credentials, or a wrong URL): retrying will not help."""


def registry_settings() -> RegistrySettings:
    """The worker's registry settings, from this process's environment."""
    settings = load_registry_settings()
    if settings.url is None:
        raise RegistryRefusedRun("the batch's records are framed, but KAFKA_DAGSTER_SCHEMA_REGISTRY_URL is not set "
                                 "in the code location's environment")
    return settings


def decode_messages(messages: Sequence[KafkaMessage], value_format: str = JSON,
                    registry: SchemaRegistry | None = None, key_format: str = JSON) -> list[KafkaMessage]:
    """`messages` with their framed values (`value_format`) decoded to JSON text and their framed keys
    (`key_format`) to text (a string as it is, anything else as its JSON), each with its writer schema's id
    and subject; `json` leaves that part as it is. Those that do not decode are left out. Raises
    KafkaUnavailable while the registry cannot be reached."""
    return asyncio.run(_decode_all(messages, value_format, key_format, registry))


async def _decode_all(messages: Sequence[KafkaMessage], value_format: str, key_format: str,
                      registry: SchemaRegistry | None) -> list[KafkaMessage]:
    client = registry or SchemaRegistry(registry_settings())
    try:
        decoded: list[KafkaMessage] = []
        for message in messages:
            record = Record("", 0, message.offset, message.timestamp_ms, message.key, message.value, message.headers)
            await decode_formats(client, value_format, key_format, record)
            if isinstance(record.decoded_key, RecordError) or isinstance(record.decoded, RecordError):
                continue
            changes: dict[str, Any] = {}
            if isinstance(record.decoded_key, Decoded):
                changes.update(key=record.match_key, key_schema_id=record.decoded_key.schema_id,
                               key_subject=record.decoded_key.subject)
            if isinstance(record.decoded, Decoded):
                changes.update(value=record.decoded.json, value_schema_id=record.decoded.schema_id,
                               value_subject=record.decoded.subject)
            decoded.append(dataclasses.replace(message, **changes))
        return decoded
    except TransientError as exc:
        raise KafkaUnavailable(f"schema registry: {exc}") from exc
    except RouteError as exc:
        raise RegistryRefusedRun(f"{exc} ({exc.hint})") from exc
    finally:
        if registry is None:
            await client.aclose()
