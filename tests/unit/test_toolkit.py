"""The toolkit any code location imports, run in real Dagster (`materialize_to_memory`), Kafka faked at its resource."""

from __future__ import annotations

import ast
import json
from typing import Any, ClassVar

import dagster as dg
import pytest

from dagster_project.toolkit import KafkaMessage, KafkaResource
from tests.fixtures.byo_project import definitions, keyed, partitioned
from tests.support import ROOT

FIXTURE = ROOT / "tests" / "fixtures" / "byo_project"
TOPIC = "views"


class RangeKafka(KafkaResource):
    """Kafka at the resource boundary: the records `read_range` returns."""

    bootstrap_servers: str = "fake:9092"
    held: ClassVar[list[KafkaMessage]] = []

    def read_range(self, topic: str, partition: int, start: int, end: int) -> list[KafkaMessage]:
        return [m for m in self.held if start <= m.offset <= end]


def views(n: int, start: int = 0) -> list[KafkaMessage]:
    return [KafkaMessage(start + i, 1_700_000_000_000 + i, None, json.dumps({"page": f"p{i % 3}"}).encode())
            for i in range(n)]


def batch(messages: list[KafkaMessage], inline: bool, as_list: bool = False, **extra: Any) -> dict[str, Any]:
    """The run config the worker sends (records inline in `records_json`), or with `as_list` the typed list."""
    config: dict[str, Any] = {"topic": TOPIC, "partition": 0, "offset_start": messages[0].offset,
                              "offset_end": messages[-1].offset, "record_count": len(messages),
                              "batch_id": "b-1", **extra}
    if inline:
        records = [{"offset": m.offset, "timestamp_ms": m.timestamp_ms, "key": None,
                    "value": (m.value or b"").decode()} for m in messages]
        config["records" if as_list else "records_json"] = records if as_list else json.dumps(records)
    return config


def materialization(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


@pytest.mark.parametrize("as_list", [False, True], ids=["records_json", "records"])
def test_an_asset_receives_its_batch_inline_with_its_provenance(as_list: bool) -> None:
    """As the worker sends it (one JSON string), or as a typed list (a batch typed in the launchpad)."""
    messages = views(5, start=10)
    RangeKafka.held = []
    config = batch(messages, True, as_list=as_list)
    result = dg.materialize_to_memory([definitions.page_views], resources={"kafka": RangeKafka()},
                                      run_config={"ops": {"page_views": {"config": config}}})

    metadata = materialization(result)
    assert metadata["records_source"] == "inline" and metadata["records_received"] == 5
    assert (metadata["kafka_topic"], metadata["offset_start"], metadata["offset_end"]) == (TOPIC, 10, 14)
    assert metadata["batch_id"] == "b-1" and metadata["record_count"] == 5 and metadata["pages"] == 3
    assert metadata["oldest_timestamp_ms"] == 1_700_000_000_000


def test_an_asset_reads_an_offset_range_back_and_keeps_what_the_routes_match_selects() -> None:
    messages = views(6)
    messages[2] = KafkaMessage(2, 1, None, json.dumps({"page": "other", "type": "skip"}).encode())
    RangeKafka.held = messages
    match = json.dumps({"value.type": {"exists": False}})
    result = dg.materialize_to_memory(
        [definitions.page_views], resources={"kafka": RangeKafka()},
        run_config={"ops": {"page_views": {"config": batch(messages, False, match=match, record_count=5)}}})

    metadata = materialization(result)
    assert metadata["records_source"] == "kafka" and metadata["records_received"] == 5


def test_a_partitioned_asset_reports_its_partition_key() -> None:
    messages = views(2)
    result = dg.materialize_to_memory([partitioned.daily_events], resources={"kafka": RangeKafka()},
                                      partition_key="2024-03-01",
                                      run_config={"ops": {"daily_events": {"config": batch(messages, True)}}})

    assert materialization(result)["partition_key"] == "2024-03-01"


def test_the_fixture_project_imports_only_the_toolkit_and_dagster() -> None:
    for path in FIXTURE.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        outside = {m for m in imported if m.split(".")[0] in ("dagster_project", "service")}
        assert outside <= {"dagster_project.toolkit"}, (path.name, outside)


def test_the_readme_and_the_docs_show_the_example_project_as_it_is_tested() -> None:
    example = (FIXTURE / "definitions.py").read_text()
    body = example.split('"""', 2)[2].strip()  # the file without its docstring
    for page in (ROOT / "README.md", ROOT / "docs" / "byo.md"):
        assert body in page.read_text(), page.name
    assert len(example.splitlines()) <= 25


def test_framed_values_read_back_are_decoded_as_the_worker_decodes_them() -> None:
    """An offset range of Avro values (wire format): decoded with the registry's schema, then matched; the one
    whose schema id the registry does not know is left out (the worker dead-lettered it)."""
    import io
    import struct

    import fastavro
    import httpx

    from service.registry import SchemaRegistry
    from service.settings import RegistrySettings

    schema = {"type": "record", "name": "View", "fields": [{"name": "page", "type": "string"},
                                                           {"name": "kind", "type": "string"}]}

    def framed(offset: int, page: str, kind: str = "view", schema_id: int = 1) -> KafkaMessage:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), {"page": page, "kind": kind})
        return KafkaMessage(offset, 1_700_000_000_000, None, b"\x00" + struct.pack(">I", schema_id) + buf.getvalue())

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/schemas/ids/1":
            return httpx.Response(200, json={"schema": json.dumps(schema)})
        if request.url.path == "/schemas/ids/1/versions":
            return httpx.Response(200, json=[{"subject": "views-value", "version": 1}])
        return httpx.Response(404, json={"error_code": 40403, "message": "not found"})

    class FramedKafka(RangeKafka):
        def schema_registry(self) -> Any:
            return SchemaRegistry(RegistrySettings("http://registry.test"), transport=httpx.MockTransport(answer))

    messages = [framed(0, "p0"), framed(1, "p1", kind="click"), framed(2, "p2"), framed(3, "p0", schema_id=9),
                framed(4, "p1")]
    RangeKafka.held = messages
    match = json.dumps({"value.kind": "view"})
    result = dg.materialize_to_memory(
        [definitions.page_views], resources={"kafka": FramedKafka()},
        run_config={"ops": {"page_views": {"config": batch(messages, False, match=match, record_count=3,
                                                            value_format="avro")}}})

    metadata = materialization(result)
    assert metadata["records_source"] == "kafka" and metadata["records_received"] == 3
    assert metadata["pages"] == 3  # p0, p2 and p1: the click and the unknown id are not the batch's


