"""SchemaRegistry: each schema fetched once, and every registry answer mapped to its kind of failure
(the registry's HTTP boundary faked with httpx.MockTransport; the real one: tests/test_schema_registry.py)."""

from __future__ import annotations

import base64

import httpx
import pytest

from service.errors import RecordError, RegistryRefused, RegistryUnavailable, RouteError, TransientError, UnknownSchema
from service.registry import SchemaRegistry
from service.settings import RegistrySettings
from service.wire import AVRO, PROTOBUF, ProtobufSchema, SchemaRef

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
        if path == "/schemas/ids/2":  # Confluent's registry: .proto text, serialized on request
            if request.url.params.get("format") != "serialized":
                return httpx.Response(200, json={"schemaType": "PROTOBUF", "schema": 'syntax = "proto3";'})
            return httpx.Response(200, json={"schemaType": "PROTOBUF", "schema": _b64(_file("x.proto", "X"))})
        if path == "/schemas/ids/2/versions":
            return httpx.Response(200, json=[{"subject": "x-value", "version": 1}])
        if path.startswith("/schemas/ids/"):
            return httpx.Response(404, json={"error_code": 40403, "message": "Schema 9 not found."})
        return httpx.Response(404, json={"title": "Could not find resource"})


def _file(name: str, message: str, *imports: tuple[str, str]) -> bytes:
    """A serialized file descriptor: one message with a field of each (imported file, message type)."""
    from google.protobuf import descriptor_pb2

    file = descriptor_pb2.FileDescriptorProto(name=name, package="shop", syntax="proto3",
                                              dependency=[file for file, _ in imports])
    added = file.message_type.add(name=message)
    for number, (_, type_name) in enumerate(imports, 1):
        added.field.add(name=f"f{number}", number=number, type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL, type_name=type_name)
    return file.SerializeToString()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def client(answers: Registry, username: str | None = None) -> SchemaRegistry:
    settings = RegistrySettings(URL, username, "pw" if username else None)
    return SchemaRegistry(settings, transport=httpx.MockTransport(answers))


async def test_a_schema_is_fetched_once_with_its_subject() -> None:
    answers = Registry()
    registry = client(answers, username="svc")
    first = await registry.resolve(SchemaRef(1))
    again = await registry.resolve(SchemaRef(1))
    assert first is again and first.subject == "orders-value" and first.schema.format == AVRO
    assert [r.url.path for r in answers.requests] == ["/apis/ccompat/v7/schemas/ids/1",
                                                       "/apis/ccompat/v7/schemas/ids/1/versions"]
    assert answers.requests[0].headers["Authorization"] == "Basic " + base64.b64encode(b"svc:pw").decode()
    assert (await registry.resolve(SchemaRef(2))).schema.format == PROTOBUF


async def test_an_unknown_id_is_a_bad_record_and_remembered() -> None:
    answers = Registry()
    registry = client(answers)
    with pytest.raises(UnknownSchema, match="schema 9 is not in the schema registry") as caught:
        await registry.resolve(SchemaRef(9))
    assert isinstance(caught.value, RecordError) and caught.value.stage == "decode"
    assert isinstance(registry.cached(SchemaRef(9)), UnknownSchema)
    seen = len(answers.requests)
    with pytest.raises(UnknownSchema):
        await registry.resolve(SchemaRef(9))
    assert len(answers.requests) == seen


async def test_a_wrong_url_pauses_the_route_instead_of_dead_lettering() -> None:
    registry = SchemaRegistry(RegistrySettings("http://registry.test/wrong"), transport=httpx.MockTransport(Registry()))
    with pytest.raises(RegistryRefused) as caught:
        await registry.resolve(SchemaRef(1))
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
        await registry.resolve(SchemaRef(1))
    if reason is not None:
        assert caught.value.reason == reason
    assert registry.cached(SchemaRef(1)) is None  # nothing remembered: the next record asks again
    answers.status = 200
    assert (await registry.resolve(SchemaRef(1))).subject == "orders-value"


async def test_an_unreachable_registry_is_transient() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    registry = SchemaRegistry(RegistrySettings(URL), transport=httpx.MockTransport(refuse))
    with pytest.raises(RegistryUnavailable) as caught:
        await registry.resolve(SchemaRef(1))
    assert isinstance(caught.value, TransientError)


