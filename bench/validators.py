"""`python -m bench.validators`: per-record cost of JSON Schema validators on the demo orders.

Every contender parses the record with `orjson.loads` and validates it against
`schemas/order.json`; the figures are microseconds per record, the best of a
few passes over the same data set (`bench.data.make_values`, the benchmark's
~300-byte orders). No broker and no Dagster: this isolates validation.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

import fastjsonschema  # the bench extra: measured here, not used by the service
import jsonschema
import jsonschema_rs
import orjson

from bench.data import make_values
from bench.stats import best_per_item_s
from bench.worker import ROOT
from service.schemas import CompiledSchema

SCHEMA_PATH = ROOT / "schemas" / "order.json"


def contenders(schema: dict[str, Any]) -> dict[str, Callable[[bytes], object]]:
    """Name -> a function of one raw record that parses and validates it."""
    today = jsonschema.validators.validator_for(schema)(schema)
    rs = jsonschema_rs.validator_for(schema, validate_formats=False)
    fast = fastjsonschema.compile(schema, use_formats=False)
    compiled = CompiledSchema(schema)

    def jsonschema_best_match(raw: bytes) -> object:
        return jsonschema.exceptions.best_match(today.iter_errors(orjson.loads(raw)))

    def fastjsonschema_validate(raw: bytes) -> object:
        try:
            return fast(orjson.loads(raw))
        except fastjsonschema.JsonSchemaValueException:
            return None

    return {
        "orjson.loads only": orjson.loads,
        "jsonschema (iter_errors + best_match, the old path)": jsonschema_best_match,
        "jsonschema is_valid": lambda raw: today.is_valid(orjson.loads(raw)),
        "jsonschema-rs is_valid": lambda raw: rs.is_valid(orjson.loads(raw)),
        "fastjsonschema": fastjsonschema_validate,
        "service.schemas.CompiledSchema.first_error": lambda raw: compiled.first_error(orjson.loads(raw)),
    }


def per_record_us(check: Callable[[bytes], object], values: Sequence[bytes], passes: int) -> float:
    return best_per_item_s(check, values, passes) * 1e6


def costs(records: int, passes: int) -> dict[str, float]:
    """µs per record of each contender, and of explaining a rejected order: what `make bench` reports."""
    schema = json.loads(SCHEMA_PATH.read_text())
    values = make_values(records)
    figures = {name: per_record_us(check, values, passes) for name, check in contenders(schema).items()}
    compiled = CompiledSchema(schema)
    rejected = [orjson.dumps(orjson.loads(raw) | {"amount": -1}) for raw in values]
    figures["a rejected order, CompiledSchema.first_error"] = per_record_us(
        lambda raw: compiled.first_error(orjson.loads(raw)), rejected, passes)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.validators", description=__doc__)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    print(f"{args.records:,} demo orders, {SCHEMA_PATH.relative_to(ROOT)}, best of {args.passes} passes")
    print(", ".join(f"{name} {_version(name)}" for name in ("jsonschema", "jsonschema-rs", "fastjsonschema")))
    for name, us in costs(args.records, args.passes).items():
        print(f"{name:<54}{us:8.2f} µs/record")


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


if __name__ == "__main__":
    main()
