"""SchemaRegistry: each schema fetched once, and every registry answer mapped to its kind of failure
(the registry's HTTP boundary faked with httpx.MockTransport; the real one: tests/test_schema_registry.py)."""

from __future__ import annotations

import base64

import httpx
import pytest

from service.errors import RecordError, RegistryRefused, RegistryUnavailable, RouteError, TransientError, UnknownSchema
from service.registry import SchemaRegistry
from service.settings import RegistrySettings
from service.wire import AVRO, PROTOBUF, SchemaRef

AVRO_SCHEMA = '{"type":"record","name":"O","fields":[{"name":"id","type":"long"}]}'
URL = "http://registry.test/apis/ccompat/v7"


class Registry:
    """The registry's answers, and the requests it saw."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.status = 200

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.status != 200:
            return httpx.Response(self.status, json={"error_code": self.status, "message": "no"})
        path = request.url.path.removeprefix("/apis/ccompat/v7")
        if path == "/schemas/ids/1":
            return httpx.Response(200, json={"schema": AVRO_SCHEMA})
        if path == "/schemas/ids/1/versions":
            return httpx.Response(200, json=[{"subject": "orders-value", "version": 1}])
        if path == "/schemas/ids/2":
            assert request.url.params.get("format") == "serialized"
            from google.protobuf import descriptor_pb2

            file = descriptor_pb2.FileDescriptorProto(name="x.proto", syntax="proto3")
            file.message_type.add(name="X")
            return httpx.Response(200, json={"schemaType": "PROTOBUF",
                                             "schema": base64.b64encode(file.SerializeToString()).decode()})
        if path.startswith("/schemas/ids/"):
            return httpx.Response(404, json={"error_code": 40403, "message": "Schema 9 not found."})
        return httpx.Response(404, json={"title": "Could not find resource"})


def client(answers: Registry, username: str | None = None) -> SchemaRegistry:
    settings = RegistrySettings(URL, username, "pw" if username else None)
    return SchemaRegistry(settings, transport=httpx.MockTransport(answers))


async def test_a_schema_is_fetched_once_with_its_subject() -> None:
    answers = Registry()
    registry = client(answers, username="svc")
    first = await registry.resolve(SchemaRef(1), AVRO)
    again = await registry.resolve(SchemaRef(1), AVRO)
    assert first is again and first.subject == "orders-value" and first.schema.format == AVRO
    assert [r.url.path for r in answers.requests] == ["/apis/ccompat/v7/schemas/ids/1",
                                                       "/apis/ccompat/v7/schemas/ids/1/versions"]
    assert answers.requests[0].headers["Authorization"] == "Basic " + base64.b64encode(b"svc:pw").decode()
    assert (await registry.resolve(SchemaRef(2), PROTOBUF)).schema.format == PROTOBUF


async def test_an_unknown_id_is_a_bad_record_and_remembered() -> None:
    answers = Registry()
    registry = client(answers)
    with pytest.raises(UnknownSchema, match="schema 9 is not in the schema registry") as caught:
        await registry.resolve(SchemaRef(9), AVRO)
    assert isinstance(caught.value, RecordError) and caught.value.stage == "decode"
    assert isinstance(registry.cached(SchemaRef(9), AVRO), UnknownSchema)
    seen = len(answers.requests)
    with pytest.raises(UnknownSchema):
        await registry.resolve(SchemaRef(9), AVRO)
    assert len(answers.requests) == seen


async def test_a_wrong_url_pauses_the_route_instead_of_dead_lettering() -> None:
    registry = SchemaRegistry(RegistrySettings("http://registry.test/wrong"), transport=httpx.MockTransport(Registry()))
    with pytest.raises(RegistryRefused) as caught:
        await registry.resolve(SchemaRef(1), AVRO)
    assert isinstance(caught.value, RouteError) and caught.value.reason == "schema_registry_rejected"


@pytest.mark.parametrize(("status", "kind", "reason"), [
    (500, RegistryUnavailable, None), (503, RegistryUnavailable, None), (408, RegistryUnavailable, None),
    (429, RegistryUnavailable, None), (401, RegistryRefused, "schema_registry_auth"),
    (403, RegistryRefused, "schema_registry_auth"), (400, RegistryRefused, "schema_registry_rejected"),
])
async def test_http_answers(status: int, kind: type[Exception], reason: str | None) -> None:
    answers = Registry()
    answers.status = status
    registry = client(answers)
    with pytest.raises(kind) as caught:
        await registry.resolve(SchemaRef(1), AVRO)
    if reason is not None:
        assert caught.value.reason == reason
    assert registry.cached(SchemaRef(1), AVRO) is None  # nothing remembered: the next record asks again
    answers.status = 200
    assert (await registry.resolve(SchemaRef(1), AVRO)).subject == "orders-value"


async def test_an_unreachable_registry_is_transient() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    registry = SchemaRegistry(RegistrySettings(URL), transport=httpx.MockTransport(refuse))
    with pytest.raises(RegistryUnavailable) as caught:
        await registry.resolve(SchemaRef(1), AVRO)
    assert isinstance(caught.value, TransientError)


async def test_a_lossy_serialized_protobuf_schema_pauses_the_route() -> None:
    """Apicurio 3.3's ccompat API answers format=serialized with the descriptor's bytes decoded as UTF-8:
    a byte over 0x7f that is not UTF-8 becomes U+FFFD. The registry is at fault, not the records."""
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"schemaType": "PROTOBUF", "schema": "\n\x03Pay\ufffd\ufffd"})

    registry = SchemaRegistry(RegistrySettings(URL), transport=httpx.MockTransport(answer))
    with pytest.raises(RegistryRefused, match="lost bytes") as caught:
        await registry.resolve(SchemaRef(3), PROTOBUF)
    assert caught.value.reason == "schema_registry_rejected" and "base64" in caught.value.hint
