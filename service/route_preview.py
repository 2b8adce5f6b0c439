"""`kafka-dagster routes test`: what the worker would do with sample records, without a broker or Dagster.

Each sample is one line: the record's value (with `--topic`), or with
`--envelope` a JSON object `{"topic", "key", "headers": {name: value}, "value"}`
where `value` may be any JSON (it is sent as its JSON text; give `"raw": "..."`
instead to send text that is not JSON, or `"base64": "..."` for bytes) and
`key` and header values are strings (or `"key_base64": "..."` for a key's
bytes). A topic whose routes read a framed value format (Confluent wire
format) takes its values as base64: each line, or the envelope's `"base64"`;
one whose routes read a framed `key_format` takes its keys framed, in an
envelope's `"key_base64"`. Both are decoded with their writer schemas from the
schema registry (`decode_framed_samples`), as the worker decodes them.
The verdicts come from `service.routing`, the same code the
worker runs.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import orjson

from service.decoding import JsonBounds
from service.delivery.framed import framed_route
from service.framed_decode import decode_formats
from service.records import Record
from service.registry import SchemaRegistry
from service.routes import RouteTable
from service.routing import explain


@dataclass(frozen=True)
class Sample:
    topic: str
    record: Record


class SampleError(ValueError):
    """A sample line that is not what `--envelope` expects."""


def samples(lines: Iterable[bytes], topic: str | None, envelope: bool, binary: bool = False) -> Iterator[Sample]:
    """The sample records of `lines` (blank lines skipped), numbered by their offset (the line number - 1);
    with `binary`, each line (not an envelope) is its value in base64."""
    for number, line in enumerate(lines):
        line = line.rstrip(b"\r\n")
        if not line.strip():
            continue
        if envelope:
            yield _from_envelope(line, number)
        else:
            assert topic is not None
            value = _base64(line.strip().decode("ascii", "replace"), number) if binary else line
            yield Sample(topic, Record(topic, 0, number, None, None, value))


def _base64(text: str, number: int, field: str | None = None) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        if field is not None:
            raise SampleError(f"line {number + 1}: {field} is not base64") from None
        raise SampleError(f"line {number + 1}: the topic's values are framed: give each in base64") from None


async def decode_framed_samples(registry: SchemaRegistry, routes: RouteTable, sample: Sample) -> None:
    """Decode the sample's value and key with their writer schemas if its topic's routes read them framed."""
    route = framed_route(routes.for_topic(sample.topic))
    if route is not None:
        await decode_formats(registry, route.value_format, route.key_format, sample.record)


def _from_envelope(line: bytes, number: int) -> Sample:
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise SampleError(f"line {number + 1}: not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("topic"), str) or not (
            "value" in document or isinstance(document.get("raw"), str) or isinstance(document.get("base64"), str)):
        raise SampleError(f"line {number + 1}: expected an object with \"topic\" and \"value\" (or \"raw\" "
                          "or \"base64\")")
    headers = document.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise SampleError(f"line {number + 1}: headers must be an object of strings")
    if isinstance(document.get("key_base64"), str):
        key: bytes | None = _base64(document["key_base64"], number, "key_base64")
    else:
        key = document["key"].encode() if isinstance(document.get("key"), str) else None
    if isinstance(document.get("base64"), str):
        raw = _base64(document["base64"], number)
    else:
        raw = document["raw"].encode() if "raw" in document else orjson.dumps(document["value"])
    topic = document["topic"]
    record = Record(topic, 0, number, None, key, raw,
                    [(name, text.encode()) for name, text in headers.items()])
    return Sample(topic, record)


def verdicts(routes: RouteTable, sample: Sample, max_message_bytes: int, bounds: JsonBounds) -> list[str]:
    """One line per route of the sample's topic (`route: verdict`), or why the topic is not routed."""
    routed = routes.for_topic(sample.topic)
    if not routed:
        return [f"topic {sample.topic!r} has no route"]
    lines = [f"{route.name}: {explain(route, sample.record, max_message_bytes, bounds)}" for route in routed]
    unreadable = [route.name for route, line in zip(routed, lines, strict=True) if _unreadable(line)]
    if len(unreadable) > 1:
        lines.append(f"(one dead letter for them all: dlq.route = {','.join(unreadable)})")
    if all(": no match: " in line for line in lines):
        action = "dead-letter at stage route" if routes.unmatched(sample.topic) == "dead_letter" else "skipped"
        lines.append(f"(unmatched: {action})")
    return lines


def _unreadable(line: str) -> bool:
    return ": dead-letter at stage decode: " in line or "bytes, over the bound" in line