async def test_a_lossy_serialized_protobuf_schema_pauses_the_route() -> None:
    """Apicurio 3.3's ccompat API answers format=serialized for a schema registered as .proto text with the
    descriptor's bytes decoded as UTF-8: a byte over 0x7f that is not UTF-8 becomes U+FFFD. The registry is
    at fault, not the records."""
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("format") != "serialized":
            return httpx.Response(200, json={"schemaType": "PROTOBUF", "schema": 'syntax = "proto3";'})
        return httpx.Response(200, json={"schemaType": "PROTOBUF", "schema": "\n\x03Pay\ufffd\ufffd"})

    registry = SchemaRegistry(RegistrySettings(URL), transport=httpx.MockTransport(answer))
    with pytest.raises(RegistryRefused, match="lost bytes") as caught:
        await registry.resolve(SchemaRef(3))
    assert caught.value.reason == "schema_registry_rejected" and "ProtobufSerializer" in caught.value.hint

class ProtobufRegistry:
    """A registry's Protobuf answers: Confluent's shape (`.proto` text, base64 with `format=serialized`, on
    ids and on the subject versions that references name) or Apicurio 3.3's (base64 as registered)."""

    def __init__(self, confluent: bool) -> None:
        self.confluent = confluent
        self.requests: list[str] = []
        # pay.proto imports money.proto, which imports google/protobuf/timestamp.proto (shipped by protobuf)
        self.files = {"pay.proto": _file("pay.proto", "Pay", ("money.proto", ".shop.Money")),
                      "money.proto": _file("money.proto", "Money",
                                           ("google/protobuf/timestamp.proto", ".google.protobuf.Timestamp"))}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/apis/ccompat/v7")
        serialized = request.url.params.get("format") == "serialized"
        self.requests.append(path + ("?serialized" if serialized else ""))
        if request.url.raw_path.endswith(b"/versions"):
            return httpx.Response(200, json=[{"subject": "pay-value", "version": 3}])
        name = {"/schemas/ids/7": "pay.proto", "/subjects/money.proto/versions/2": "money.proto"}[path]
        text = _b64(self.files[name]) if serialized or not self.confluent else f'syntax = "proto3"; // {name}'
        body = {"schemaType": "PROTOBUF", "schema": text}
        if name == "pay.proto":
            body["references"] = [{"name": "money.proto", "subject": "money.proto", "version": 2}]
        return httpx.Response(200, json=body)


@pytest.mark.parametrize("confluent", [True, False], ids=["confluent", "apicurio"])
async def test_a_protobuf_schema_with_its_references(confluent: bool) -> None:
    answers = ProtobufRegistry(confluent)
    registry = SchemaRegistry(RegistrySettings(URL), transport=httpx.MockTransport(answers))
    resolved = await registry.resolve(SchemaRef(7))
    assert isinstance(resolved.schema, ProtobufSchema) and resolved.subject == "pay-value"
    assert resolved.schema.message_type((0,)).DESCRIPTOR.fields_by_name["f1"].message_type.full_name == "shop.Money"
    if confluent:
        assert answers.requests == ["/schemas/ids/7", "/schemas/ids/7?serialized", "/subjects/money.proto/versions/2",
                                    "/subjects/money.proto/versions/2?serialized", "/schemas/ids/7/versions"]
    else:  # what confluent-kafka registered comes back as it is: no second request
        assert answers.requests == ["/schemas/ids/7", "/subjects/money.proto/versions/2", "/schemas/ids/7/versions"]


async def test_a_reference_subject_is_escaped() -> None:
    seen: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path)
        if request.url.path.endswith("/schemas/ids/8"):
            file = _file("a.proto", "A", ("shop/b.proto", ".shop.B"))
            return httpx.Response(200, json={"schemaType": "PROTOBUF", "schema": _b64(file), "references": [
                {"name": "shop/b.proto", "subject": "shop/b.proto", "version": 1}]})
        if b"/subjects/" in request.url.raw_path and not request.url.path.endswith("/versions"):
            return httpx.Response(200, json={"schemaType": "PROTOBUF", "schema": _b64(_file("shop/b.proto", "B"))})
        return httpx.Response(200, json=[])

    registry = SchemaRegistry(RegistrySettings(URL), transport=httpx.MockTransport(answer))
    assert (await registry.resolve(SchemaRef(8))).schema.format == PROTOBUF
    assert b"/apis/ccompat/v7/subjects/shop%2Fb.proto/versions/1" in seen


async def test_a_malformed_reference_pauses_the_route() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"schemaType": "PROTOBUF", "schema": _b64(_file("a.proto", "A")),
                                         "references": [{"name": "b.proto"}]})

    registry = SchemaRegistry(RegistrySettings(URL), transport=httpx.MockTransport(answer))
    with pytest.raises(RegistryRefused, match="malformed reference"):
        await registry.resolve(SchemaRef(9))
