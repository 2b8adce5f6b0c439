"""`kafka-dagster routes test`: verdicts for sample records, from the same routing code the worker runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from service.cli import main

ROOT = Path(__file__).resolve().parents[2]


def routes_test(*args: str, stdin: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["routes", "test", *args], input=stdin)
    return result.exit_code, result.output


def test_the_shipped_routes_say_which_route_takes_each_demo_event() -> None:
    code, out = routes_test(str(ROOT / "routes.toml"), stdin="\n".join([
        '{"type": "order.created", "order_id": "o1", "customer": "c", "amount": 5}',
        '{"type": "refund.issued", "refund_id": "r1", "order_id": "o1", "customer": "c", "amount": -5}',
        "not json",
        '{"type": "gift.wrapped"}',
    ]))
    assert code == 0, out
    assert out.splitlines() == [
        "line 1 (demo.orders):",
        "  orders: batch",
        "  refunds: no match: value.type is 'order.created', not 'refund.issued'",
        "line 2 (demo.orders):",
        "  orders: no match: value.type is 'refund.issued', not 'order.created'",
        "  refunds: dead-letter at stage validate: value fails the route schema at amount: "
        "-5 is less than the minimum of 0",
        "line 3 (demo.orders):",
        "  orders: dead-letter at stage decode: value is not JSON: invalid literal, expected 'null': "
        "line 1 column 1 (char 0)",
        "  refunds: dead-letter at stage decode: value is not JSON: invalid literal, expected 'null': "
        "line 1 column 1 (char 0)",
        "  (one dead letter for them all: dlq.route = orders,refunds)",
        "line 4 (demo.orders):",
        "  orders: no match: value.type is 'gift.wrapped', not 'order.created'",
        "  refunds: no match: value.type is 'gift.wrapped', not 'refund.issued'",
        "  (unmatched: skipped)",
    ]


def test_envelopes_carry_topic_key_and_headers(tmp_path: Path) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text('[[routes]]\nname = "web"\ntopic = "t"\njob = "j"\nmax_records = 1\nmax_bytes = 10\n'
                      'max_wait_s = 1.0\nmatch = { "headers.source" = "web", "key" = { prefix = "eu-" } }\n'
                      '[topics.t]\nunmatched = "dead_letter"\n')
    code, out = routes_test("--envelope", str(routes), stdin="\n".join([
        '{"topic": "t", "key": "eu-1", "headers": {"source": "web"}, "value": {"a": 1}}',
        '{"topic": "t", "key": "us-1", "headers": {"source": "web"}, "value": {"a": 1}}',
        '{"topic": "other", "value": 1}',
    ]))
    assert code == 0, out
    lines = out.splitlines()
    assert lines[1] == "  web: batch"
    assert lines[3].startswith("  web: no match: key") and lines[4] == "  (unmatched: dead-letter at stage route)"
    assert lines[6] == "  topic 'other' has no route"


def test_a_bad_envelope_or_a_missing_topic_is_one_line(tmp_path: Path) -> None:
    code, out = routes_test("--envelope", str(ROOT / "routes.toml"), stdin='{"value": 1}\n')
    assert code == 1
    assert out.strip() == 'Error: line 1: expected an object with "topic" and "value" (or "raw" or "base64")'
    routes = tmp_path / "routes.toml"
    routes.write_text("".join(f'[[routes]]\ntopic = "{t}"\njob = "j"\nmax_records = 1\nmax_bytes = 10\n'
                              f'max_wait_s = 1.0\n' for t in ("a", "b")))
    code, out = routes_test(str(routes), stdin="{}\n")
    assert code == 2 and "give --topic or --envelope" in out


async def test_framed_samples_are_decoded_with_their_writer_schema(tmp_path: Path) -> None:
    """A topic read as Avro takes base64 lines; each is decoded with the registry's schema before routing."""
    import base64
    import io

    import fastavro
    import httpx
    import orjson

    from service.decoding import JsonBounds
    from service.frames import frame_prefix
    from service.registry import SchemaRegistry
    from service.route_preview import decode_framed_samples, samples, verdicts
    from service.routes import load_routes
    from service.settings import RegistrySettings

    schema = (ROOT / "schemas" / "payment.avsc").read_text()

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/schemas/ids/3"):
            return httpx.Response(200, json={"schema": schema})
        if request.url.path.endswith("/versions"):
            return httpx.Response(200, json=[{"subject": "payments.v1-value", "version": 1}])
        return httpx.Response(404, json={"error_code": 40403, "message": "Schema not found"})

    def framed(schema_id: int, status: str) -> str:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, fastavro.parse_schema(orjson.loads(schema)), {
            "payment_id": "p", "order_id": "o", "customer": "c", "status": status, "amount": 1.0,
            "settled_at": None})
        return base64.b64encode(frame_prefix(schema_id) + buf.getvalue()).decode()

    routes_file = tmp_path / "routes.toml"
    routes_file.write_text('[schema_registry]\nurl = "http://registry.test"\n[[routes]]\ntopic = "payments.v1"\n'
                           'job = "j"\nvalue_format = "avro"\nmatch = { "value.status" = "settled" }\n'
                           "max_records = 1\nmax_bytes = 10000\nmax_wait_s = 1.0\n")
    table = load_routes(routes_file)
    lines = [framed(3, "settled"), framed(3, "pending"), framed(4, "settled")]
    found = list(samples([line.encode() for line in lines], "payments.v1", envelope=False, binary=True))
    registry = SchemaRegistry(RegistrySettings("http://registry.test"), transport=httpx.MockTransport(answer))
    for sample in found:
        await decode_framed_samples(registry, table, sample)
    await registry.aclose()
    said = [verdicts(table, sample, 1_000_000, JsonBounds())[0] for sample in found]
    assert said[0] == "payments.v1: batch"
    assert said[1].startswith("payments.v1: no match: value.status")
    assert said[2].startswith("payments.v1: dead-letter at stage decode: schema 4 is not in the schema registry")
    code, out = routes_test(str(routes_file), stdin="{not base64}\n")
    assert code == 1 and "give each in base64" in out


