"""`python -m bench.framed`: per-record cost of decoding a value in the Confluent wire format (Avro), beside
the JSON parse a JSON route pays for the same demo order.

Each record goes through what the worker runs for it (`service.framed_decode.decode_record`: the frame,
the registry's cached writer schema, fastavro, and the JSON structure and text a run receives); the
schema is in the registry client's cache, as it is after the first record of an id. The JSON figure is
`service.decoding.parse_value` on the same orders as JSON text. Target (the schema-registry issue): Avro
at most the JSON parse plus 2 µs. No broker, no registry, no Dagster.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time
from collections.abc import Sequence

import fastavro
import httpx
import orjson

from bench.data import make_values
from bench.stats import best_per_item_s
from service.decoding import JsonBounds, parse_value
from service.framed_decode import decode_record
from service.frames import frame_prefix
from service.records import Record
from service.registry import SchemaRegistry
from service.settings import RegistrySettings
from service.wire import AVRO

SCHEMA_ID = 1
ORDER_AVRO = {
    "type": "record", "name": "Order", "namespace": "demo",
    "fields": [{"name": "type", "type": "string"}, {"name": "order_id", "type": "string"},
               {"name": "customer", "type": "string"}, {"name": "sku", "type": "string"},
               {"name": "quantity", "type": "long"}, {"name": "amount", "type": "double"},
               {"name": "currency", "type": "string"}, {"name": "created_at", "type": "double"},
               {"name": "note", "type": "string"}],
}
TARGET_EXTRA_US = 2.0


def avro_values(values: Sequence[bytes]) -> list[bytes]:
    """The JSON orders framed as an Avro producer writes them (magic byte 0, schema id 1)."""
    parsed = fastavro.parse_schema(ORDER_AVRO)
    framed = []
    for value in values:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, orjson.loads(value))
        framed.append(frame_prefix(SCHEMA_ID) + buf.getvalue())
    return framed


def _registry() -> SchemaRegistry:
    """A registry client that knows schema 1 (answered once, then cached as in the worker)."""
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/versions"):
            return httpx.Response(200, json=[{"subject": "orders-value", "version": 1}])
        return httpx.Response(200, json={"schema": orjson.dumps(ORDER_AVRO).decode()})

    return SchemaRegistry(RegistrySettings("http://registry.bench"), transport=httpx.MockTransport(answer))


async def _avro_us(records: Sequence[Record], passes: int) -> float:
    registry = _registry()
    try:
        await decode_record(registry, AVRO, records[0])  # fetch once: the cost measured is per record after it
        best = float("inf")
        for _ in range(passes):
            started = time.perf_counter()
            for record in records:
                await decode_record(registry, AVRO, record)
            best = min(best, time.perf_counter() - started)
        return best / len(records) * 1e6
    finally:
        await registry.aclose()


def costs(records: int, passes: int) -> dict[str, float]:
    """µs per record: the JSON parse, the Avro decode, and the difference (what `make bench` reports)."""
    values = make_values(records)
    json_records = [Record("bench", 0, i, None, None, v) for i, v in enumerate(values)]
    avro_records = [Record("bench", 0, i, None, None, v) for i, v in enumerate(avro_values(values))]
    bounds = JsonBounds()
    json_us = best_per_item_s(lambda r: parse_value(r, 1 << 20, bounds), json_records, passes) * 1e6
    avro_us = asyncio.run(_avro_us(avro_records, passes))
    return {"json route: parse the value": json_us, "avro route: frame, cached schema, decode": avro_us,
            "avro minus json": avro_us - json_us}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.framed", description=__doc__)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    figures = costs(args.records, args.passes)
    print(f"{args.records:,} demo orders (~300 bytes as JSON), best of {args.passes} passes")
    for name, us in figures.items():
        print(f"{name:<48}{us:8.2f} µs/record")
    verdict = "within" if figures["avro minus json"] <= TARGET_EXTRA_US else "OVER"
    print(f"{verdict} the target: Avro at most the JSON parse + {TARGET_EXTRA_US:.0f} µs")


if __name__ == "__main__":
    main()
