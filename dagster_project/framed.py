"""Framed values read back by offset range, decoded the way the worker decodes them (`service.wire`), so a
run gets the same records whether they came inline or from Kafka.

Imported only when a batch's route reads a framed format (`KafkaBatch.value_format`): the schema registry
client (`service.registry`, httpx) stays out of code locations that never need it. The registry is the
worker's (`KAFKA_DAGSTER_SCHEMA_REGISTRY_URL`, `_USERNAME`, `_PASSWORD`, `_CAFILE`, read from the
environment when the run starts). A record that does not decode is not the batch's: the worker
dead-lettered it for the route.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from dagster_project.resources import KafkaMessage, KafkaUnavailable
from service.errors import RecordError, RouteError, TransientError
from service.registry import SchemaRegistry
from service.settings import RegistrySettings, load_registry_settings
from service.wire import PROTOBUF, decode_framed, read_frame, schema_id_header


class RegistryRefusedRun(Exception):
    """The schema registry refuses the code location (credentials, or a wrong URL): retrying will not help."""


def registry_settings() -> RegistrySettings:
    """The worker's registry settings, from this process's environment."""
    settings = load_registry_settings()
    if settings.url is None:
        raise RegistryRefusedRun("the batch's values are framed, but KAFKA_DAGSTER_SCHEMA_REGISTRY_URL is not set "
                                 "in the code location's environment")
    return settings


def decode_messages(messages: Sequence[KafkaMessage], fmt: str,
                    registry: SchemaRegistry | None = None) -> list[KafkaMessage]:
    """`messages` with their values decoded to JSON text (and their schema id and subject); those that do not
    decode are left out. Raises KafkaUnavailable while the registry cannot be reached."""
    return asyncio.run(_decode_all(messages, fmt, registry))


async def _decode_all(messages: Sequence[KafkaMessage], fmt: str,
                      registry: SchemaRegistry | None) -> list[KafkaMessage]:
    client = registry or SchemaRegistry(registry_settings())
    try:
        decoded: list[KafkaMessage] = []
        for message in messages:
            try:
                frame = read_frame(message.value, schema_id_header(message.headers), protobuf=fmt == PROTOBUF)
                resolved = await client.resolve(frame.ref)
                value = decode_framed(resolved.schema, frame, fmt)
            except RecordError:
                continue
            decoded.append(dataclasses.replace(message, value=value.json, value_schema_id=str(frame.ref),
                                               value_subject=resolved.subject))
        return decoded
    except TransientError as exc:
        raise KafkaUnavailable(f"schema registry: {exc}") from exc
    except RouteError as exc:
        raise RegistryRefusedRun(f"{exc} ({exc.hint})") from exc
    finally:
        if registry is None:
            await client.aclose()