async def test_framed_keys_in_envelopes_are_decoded_with_their_writer_schema(tmp_path: Path) -> None:
    """A topic whose routes read framed keys takes them as an envelope's "key_base64" (values as JSON here,
    the route's value_format being json); the key is decoded with the registry's schema before routing, and
    one that does not decode is a dead letter at decode for the topic's routes."""
    import base64
    import json

    import httpx

    from service.decoding import JsonBounds
    from service.registry import SchemaRegistry
    from service.route_preview import SampleError, decode_framed_samples, samples, verdicts
    from service.routes import load_routes
    from service.settings import RegistrySettings
    from tests.unit.test_framed_keys import Answers, string_key

    routes_file = tmp_path / "routes.toml"
    routes_file.write_text('[schema_registry]\nurl = "http://registry.test"\n[[routes]]\ntopic = "payments.v1"\n'
                           'job = "j"\nkey_format = "avro"\nmatch = { "key" = { prefix = "eu-" } }\n'
                           "max_records = 1\nmax_bytes = 10000\nmax_wait_s = 1.0\n")
    table = load_routes(routes_file)

    def envelope(key: bytes | None) -> bytes:
        document: dict[str, object] = {"topic": "payments.v1", "value": {"n": 1}}
        if key is not None:
            document["key_base64"] = base64.b64encode(key).decode()
        return json.dumps(document).encode()

    lines = [envelope(string_key("eu-1")), envelope(string_key("us-2")), envelope(b"eu-3"), envelope(None)]
    found = list(samples(lines, None, envelope=True))
    assert found[0].record.key == string_key("eu-1") and found[0].record.value == b'{"n":1}'
    registry = SchemaRegistry(RegistrySettings("http://registry.test"), transport=httpx.MockTransport(Answers()))
    for sample in found:
        await decode_framed_samples(registry, table, sample)
    await registry.aclose()
    said = [verdicts(table, sample, 1_000_000, JsonBounds())[0] for sample in found]
    assert said == [
        "payments.v1: batch",
        "payments.v1: no match: key is 'us-2', not a string starting with 'eu-'",
        "payments.v1: dead-letter at stage decode: the key starts with 0x65, not the wire format's magic byte 0 or 1",
        "payments.v1: dead-letter at stage decode: record has a null key where a framed key is required"]
    with pytest.raises(SampleError, match="line 1: key_base64 is not base64"):
        list(samples([b'{"topic": "payments.v1", "value": 1, "key_base64": "{nope}"}'], None, envelope=True))


def test_a_key_only_framed_topic_takes_its_values_as_text(tmp_path: Path) -> None:
    """Without --envelope the lines are values (base64 only where a route reads framed values) and have no
    key: a route that reads framed keys says so, without asking the registry (nothing listens on its URL)."""
    routes = tmp_path / "routes.toml"
    routes.write_text('[schema_registry]\nurl = "http://127.0.0.1:9"\n[[routes]]\ntopic = "t"\njob = "j"\n'
                      'key_format = "avro"\nmax_records = 1\nmax_bytes = 10\nmax_wait_s = 1.0\n')
    code, out = routes_test(str(routes), stdin='{"a": 1}\n')
    assert code == 0, out
    assert out.splitlines() == [
        "line 1 (t):", "  t: dead-letter at stage decode: record has a null key where a framed key is required"]
