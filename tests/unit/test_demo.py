"""The demo stream: orders and about one refund in ten, each valid under its schema and told apart by `type`."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import jsonschema
import pytest

from service.dev.demo import ORDER_CREATED, REFUND_ISSUED, demo_event, demo_order, demo_refund
from service.matching import compile_match
from tests.support import ROOT


def schema(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((ROOT / "schemas" / f"{name}.json").read_text()))


@pytest.mark.parametrize(("make", "name", "event_type"), [(demo_order, "order", ORDER_CREATED),
                                                          (demo_refund, "refund", REFUND_ISSUED)])
def test_demo_events_conform_to_their_schema(make: Any, name: str, event_type: str) -> None:
    validator = schema(name)
    rng = random.Random(3)
    for _ in range(50):
        event = make(rng)
        assert event["type"] == event_type
        validator.validate(event)


def test_about_one_demo_event_in_ten_is_a_refund() -> None:
    rng = random.Random(5)

    kinds = Counter(demo_event(rng)["type"] for _ in range(5000))

    assert set(kinds) == {ORDER_CREATED, REFUND_ISSUED}
    assert 0.08 < kinds[REFUND_ISSUED] / 5000 < 0.12


def test_each_demo_event_goes_to_exactly_one_demo_route() -> None:
    orders, refunds = compile_match({"value.type": ORDER_CREATED}), compile_match({"value.type": REFUND_ISSUED})
    rng = random.Random(7)
    for _ in range(200):
        event = demo_event(rng)
        assert orders.matches(None, (), event) != refunds.matches(None, (), event)
