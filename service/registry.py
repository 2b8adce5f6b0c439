"""The schema registry client: writer schemas by id or GUID, each fetched once, over the registry's
Confluent-compatible REST API with httpx (async: a look-up never blocks the event loop).

httpx and HTTP answers are mapped to `service.errors` here alone:
- unreachable, a timeout, 5xx, 408, 429: `RegistryUnavailable` (transient: retried, never dead-lettered);
- 401/403: `RegistryRefused` (`schema_registry_auth`: the route pauses);
- 404 with the registry's "schema not found" code (40403): `UnknownSchema`, a record failure (DLQ at `decode`);
  any other 404 or 4xx is a wrong URL, not a bad record: `RegistryRefused` (`schema_registry_rejected`).
Registry ids are immutable, so a schema is kept for the worker's life; an unknown id is remembered for
`UNKNOWN_TTL_S` only (a schema registered late, or a registry restored from backup, is found again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from service.errors import RecordError, RegistryRefused, RegistryUnavailable, UnknownSchema
from service.http_headers import retry_after_s
from service.settings import RegistrySettings
from service.wire import ProtobufSchema, SchemaRef, WriterSchema, serialized_file, serialized_protobuf, writer_schema

logger = logging.getLogger(__name__)

SCHEMA_NOT_FOUND = 40403  # the Confluent API's error_code for an unknown id (Apicurio's ccompat says the same)
UNKNOWN_TTL_S = 60.0
ACCEPT = "application/vnd.schemaregistry.v1+json, application/json"


@dataclass(frozen=True, slots=True)
class Resolved:
    """A writer schema and where it is registered (the first subject naming it, if the registry says)."""

    ref: SchemaRef
    schema: WriterSchema
    subject: str | None = None
    schema_id: str = field(init=False)  # the ref as text, as each decoded record carries it

    def __post_init__(self) -> None:
        object.__setattr__(self, "schema_id", str(self.ref))


class SchemaRegistry:
    """Writer schemas by `SchemaRef`, cached; `resolve` raises the errors drawn in the module docstring."""

    def __init__(self, settings: RegistrySettings, transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if settings.url is None:
            raise ValueError("a SchemaRegistry needs a url")
        auth = (settings.username, settings.password) if settings.username and settings.password else None
        self.url = settings.url.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.url, auth=auth, timeout=settings.timeout_s,
                                         verify=settings.cafile or True, transport=transport,
                                         headers={"Accept": ACCEPT})
        self._schemas: dict[SchemaRef, Resolved] = {}
        self._unknown: dict[SchemaRef, tuple[float, RecordError]] = {}
        self._inflight: dict[SchemaRef, asyncio.Task[Resolved]] = {}
        self.clock = clock

    def known(self, ref: SchemaRef) -> Resolved | None:
        """The schema of `ref` if it was fetched already (the path of every record after the first of an id)."""
        return self._schemas.get(ref)

    def cached(self, ref: SchemaRef) -> Resolved | RecordError | None:
        """What is known of `ref` without asking: its schema, why it is unknown, or None (ask)."""
        resolved = self._schemas.get(ref)
        if resolved is not None:
            return resolved
        unknown = self._unknown.get(ref)
        if unknown is not None and self.clock() - unknown[0] < UNKNOWN_TTL_S:
            return unknown[1]
        return None

    async def resolve(self, ref: SchemaRef) -> Resolved:
        """The writer schema of `ref` (a Protobuf one with its imports)."""
        known = self.cached(ref)
        if isinstance(known, Resolved):
            return known
        if isinstance(known, RecordError):
            raise known
        task = self._inflight.get(ref)
        if task is None:
            task = self._inflight[ref] = asyncio.ensure_future(self._fetch(ref))
            task.add_done_callback(lambda _: self._inflight.pop(ref, None))
        try:
            resolved = await asyncio.shield(task)
        except RecordError as exc:
            self._unknown[ref] = (self.clock(), exc)
            raise
        self._schemas[ref] = resolved
        return resolved

    async def _fetch(self, ref: SchemaRef) -> Resolved:
        path = f"/schemas/ids/{ref.id}" if ref.id is not None else f"/schemas/guids/{ref.guid}"
        body = _schema_body(await self._request(path, ref), path)
        schema_type = body.get("schemaType") or "AVRO"
        if schema_type == "PROTOBUF":
            file, dependencies = await self._protobuf(path, ref, body, {})
            schema: WriterSchema = ProtobufSchema(file, dependencies)
        else:
            schema = writer_schema(schema_type, body["schema"])
        subject = await self._subject(ref) if ref.id is not None else None
        logger.info("schema %s (%s%s) fetched from the schema registry", ref, schema.format,
                    f", subject {subject}" if subject else "")
        return Resolved(ref, schema, subject)

    async def _protobuf(self, path: str, ref: SchemaRef, body: dict[str, Any],
                        dependencies: dict[str, bytes]) -> tuple[bytes, dict[str, bytes]]:
        """The serialized file descriptor of a Protobuf schema answer, and those of its references (imports
        registered as subjects of their own), by file name.

        The answer's own `schema` is used when it is already serialized (Apicurio keeps what confluent-kafka
        registered: base64); `.proto` text (what Confluent's registry answers) is asked for again with
        `format=serialized`, which Confluent's registry answers in base64."""
        file = serialized_protobuf(body["schema"])
        if file is None:
            again = _schema_body(await self._request(path, ref, {"format": "serialized"}), path)
            if "\ufffd" in again["schema"]:
                raise RegistryRefused(
                    f"the schema registry's serialized form of Protobuf schema {ref} lost bytes (U+FFFD in it)",
                    400, hint="register Protobuf schemas as serialized descriptors (confluent-kafka's "
                    "ProtobufSerializer does), or use a registry that serves .proto text base64-serialized "
                    "(Confluent's does; Apicurio 3.3's ccompat API does not)")
            try:
                file = serialized_file(again["schema"])
            except UnknownSchema as exc:
                raise UnknownSchema(f"schema {ref}: {exc}") from None
        for reference in body.get("references") or ():
            name, subject, version = _reference(reference, path)
            if name in dependencies:
                continue
            ref_path = f"/subjects/{quote(subject, safe='')}/versions/{version}"
            ref_body = _schema_body(await self._request(ref_path, ref), ref_path)
            dependencies[name] = b""  # seen: a cycle of imports ends here
            dependencies[name], _ = await self._protobuf(ref_path, ref, ref_body, dependencies)
        return file, dependencies

    async def _subject(self, ref: SchemaRef) -> str | None:
        """The first subject the registry lists for the id (metadata only: None when it will not say)."""
        try:
            versions = await self._request(f"/schemas/ids/{ref.id}/versions", ref)
        except (UnknownSchema, RegistryRefused):
            return None
        if isinstance(versions, list) and versions and isinstance(versions[0], dict):
            subject = versions[0].get("subject")
            return subject if isinstance(subject, str) else None
        return None

    async def register(self, subject: str, schema_type: str, text: str,
                       references: Sequence[Mapping[str, Any]] = ()) -> int:
        """Register `text` under `subject` (or find it there) and return its id, as a producer's serializer
        does (`kafka-dagster produce`)."""
        path = f"/subjects/{quote(subject, safe='')}/versions"
        body = {"schema": text, "schemaType": schema_type, "references": list(references)}
        answer = await self._request(path, SchemaRef(), json=body)
        if not isinstance(answer, dict) or not isinstance(answer.get("id"), int):
            raise RegistryRefused(f"schema registry answered {path} without an id", 400)
        return int(answer["id"])

    async def version_of(self, subject: str, schema_type: str, text: str,
                         references: Sequence[Mapping[str, Any]] = ()) -> int:
        """The version of `subject` that holds `text` (what a reference to it names)."""
        path = f"/subjects/{quote(subject, safe='')}"
        body = {"schema": text, "schemaType": schema_type, "references": list(references)}
        answer = await self._request(path, SchemaRef(), json=body)
        if not isinstance(answer, dict) or not isinstance(answer.get("version"), int):
            raise RegistryRefused(f"schema registry answered {path} without a version", 400)
        return int(answer["version"])

    async def _request(self, path: str, ref: SchemaRef, params: dict[str, str] | None = None,
                   json: Any = None) -> Any:
        try:
            if json is None:
                response = await self._client.get(path, params=params)
            else:
                response = await self._client.post(path, json=json)
        except httpx.TimeoutException as exc:
            raise RegistryUnavailable(f"schema registry timed out: {exc.__class__.__name__}") from None
        except httpx.TransportError as exc:
            raise RegistryUnavailable(f"schema registry unreachable: {exc.__class__.__name__}: {exc}") from None
        status = response.status_code
        if status >= 500 or status in (408, 429):
            error = RegistryUnavailable(f"schema registry answered HTTP {status}")
            if status == 429:
                error.retry_after_s = retry_after_s(response.headers.get("Retry-After"))
            raise error
        if status in (401, 403):
            raise RegistryRefused(f"schema registry refused the credentials: HTTP {status}", status)
        body = _json(response)
        if status == 404 and isinstance(body, dict) and body.get("error_code") == SCHEMA_NOT_FOUND:
            raise UnknownSchema(f"schema {ref} is not in the schema registry ({body.get('message', 'not found')})")
        if status >= 400:
            detail = f": {body['message']}" if isinstance(body, dict) and body.get("message") else ""
            raise RegistryRefused(f"schema registry answered HTTP {status} to {path}{detail}", status)
        return body

    async def aclose(self) -> None:
        await self._client.aclose()


def _schema_body(body: Any, path: str) -> dict[str, Any]:
    """A schema answer (`schema`, `schemaType`, `references`), or the route pauses: the URL is not a registry's."""
    if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
        raise RegistryRefused(f"schema registry answered {path} without a schema", 400)
    return body


def _reference(reference: Any, path: str) -> tuple[str, str, int]:
    """A schema reference's import name, subject and version."""
    if isinstance(reference, dict):
        name, subject, version = reference.get("name"), reference.get("subject"), reference.get("version")
        if isinstance(name, str) and isinstance(subject, str) and isinstance(version, int):
            return name, subject, version
    raise RegistryRefused(f"schema registry answered {path} with a malformed reference: {reference!r}", 400)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
