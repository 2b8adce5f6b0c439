"""`python -m bench.matching`: per-record cost of a route's `match` on the demo orders.

The orders (`bench.data.make_values`, the benchmark's ~300-byte orders) are
decoded once beforehand, as the worker decodes a record once for all its
routes: the figures are the matching alone, in nanoseconds per record, the best
of a few passes. No broker and no Dagster.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from bench.data import make_values
from bench.stats import best_per_item_s
from service.matching import compile_match

PATTERN = {"value.type": "order.created", "value.amount": {">": 10, "<=": 150},
           "value.sku": ["sku-apple", "sku-pear", "sku-fig"]}
HEADERS = [("source", b"web"), ("trace", b"t-0001")]


def contenders() -> dict[str, Callable[[Any], bool]]:
    """Name -> a function of one decoded order."""
    match = compile_match(PATTERN)
    refunds = compile_match({"value.type": "refund.issued", "value.amount": {">": 100}})
    on_meta = compile_match({"headers.source": ["web", "app"], "value.type": "order.created"})
    return {
        f"3 conditions: {match.to_json()}": lambda value: match.matches(None, HEADERS, value),
        "the same, explain": lambda value: match.explain(None, HEADERS, value) is None,
        "2 conditions failing on the first (value.type)": lambda value: refunds.matches(None, HEADERS, value),
        "a header and value.type": lambda value: on_meta.matches(None, HEADERS, value),
    }


def per_record_ns(check: Callable[[Any], object], values: Sequence[Any], passes: int) -> float:
    return best_per_item_s(check, values, passes) * 1e9


def costs(records: int, passes: int) -> dict[str, float]:
    """ns per record of each pattern: what `make bench` reports."""
    values = [orjson.loads(raw) for raw in make_values(records)]
    return {name: per_record_ns(check, values, passes) for name, check in contenders().items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.matching", description=__doc__)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    values = [orjson.loads(raw) for raw in make_values(args.records)]
    selected = sum(compile_match(PATTERN).matches(None, HEADERS, value) for value in values)
    print(f"{args.records:,} decoded demo orders, {selected / len(values):.0%} selected by the 3 conditions, "
          f"best of {args.passes} passes")
    for name, ns in costs(args.records, args.passes).items():
        print(f"{name:<100}{ns:8.0f} ns/record")


if __name__ == "__main__":
    main()