def test_framed_keys_read_back_are_decoded_as_the_worker_decodes_them() -> None:
    """An offset range whose keys are framed (string keys, and a record key), read back: each key decoded with
    its writer schema and matched by its text, the one that does not decode left out (the worker dead-lettered
    it); the asset sees exactly what it sees when the worker sends the same batch inline."""
    import asyncio

    from service.framed_decode import decode_formats
    from service.matching import compile_match
    from service.records import Record
    from service.routes import Route
    from service.routing import selects
    from service.run_request import inline_records_json
    from tests.unit.test_framed_keys import Answers, record_key, registry, string_key

    class FramedKafka(RangeKafka):
        def schema_registry(self) -> Any:
            return registry(Answers())

    keys = [string_key("eu-1"), string_key("us-2"), b"eu-3", record_key("eu", 4), string_key("eu-5")]
    messages = [KafkaMessage(offset, 1_700_000_000_000, key, json.dumps({"page": f"p{offset}"}).encode())
                for offset, key in enumerate(keys)]
    RangeKafka.held = messages
    match = {"key": {"prefix": "eu-"}}
    read_back = dg.materialize_to_memory(
        [keyed.keyed_views], resources={"kafka": FramedKafka()},
        run_config={"ops": {"keyed_views": {"config": batch(messages, False, match=json.dumps(match), record_count=2,
                                                             key_format="avro")}}})
    seen = materialization(read_back)["seen"]
    assert seen == [[0, "eu-1", "6", "payments-key", '{"page": "p0"}'],
                    [4, "eu-5", "6", "payments-key", '{"page": "p4"}']]

    # the worker: the same records decoded and selected by the route, sent inline
    route = Route(TOPIC, "j", 10, 1_000_000, 1.0, key_format="avro", match=compile_match(match))
    records = [Record(TOPIC, 0, m.offset, m.timestamp_ms, m.key, m.value) for m in messages]

    async def decode() -> None:
        client = registry(Answers())
        for record in records:
            await decode_formats(client, "json", "avro", record)
        await client.aclose()

    asyncio.run(decode())
    taken = [r for r in records if selects(route, r, 1_000_000)]
    config = {**batch(messages, False, record_count=len(taken), key_format="avro"),
              "records_json": inline_records_json(taken)}
    inline = dg.materialize_to_memory([keyed.keyed_views], resources={"kafka": RangeKafka()},
                                      run_config={"ops": {"keyed_views": {"config": config}}})
    assert materialization(inline)["seen"] == seen

    # a record key reads back as its JSON text
    RangeKafka.held = [messages[3]]
    whole = dg.materialize_to_memory(
        [keyed.keyed_views], resources={"kafka": FramedKafka()},
        run_config={"ops": {"keyed_views": {"config": batch([messages[3]], False, key_format="avro")}}})
    [[_, key, schema_id, _, _]] = materialization(whole)["seen"]
    assert (json.loads(key), schema_id) == ({"region": "eu", "id": 4}, "5")
