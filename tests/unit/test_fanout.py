"""`Fanout.sort` (a chunk at a time) says what `Fanout.decide` says record by record, or hands the chunk back."""

from __future__ import annotations

import random
from pathlib import Path

import orjson

from service.records import Record
from service.routes import load_routes
from service.routing import Fanout
from tests.unit.factories import make_record

ROUTES = """
[[routes]]
name = "created"
topic = "orders"
job = "process_orders"
match = { "value.type" = "order.created" }
schema = { type = "object", required = ["amount"] }
max_records = 10
max_bytes = 1000000
max_wait_s = 5.0

[[routes]]
name = "large"
topic = "orders"
job = "process_large"
match = { "value.amount" = { ">" = 100 } }
schema = { type = "object", required = ["amount"] }
max_records = 10
max_bytes = 1000000
max_wait_s = 5.0

[[routes]]
name = "refunds"
topic = "orders"
job = "process_refunds"
match = { "value.type" = "refund.issued" }
max_records = 10
max_bytes = 1000000
max_wait_s = 5.0
{extra}
"""


def fanout(tmp_path: Path, extra: str = "") -> Fanout:
    path = tmp_path / "routes.toml"
    path.write_text(ROUTES.replace("{extra}", extra))
    return Fanout(list(load_routes(path).values()))


def chunk(rng: random.Random, size: int, bad: float) -> list[Record]:
    values = []
    for _ in range(size):
        roll = rng.random()
        if roll < bad / 2:
            values.append(b"not json")
        elif roll < bad:
            values.append(orjson.dumps({"type": "order.created"}))  # fails the schema of "created"
        else:
            values.append(orjson.dumps({"type": rng.choice(["order.created", "refund.issued", "other"]),
                                        "amount": rng.choice([5, 150])}))
    return [make_record(offset, value=value) for offset, value in enumerate(values)]


def test_a_chunk_of_good_records_sorts_as_record_by_record_decisions(tmp_path: Path) -> None:
    routes = fanout(tmp_path)
    rng = random.Random(3)
    for _ in range(50):
        records = chunk(rng, rng.randint(1, 30), bad=0.0)
        sorted_ = routes.sort(records, 10_000)
        assert sorted_ is not None
        expected: list[list[int]] = [[] for _ in routes.routes]
        for index, record in enumerate(records):
            for verdict in routes.decide(record, 10_000):
                assert verdict.failure is None
                expected[routes.routes.index(verdict.route)].append(index)
        assert sorted_ == expected


def test_a_chunk_with_a_bad_record_goes_record_by_record(tmp_path: Path) -> None:
    routes = fanout(tmp_path)
    rng = random.Random(4)
    handed_back = 0
    for _ in range(50):
        records = chunk(rng, 20, bad=0.1)
        bad = any(v.failure is not None for r in records for v in routes.decide(r, 10_000))
        sorted_ = routes.sort(records, 10_000)
        assert (sorted_ is None) == bad
        handed_back += sorted_ is None
    assert handed_back > 10


def test_key_or_header_conditions_and_partition_keys_go_record_by_record(tmp_path: Path) -> None:
    records = [make_record(0, value=b'{"type": "refund.issued", "amount": 5}')]
    assert fanout(tmp_path).sort(records, 10_000) == [[], [], [0]]
    keyed = fanout(tmp_path, '\n[[routes]]\nname = "keyed"\ntopic = "orders"\njob = "j"\nmax_records = 1\n'
                             'max_bytes = 1000\nmax_wait_s = 1.0\nmatch = { key = "k" }\n')
    assert not keyed.by_chunk and keyed.sort(records, 10_000) is None
