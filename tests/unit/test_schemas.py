"""The compiled validator rejects, and explains, exactly what the `jsonschema` path did.

`old_outcome` is the validation code the worker ran before `service.schemas`:
`best_match` over `jsonschema`'s errors, with the route's draft. Every value
goes through the real `decode_value` with the route's `validator()` and must
come out the same: the same value, or a `SchemaViolation` with the same text.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.decoding import decode_value
from service.dev.demo import demo_order
from service.errors import ConfigurationError, SchemaViolation
from service.routes import Route, parse_route
from service.schemas import CompiledSchema
from tests.unit.factories import make_record

ORDER_SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "order.json").read_text())
DRAFT_URIS = {
    "4": "http://json-schema.org/draft-04/schema#",
    "6": "http://json-schema.org/draft-06/schema#",
    "7": "http://json-schema.org/draft-07/schema#",
    "201909": "https://json-schema.org/draft/2019-09/schema",
    "202012": "https://json-schema.org/draft/2020-12/schema",
}
FAST = tuple(DRAFT_URIS)
ORDER_KEYS = ("order_id", "customer", "sku", "quantity", "amount", "currency", "created_at", "note", "lines")


def order_schema(draft: str) -> dict[str, Any]:
    """schemas/order.json under `draft`, with keywords of that draft the demo schema does not use."""
    schema: dict[str, Any] = json.loads(json.dumps(ORDER_SCHEMA))
    schema["$schema"] = DRAFT_URIS[draft]
    props = schema["properties"]
    props["currency"] = {"type": "string", "enum": ["EUR", "USD"], "minLength": 3}
    props["sku"] = {"type": "string", "pattern": "^sku-[a-z]+$", "maxLength": 12}
    props["quantity"] |= {"maximum": 1000, "multipleOf": 1}
    props["lines"] = {"type": "array", "maxItems": 3, "uniqueItems": True,
                      "items": {"type": "object", "required": ["sku"], "properties": {"qty": {"type": "integer"}}}}
    props["note"] = {"anyOf": [{"type": "string", "maxLength": 40}, {"type": "null"}]}
    schema["patternProperties"] = {"^x-": {"type": "number"}}
    schema["not"] = {"required": ["forbidden"]}
    if draft != "4":
        props["currency"]["const"] = "EUR"
        props["lines"]["contains"] = {"type": "object"}
        props["amount"]["exclusiveMaximum"] = 1_000_000
    if draft in ("7", "201909", "202012"):
        schema["if"] = {"properties": {"currency": {"const": "USD"}}, "required": ["currency"]}
        schema["then"] = {"required": ["created_at"]}
    if draft in ("201909", "202012"):
        schema["dependentRequired"] = {"quantity": ["sku"]}
        props["meta"] = {"type": "object", "properties": {"a": {"type": "integer"}}, "unevaluatedProperties": False}
    if draft == "202012":
        props["lines"]["prefixItems"] = [{"type": "object", "required": ["qty"]}]
    return schema


def route_for(schema: dict[str, Any], name: str = "orders-validated") -> Route:
    return parse_route({"topic": "orders", "name": name, "job": "process_orders", "max_records": 10,
                        "max_bytes": 10_000, "max_wait_s": 1.0, "schema": schema}, "routes.toml: routes[0]")


def old_outcome(schema: dict[str, Any], value: Any) -> str | None:
    """The SchemaViolation message the pre-compiled path gave for `value`, or None if it passed."""
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    path = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"value fails the route schema at {path}: {error.message}"


def new_outcome(route: Route, raw: bytes) -> str | None:
    try:
        decode_value(make_record(0, value=raw), 1_000_000, route.validator())
    except SchemaViolation as exc:
        return str(exc)
    return None


def assert_same(schema: dict[str, Any], route: Route, value: Any) -> str | None:
    raw = orjson.dumps(value)
    expected = old_outcome(schema, orjson.loads(raw))
    assert new_outcome(route, raw) == expected, value
    return expected


def demo_orders(count: int) -> list[dict[str, Any]]:
    rng = random.Random(12)
    return [demo_order(rng) for _ in range(count)]


INVALID_ORDERS: list[Any] = [
    {"order_id": 7, "customer": "c"},  # the integration tests' poison record
    {"order_id": "o", "customer": "c", "amount": -1},
    {"order_id": "o", "customer": "c"},
    {"customer": "c", "amount": 1},
    {"order_id": "o", "customer": "c", "amount": "12.5"},
    {"order_id": "o", "customer": "c", "amount": 1, "quantity": 0},
    {"order_id": "o", "customer": "c", "amount": 1, "quantity": 2.5},
    {"order_id": "o", "customer": "c", "amount": 1, "quantity": True},
    {"order_id": "o", "customer": "c", "amount": 1, "quantity": 1.0},  # an integer from draft 6 on
    {"order_id": "o", "customer": "c", "amount": 1, "created_at": "yesterday"},
    {"order_id": "o", "customer": "c", "amount": 1, "currency": "GBP"},
    {"order_id": "o", "customer": "c", "amount": 1, "currency": "USD"},
    {"order_id": "o", "customer": "c", "amount": 1, "sku": "SKU-1"},
    {"order_id": "o", "customer": "c", "amount": 1, "lines": [{"sku": "a"}, {"sku": "a"}]},
    {"order_id": "o", "customer": "c", "amount": 1, "lines": [{"qty": 1}]},
    {"order_id": "o", "customer": "c", "amount": 1, "lines": [{"sku": "a", "qty": 1}, 5]},
    {"order_id": "o", "customer": "c", "amount": 1, "note": 3},
    {"order_id": "o", "customer": "c", "amount": 1, "x-discount": "ten"},
    {"order_id": "o", "customer": "c", "amount": 1, "forbidden": 1},
    {"order_id": "o", "customer": "c", "amount": 1, "quantity": 2},  # dependentRequired from 2019-09 on
    {"order_id": "o", "customer": "c", "amount": 1, "meta": {"a": 1, "b": 2}},
    {"order_id": "o", "customer": "c", "amount": 2_000_000},
    {"order_id": None, "customer": ["c"], "amount": {}},
    [], "order", 12, None, True,
]


@pytest.mark.parametrize("draft", FAST)
def test_each_draft_gets_a_compiled_validator(draft: str) -> None:
    compiled = route_for(order_schema(draft)).validator()
    assert compiled is not None and compiled.fast is not None
    assert compiled.draft == draft


@pytest.mark.parametrize("draft", FAST)
def test_demo_orders_pass_as_before(draft: str) -> None:
    schema = order_schema(draft)
    route = route_for(schema)
    for order in demo_orders(50):
        assert assert_same(schema, route, order) is None


@pytest.mark.parametrize("draft", FAST)
@pytest.mark.parametrize("value", INVALID_ORDERS, ids=lambda v: orjson.dumps(v).decode()[:40])
def test_invalid_orders_are_rejected_and_explained_as_before(draft: str, value: Any) -> None:
    schema = order_schema(draft)
    assert_same(schema, route_for(schema), value)


def test_the_sample_schema_explains_with_the_path_and_message() -> None:
    route = route_for(ORDER_SCHEMA)
    raw = orjson.dumps({"order_id": "o", "customer": "c", "amount": -1})
    assert new_outcome(route, raw) == "value fails the route schema at amount: -1 is less than the minimum of 0"
    assert new_outcome(route, b'{"order_id": 7, "customer": "c"}') == (
        "value fails the route schema at (root): 'amount' is a required property")


@pytest.mark.parametrize("draft", FAST)
@pytest.mark.parametrize(
    ("keyword", "values"),
    [
        ({"multipleOf": 0.01}, [0.07, 19.99, 0.5, 3, 0.001, 1e300]),  # jsonschema's float division decides
        ({"multipleOf": 0.1}, [0.3, 0.2, 7]),
        ({"multipleOf": 1e-300}, [1e300, 3e-300]),
        ({"multipleOf": 3}, [9, 9.0, 10, 2**64 - 1, 1e308, -6]),
        ({"pattern": "^\\d+$"}, ["123", "١٢٣", "12a"]),  # Python's \d takes any Unicode digit
        ({"pattern": "^\\D+$"}, ["abc", "١", "a1"]),
        ({"pattern": "^\\w+$"}, ["hello", "héllo", "a b"]),
        ({"pattern": "\\s"}, ["a b", "\ufeff", "\u00a0", "ab"]),  # ECMA's \s has U+FEFF, Python's not
        ({"pattern": "^a$"}, ["a", "a\n", "ab"]),  # Python's $ matches before a final newline
        ({"pattern": "^.$"}, ["a", "\r", "\u2028", "\n", "😀"]),
        ({"propertyNames": {"pattern": "^\\w+$"}}, [{"é": 1}, {"a-b": 1}, {"ok": 1}]),
    ],
    ids=lambda v: orjson.dumps(v).decode()[:30],
)
def test_where_the_engines_differ_jsonschemas_rule_is_kept(draft: str, keyword: dict[str, Any],
                                                          values: list[Any]) -> None:
    schema = {"$schema": DRAFT_URIS[draft], **keyword}
    route = route_for(schema)
    compiled = route.validator()
    assert compiled is not None and compiled.fast is not None
    for value in values:
        assert_same(schema, route, value)
        assert compiled.is_valid(value) == compiled.explainer.is_valid(value), value


@pytest.mark.parametrize("key", ["^x-.*$", "\\d", "(?P<k>a)", "a{2}"])
def test_pattern_properties_the_engines_may_read_differently_fall_back(key: str,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    schema = {"type": "object", "patternProperties": {key: {"type": "number"}}, "additionalProperties": False}
    with caplog.at_level(logging.WARNING, logger="service.routes"):
        route = route_for(schema, name="tips")
    compiled = route.validator()
    assert compiled is not None and compiled.fast is None
    assert "'tips'" in caplog.text and "patternProperties" in caplog.text
    for value in [{"x-a": 1}, {"x-\n": "no"}, {"1": 1}, {"aa": "no"}, {"b": 1}]:
        assert_same(schema, route, value)


@pytest.mark.parametrize("draft", FAST)
def test_a_python_only_regex_is_validated_as_before(draft: str, caplog: pytest.LogCaptureFixture) -> None:
    schema = {"$schema": DRAFT_URIS[draft], "properties": {"word": {"pattern": "(?P<word>a)\\Z"}}}
    with caplog.at_level(logging.WARNING, logger="service.routes"):
        route = route_for(schema, name="words")
    compiled = route.validator()
    assert compiled is not None
    # 2019-09 and 2020-12 compile it, with Python's `re` doing the match; older drafts fall back and say so.
    assert (compiled.fast is None) == (draft in ("4", "6", "7"))
    assert ("'words'" in caplog.text and "not ECMA-262" in caplog.text) == (compiled.fast is None)
    for word in ["a", "ba", "ab", 3]:
        assert_same(schema, route, {"word": word})


def test_plain_pattern_properties_keep_the_fast_path() -> None:
    schema = {"type": "object", "patternProperties": {"^x-": {"type": "number"}}, "additionalProperties": False}
    compiled = route_for(schema).validator()
    assert compiled is not None and compiled.fast is not None


def test_a_valid_value_never_reaches_jsonschema() -> None:
    compiled = CompiledSchema(ORDER_SCHEMA)

    class Refuses:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"jsonschema was asked ({name}) about a valid value")

    compiled.explainer = Refuses()  # type: ignore[assignment]
    for order in demo_orders(10):
        decode_value(make_record(0, value=orjson.dumps(order)), 10_000, compiled)


def test_a_schema_without_dollar_schema_is_2020_12_as_before() -> None:
    schema = {"type": "array", "prefixItems": [{"type": "integer"}]}
    compiled = route_for(schema).validator()
    assert compiled is not None and compiled.draft == "202012" and compiled.fast is not None
    assert_same(schema, route_for(schema), ["x"])


def test_draft_3_falls_back_to_jsonschema_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    schema = {"$schema": "http://json-schema.org/draft-03/schema#", "type": "object",
              "properties": {"order_id": {"type": "string", "required": True}}}
    with caplog.at_level(logging.WARNING, logger="service.routes"):
        route = route_for(schema, name="legacy")
    compiled = route.validator()
    assert compiled is not None and compiled.fast is None and compiled.draft == "3"
    assert "'legacy'" in caplog.text and "draft 3 has no compiled validator" in caplog.text
    assert assert_same(schema, route, {"order_id": 1}) is not None
    assert assert_same(schema, route, {}) is not None
    assert assert_same(schema, route, {"order_id": "o"}) is None


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#/$defs/missing"},  # jsonschema only failed on the first record, with an unclassified error
        {"$ref": "https://schemas.invalid/order.json"},  # never fetched
    ],
    ids=["dangling-ref", "remote-ref"],
)
def test_a_schema_that_cannot_compile_fails_at_start_naming_the_route(schema: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        route_for(schema, name="orders-strict")
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith("routes.toml: routes[0] (route 'orders-strict'): schema does not compile: "), message


def test_a_route_built_in_code_names_itself_when_its_schema_cannot_compile() -> None:
    route = Route("orders", "process_orders", 10, 10_000, 1.0, schema={"$ref": "#/$defs/missing"}, name="built")
    with pytest.raises(ConfigurationError, match=r"^route 'built': schema does not compile: "):
        route.validator()


def test_a_routes_file_with_a_schema_that_cannot_compile_fails_to_load(tmp_path: Path) -> None:
    from service.routes import load_routes

    (tmp_path / "bad.json").write_text(json.dumps({"$ref": "#/definitions/nowhere"}))
    path = tmp_path / "routes.toml"
    path.write_text('[[routes]]\ntopic = "orders"\njob = "j"\nmax_records = 1\nmax_bytes = 10\nmax_wait_s = 1\n'
                    'schema_file = "bad.json"\n')
    with pytest.raises(ConfigurationError, match=r"routes\[0\] \(route 'orders'\): schema does not compile"):
        load_routes(path)


# -- properties -----------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=14)
           | st.sampled_from(["EUR", "USD", "sku-fig", "SKU-1", "", "o"]))
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from([*ORDER_KEYS, "sku", "qty", "a", "b", "x-tip"]) | st.text(max_size=6),
                      children, max_size=5),
    max_leaves=20,
)
order_fields = {
    "order_id": st.text(max_size=8) | json_values,
    "customer": st.sampled_from(["customer-001", ""]) | json_values,
    "amount": st.floats(min_value=-5, max_value=2e6, allow_nan=False) | st.integers(-5, 5) | json_values,
    "quantity": st.integers(-1, 1002) | st.floats(-1, 10, allow_nan=False) | json_values,
    "currency": st.sampled_from(["EUR", "USD", "GBP", "EU"]) | json_values,
    "sku": st.sampled_from(["sku-fig", "sku-", "SKU-1", "sku-abcdefghijk"]) | json_values,
    "created_at": st.floats(allow_nan=False, allow_infinity=False) | json_values,
    "lines": st.lists(st.fixed_dictionaries({}, optional={"sku": st.text(max_size=3), "qty": st.integers(-2, 2)})
                      | json_values, max_size=4),
    "note": st.none() | st.text(max_size=50) | json_values,
    "meta": st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 3) | json_values, max_size=2),
    "x-tip": st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=3),
    "forbidden": st.just(1),
}
orders = st.fixed_dictionaries({}, optional=order_fields)
_routes = {draft: route_for(order_schema(draft)) for draft in FAST}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(draft=st.sampled_from(FAST), value=orders | json_values)
def test_any_value_is_judged_and_explained_as_before(draft: str, value: Any) -> None:
    schema = order_schema(draft)
    assert_same(schema, _routes[draft], value)
