"""Route match patterns: every operator, the paths, type strictness, errors, explanations, and properties."""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.matching import Match, MatchError, compile_match, match_from_json

ORDER = {"type": "order.created", "order_id": "o-1", "customer": "customer-007", "sku": "sku-fig", "quantity": 3,
         "amount": 120.5, "currency": "EUR", "tags": ["gift", "express"], "shipping": {"country": "NL"}}


def matches(spec: dict[str, Any], value: Any = None, key: bytes | None = None,
            headers: Sequence[tuple[str, bytes | None]] = ()) -> bool:
    match = compile_match(spec)
    result = match.matches(key, headers, value)
    assert result == (match.explain(key, headers, value) is None)
    return result


def explain(spec: dict[str, Any], value: Any = None, key: bytes | None = None,
            headers: Sequence[tuple[str, bytes | None]] = ()) -> str | None:
    return compile_match(spec).explain(key, headers, value)


def error(spec: Any) -> str:
    with pytest.raises(MatchError) as info:
        compile_match(spec)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- the routes file's syntax --------------------------------------------------------


def test_the_toml_examples_compile_and_match() -> None:
    routes = tomllib.loads("""
        created = { "value.type" = "order.created", "headers.source" = ["web", "app"] }
        big_refund = { "value.type" = "refund.issued", "value.amount" = { ">" = 100 } }
    """)
    created, big_refund = compile_match(routes["created"]), compile_match(routes["big_refund"])

    assert created.matches(None, [("source", b"app")], ORDER)
    assert not created.matches(None, [("source", b"cli")], ORDER)
    assert big_refund.matches(None, [], {"type": "refund.issued", "amount": 100.01})
    assert not big_refund.matches(None, [], {"type": "refund.issued", "amount": 100})


def test_all_conditions_must_hold() -> None:
    spec = {"value.type": "order.created", "value.currency": "EUR", "key": "k"}

    assert matches(spec, ORDER, key=b"k")
    assert not matches(spec, ORDER, key=b"other")
    assert not matches(spec, ORDER | {"currency": "USD"}, key=b"k")


# -- paths ---------------------------------------------------------------------------


def test_dotted_paths_go_through_objects() -> None:
    assert matches({"value.shipping.country": "NL"}, ORDER)
    assert not matches({"value.shipping.country": "NL"}, ORDER | {"shipping": {"country": "BE"}})


@pytest.mark.parametrize("value", [{}, {"shipping": "NL"}, {"shipping": ["NL"]}, {"shipping": None}, [ORDER], "x",
                                   None, 3])
def test_a_path_through_a_non_object_or_a_missing_key_is_missing(value: Any) -> None:
    assert not matches({"value.shipping.country": "NL"}, value)
    assert matches({"value.shipping.country": {"exists": False}}, value)
    assert explain({"value.shipping.country": "NL"}, value) == "value.shipping.country is missing"


def test_the_whole_value() -> None:
    assert matches({"value": "ping"}, "ping")
    assert matches({"value": {">": 2}}, 3)
    assert matches({"value": "b"}, ["a", "b"])
    assert not matches({"value": "ping"}, {"value": "ping"})
    assert matches({"value": {"exists": True}}, None)  # JSON null is a value


def test_the_key_is_utf8_text() -> None:
    assert matches({"key": "customer-007"}, key=b"customer-007")
    assert matches({"key": {"prefix": "customer-"}}, key="customer-é".encode())
    assert not matches({"key": "customer-007"}, key=None)
    assert explain({"key": "customer-007"}, key=None) == "key is missing"
    assert matches({"key": {"exists": False}}, key=None)
    assert matches({"key": ""}, key=b"")


def test_a_header_may_repeat_and_any_occurrence_satisfies() -> None:
    headers = [("source", b"batch"), ("trace", b"t-1"), ("source", b"web")]

    assert matches({"headers.source": "web"}, headers=headers)
    assert matches({"headers.source": "batch"}, headers=headers)
    assert not matches({"headers.source": "app"}, headers=headers)
    assert matches({"headers.source": {"not": "batch"}}, headers=headers)  # "web" is not "batch"
    assert explain({"headers.source": "app"}, headers=headers) == "headers.source is 'batch' and 'web': none is 'app'"


def test_header_names_are_exact_and_may_hold_dots() -> None:
    assert matches({"headers.x.trace-id": "t"}, headers=[("x.trace-id", b"t")])
    assert not matches({"headers.Source": "web"}, headers=[("source", b"web")])
    assert explain({"headers.source": "web"}, headers=[("trace", b"t")]) == "headers.source is missing"


def test_a_header_without_a_value_is_present_and_empty() -> None:
    assert matches({"headers.flag": ""}, headers=[("flag", None)])
    assert matches({"headers.flag": {"exists": True}}, headers=[("flag", None)])
    assert not matches({"headers.flag": {"prefix": "x"}}, headers=[("flag", None)])


@pytest.mark.parametrize("spec", [{"key": "\udcff"}, {"key": ""}, {"key": {"prefix": ""}}, {"key": {"suffix": ""}},
                                  {"key": ["a", {"prefix": ""}]}])
def test_bytes_that_are_not_utf8_never_equal_a_string_nor_have_a_prefix(spec: dict[str, Any]) -> None:
    assert not matches(spec, key=b"\xff\xfe")
    assert not matches({path.replace("key", "headers.h"): c for path, c in spec.items()}, headers=[("h", b"\xff")])


def test_bytes_that_are_not_utf8_are_present() -> None:
    assert matches({"key": {"exists": True}}, key=b"\xff")
    assert matches({"headers.h": {"exists": True}}, headers=[("h", b"\xc3")])
    assert matches({"key": {"not": "x"}}, key=b"\xff")  # anything but "x"
    assert explain({"key": "k"}, key=b"\xff") == "key is non-UTF-8 bytes b'\\xff', not 'k'"


@pytest.mark.parametrize("path", ["", "keys", "key.x", "headers", "headers.", "value.", "value..a", "value.a.",
                                  ".value", "values.a", "timestamp", "topic"])
def test_an_unknown_path_is_an_error_naming_it(path: str) -> None:
    assert error({path: "x"}).startswith(f"{path!r}: unknown path (paths: key, headers.<name>, value")


# -- conditions ----------------------------------------------------------------------


@pytest.mark.parametrize(("condition", "field", "holds"), [
    ("EUR", "EUR", True), ("EUR", "eur", False), ("100", 100, False), (100, "100", False),
    (1, 1.0, True), (1.0, 1, True), (2.5, 2.5, True), (True, True, True), (True, 1, False), (1, True, False),
    (False, 0, False), (0, False, False), (False, False, True), ("true", True, False), (0, None, False),
    ("null", None, False), ("", "", True),
])
def test_equality_keeps_json_types_apart(condition: Any, field: Any, holds: bool) -> None:
    assert matches({"value.f": condition}, {"f": field}) is holds
    assert matches({"value.f": [condition]}, {"f": field}) is holds
    assert matches({"value.f": {"not": condition}}, {"f": field}) is not holds


def test_a_list_is_any_of_its_elements() -> None:
    spec = {"value.sku": ["sku-fig", {"prefix": "sku-a"}, 7]}

    assert matches(spec, {"sku": "sku-fig"})
    assert matches(spec, {"sku": "sku-apple"})
    assert matches(spec, {"sku": 7.0})
    assert not matches(spec, {"sku": "sku-pear"})
    assert matches({"value.coupon": ["WINTER", {"exists": False}]}, {})
    assert not matches({"value.coupon": ["WINTER", {"exists": False}]}, {"coupon": "SUMMER"})


@pytest.mark.parametrize(("table", "field", "holds"), [
    ({"exists": True}, "x", True), ({"exists": True}, None, True), ({"exists": True}, [], True),
    ({"exists": False}, "x", False), ({"exists": False}, None, False),
    ({"prefix": "sku-"}, "sku-fig", True), ({"prefix": "sku-"}, "fig", False), ({"prefix": "1"}, 12, False),
    ({"suffix": ".com"}, "a@b.com", True), ({"suffix": ".com"}, "a@b.org", False), ({"suffix": "2"}, 12, False),
    ({"not": "test"}, "prod", True), ({"not": "test"}, "test", False), ({"not": ["a", "b"]}, "b", False),
    ({"not": ["a", "b"]}, "c", True), ({"not": 1}, "1", True), ({"not": 1}, 1.0, False), ({"not": True}, 1, True),
    ({"not": "x"}, None, True), ({"not": "x"}, {"y": 1}, True),
    ({">": 100}, 100.5, True), ({">": 100}, 100, False), ({">=": 100}, 100, True), ({">=": 100}, 99.99, False),
    ({"<": 0}, -1, True), ({"<": 0}, 0, False), ({"<=": 0}, 0.0, True), ({"<=": 0}, 0.001, False),
    ({">": 0}, "5", False), ({">": 0}, True, False), ({"<": 2}, False, False), ({">": 0}, None, False),
    ({">": 0, "<=": 100}, 100, True), ({">": 0, "<=": 100}, 0, False), ({">": 0, "<=": 100}, 101, False),
    ({">=": 1, ">": 2}, 2, False), ({">=": 1, ">": 2}, 3, True), ({"<": 10, "<=": 5, ">": 1}, 5, True),
    ({">": 10**30}, 10**31, True), ({"<": 1e300}, 10**400, False),
    ({"prefix": "a", "suffix": "z"}, "abcz", True), ({"prefix": "a", "suffix": "z"}, "abc", False),
    ({"prefix": "a", "not": "ab"}, "ab", False), ({"prefix": "a", "not": "ab"}, "abc", True),
    ({"exists": True, "prefix": "a"}, "abc", True), ({"exists": True, ">": 1}, 0, False),
])
def test_operators(table: dict[str, Any], field: Any, holds: bool) -> None:
    assert matches({"value.f": table}, {"f": field}) is holds
    assert matches({"value.g.f": table}, {"g": {"f": field}}) is holds


@pytest.mark.parametrize("table", [{"prefix": ""}, {"not": "x"}, {">": 0}, {"exists": True}, {"<": 1, ">": -1},
                                   {"suffix": "", "prefix": ""}])
def test_a_missing_field_satisfies_only_exists_false(table: dict[str, Any]) -> None:
    assert not matches({"value.f": table}, {})
    assert not matches({"value.f.g": table}, {"f": 1})
    assert matches({"value.f": {"exists": False}}, {})


@pytest.mark.parametrize(("condition", "field", "holds"), [
    ("gift", ["gift", "express"], True), ("gift", ["express"], False), ("gift", [], False),
    (["a", "gift"], ["gift"], True), ({"prefix": "ex"}, ["gift", "express"], True),
    ({">": 10}, [1, 20], True), ({">": 10}, [1, 2], False), ({">": 0, "<": 10}, [-5, 20], False),
    ({">": 0, "<": 10}, [-5, 5], True), ({"not": "gift"}, ["gift", "express"], True),
    ({"not": "gift"}, ["gift"], False),
    ({"not": "gift"}, [], False), ({"exists": True}, [], True), ({"exists": False}, [], False),
    ("gift", [["gift"]], False), (1, [True, 1.0], True), (1, [True, "1"], False),
])
def test_on_an_array_a_condition_holds_if_it_holds_for_an_element(condition: Any, field: Any, holds: bool) -> None:
    assert matches({"value.tags": condition}, {"tags": field}) is holds
    assert matches({"value.x.tags": condition}, {"x": {"tags": field}}) is holds


# -- select_meta, select_value, needs_value --------------------------------------------


def test_meta_and_value_conditions_are_selected_apart() -> None:
    match = compile_match({"headers.source": "web", "value.type": "order.created"})

    assert match.needs_value
    assert match.select_meta(None, [("source", b"web")])
    assert not match.select_meta(None, [])
    assert match.select_value(ORDER)
    assert not match.select_value({"type": "refund.issued"})
    assert match.matches(None, [("source", b"web")], ORDER)


def test_a_pattern_without_value_conditions_does_not_need_the_value() -> None:
    match = compile_match({"key": {"prefix": "eu-"}, "headers.source": {"exists": True}})

    assert not match.needs_value
    assert match.select_value(object())  # never looked at
    assert match.select_meta(b"eu-1", [("source", b"")])
    assert compile_match({"value": {"exists": True}}).needs_value
    assert compile_match({"value.type": "x"}).select_meta(b"\xff", [("junk", None)])


# -- explain -------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "value", "reason"), [
    ({"value.type": "order.created"}, {"type": "refund.issued"}, "value.type is 'refund.issued', not 'order.created'"),
    ({"value.type": "order.created"}, {}, "value.type is missing"),
    ({"value.type": "order.created"}, [1], "value.type is missing"),
    ({"value.type": ["a", "b"]}, {"type": "c"}, "value.type is 'c', not one of 'a', 'b'"),
    ({"value.n": 1}, {"n": True}, "value.n is true, not 1"),
    ({"value.n": "1"}, {"n": 1}, "value.n is 1, not '1'"),
    ({"value.n": 1}, {"n": None}, "value.n is null, not 1"),
    ({"value.amount": {">": 100}}, {"amount": 50}, "value.amount is 50, not a number > 100"),
    ({"value.amount": {">": 0, "<=": 100}}, {"amount": "7"}, "value.amount is '7', not a number > 0 and <= 100"),
    ({"value.sku": {"prefix": "sku-"}}, {"sku": "fig"}, "value.sku is 'fig', not a string starting with 'sku-'"),
    ({"value.mail": {"suffix": ".com"}}, {"mail": 1}, "value.mail is 1, not a string ending with '.com'"),
    ({"value.env": {"not": ["test", "dev"]}}, {"env": "dev"}, "value.env is 'dev', not anything but 'test', 'dev'"),
    ({"value.coupon": {"exists": False}}, {"coupon": "X"}, "value.coupon is 'X', not missing"),
    ({"value.coupon": {"exists": False}}, {"coupon": []}, "value.coupon is [], not missing"),
    ({"value.c": ["x", {"exists": False}]}, {"c": "y"}, "value.c is 'y', not one of 'x', missing"),
    ({"value.c": ["x", {">": 1}]}, {"c": 0}, "value.c is 0, not one of 'x', a number > 1"),
    ({"value.tags": "gift"}, {"tags": ["a", "b"]}, "value.tags is ['a', 'b']: none is 'gift'"),
    ({"value.tags": "gift"}, {"tags": []}, "value.tags is []: none is 'gift'"),
    ({"value": "ping"}, {"a": {"b": {"c": 1}}}, "value is {'a': {'b': {...}}}, not 'ping'"),
    ({"value": "ping"}, list(range(10)), "value is [0, 1, 2, 3, ...]: none is 'ping'"),
    ({"value.s": "x"}, {"s": "y" * 100}, f"value.s is '{'y' * 57}...', not 'x'"),
])
def test_explain_names_the_failing_condition(spec: dict[str, Any], value: Any, reason: str) -> None:
    assert explain(spec, value) == reason
    assert not compile_match(spec).matches(None, [], value)


def test_explain_reports_the_first_failing_condition_in_declared_order() -> None:
    spec = {"headers.source": "web", "value.type": "order.created", "key": "k"}

    assert explain(spec, {"type": "x"}, b"j", [("source", b"web")]) == "value.type is 'x', not 'order.created'"
    assert explain(spec, {"type": "x"}, b"j", []) == "headers.source is missing"
    assert explain(spec, ORDER, b"j", [("source", b"web")]) == "key is 'j', not 'k'"
    assert explain(spec, ORDER, b"k", [("source", b"web")]) is None


# -- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "message"), [
    ({"value.amount": {"=>": 100}},
     "'value.amount': unknown operator '=>' (operators: exists, prefix, suffix, not, >, >=, <, <=)"),
    ({"value.amount": {"gt": 1, ">": 2}}, "'value.amount': unknown operator 'gt'"),
    ({"value.x": None}, "'value.x': null is not a value to compare with (a missing field is { exists = false })"),
    ({"value.x": [None]}, "'value.x': null is not"),
    ({"value.x": []}, "'value.x': empty list"),
    ({"value.x": {}}, "'value.x': empty operator table"),
    ({"value.x": ["a", {}]}, "'value.x': empty operator table"),
    ({"value.x": [["a"]]}, "'value.x': nested list"),
    ({"value.x": ["a", ["b"]]}, "'value.x': nested list"),
    ({"value.x": {"not": []}}, "'value.x': not takes a scalar or a non-empty list of scalars"),
    ({"value.x": {"not": None}}, "'value.x': null is not"),
    ({"value.x": {"not": [["a"]]}}, "'value.x': a list is not a value to compare with"),
    ({"value.x": {"not": {"a": 1}}}, "'value.x': a table is not a value to compare with"),
    ({"value.x": {"not": [{"prefix": "a"}]}}, "'value.x': a table is not a value to compare with"),
    ({"value.x": {"exists": "yes"}}, "'value.x': exists takes true or false, not 'yes'"),
    ({"value.x": {"exists": 1}}, "'value.x': exists takes true or false, not 1"),
    ({"value.x": {"prefix": 1}}, "'value.x': prefix takes a string, not 1"),
    ({"value.x": {"suffix": ["a"]}}, "'value.x': suffix takes a string, not ['a']"),
    ({"value.x": {">": "100"}}, "'value.x': > takes a finite number, not '100'"),
    ({"value.x": {">=": True}}, "'value.x': >= takes a finite number, not true"),
    ({"value.x": {"<": math.inf}}, "'value.x': < takes a finite number, not inf"),
    ({"value.x": {"<=": None}}, "'value.x': <= takes a finite number, not null"),
    ({"value.x": math.nan}, "'value.x': nan is not a value to compare with"),
    ({"value.x": b"bytes"}, "'value.x': bytes is not a value to compare with"),
    ({"value.x": {"exists": False, "prefix": "a"}}, "'value.x': exists = false cannot be combined"),
    ({"key": 7}, "'key': 7 can never equal a key, which is text: quote it"),
    ({"headers.n": True}, "'headers.n': true can never equal a header, which is text"),
    ({"headers.n": ["a", 1]}, "'headers.n': 1 can never equal a header"),
    ({"headers.n": {"not": 1}}, "'headers.n': 1 can never equal a header"),
    ({"headers.n": {">": 1}}, "'headers.n': > compares numbers, and a header is text"),
    ({"key": {"<=": 1}}, "'key': <= compares numbers, and a key is text"),
    ({"keys": "a"}, "'keys': unknown path"),
    ({1: "a"}, "match: a path is a string, not 1"),
    ({}, "match: empty table"),
    (["value.x"], "match: a table of path = condition, not ['value.x']"),
    ("value.x = 1", "match: a table of path = condition, not 'value.x = 1'"),
    (None, "match: a table of path = condition, not null"),
])
def test_every_mistake_is_one_line_naming_the_path(spec: Any, message: str) -> None:
    assert error(spec).startswith(message)


def test_the_first_wrong_path_is_named() -> None:
    assert error({"value.a": "ok", "value.b": {"=>": 1}, "value.c": []}).startswith("'value.b':")


def test_a_match_error_is_a_value_error() -> None:
    assert issubclass(MatchError, ValueError)


# -- to_json / match_from_json ---------------------------------------------------------


def test_to_json_is_compact_sorted_and_round_trips() -> None:
    """Sorted: the copy's `explain` reports the first failure in path order, not in declared order."""
    spec = {"value.type": "order.created", "headers.source": ["web", "app"], "value.amount": {">": 100, "<=": 1e6},
            "key": {"prefix": "é"}, "value.flag": True}
    match = compile_match(spec)
    text = match.to_json()

    assert text == ('{"headers.source":["web","app"],"key":{"prefix":"é"},'
                    '"value.amount":{"<=":1000000.0,">":100},"value.flag":true,"value.type":"order.created"}')
    again = match_from_json(text)
    assert again == match
    assert hash(again) == hash(match)
    assert again.spec == spec
    assert again.to_json() == text
    assert again.needs_value is match.needs_value
    for value in (ORDER, {"type": "order.created", "amount": 101, "flag": True}, {}):
        for key, headers in ((b"\xc3\xa9-1", [("source", b"web")]), (b"x", [("source", b"web")]), (None, [])):
            assert again.matches(key, headers, value) == match.matches(key, headers, value)
            assert (again.explain(key, headers, value) is None) is (match.explain(key, headers, value) is None)


def test_the_spec_is_kept_as_declared_and_apart_from_the_callers_dict() -> None:
    spec: dict[str, Any] = {"value.tags": ["a"]}
    match = compile_match(spec)
    spec["value.tags"].append("b")

    assert match.spec == {"value.tags": ["a"]}
    assert not match.matches(None, [], {"tags": "b"})


@pytest.mark.parametrize(("text", "message"), [("{", "match: not JSON"), ("[1]", "match: a table"),
                                               ('{"value.x": {"=>": 1}}', "'value.x': unknown operator '=>'")])
def test_match_from_json_refuses_what_compile_match_refuses(text: str, message: str) -> None:
    with pytest.raises(MatchError, match="^" + message.replace("[", r"\[")):
        match_from_json(text)


def test_matches_are_equal_when_their_json_is() -> None:
    assert compile_match({"value.x": 1, "key": "k"}) == compile_match({"key": "k", "value.x": 1})
    assert compile_match({"value.x": 1}) != compile_match({"value.x": True})
    assert len({compile_match({"value.x": 1}), compile_match({"value.x": True}), compile_match({"value.x": 1})}) == 2


def test_match_is_frozen() -> None:
    match = compile_match({"value.x": 1})

    with pytest.raises(AttributeError):
        match.needs_value = False  # type: ignore[misc]
    assert isinstance(match, Match)


# -- properties ----------------------------------------------------------------------

PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MISSING = object()
NOT_TEXT = object()
SCALARS = ["x", "y", "", "1", 0, 1, 1.0, 2.5, -3, True, False]
TEXT = ["x", "y", "", "1", "é", "\udcff"]  # a lone surrogate: no bytes decode to it
VALUE_PATHS = ["value", "value.a", "value.b", "value.a.b", "value.a.a"]
META_PATHS = ["key", "headers.h", "headers.s"]

# Arbitrary JSON, the kind the worker decodes, and a little beyond it (NaN, big integers, deep nesting).
any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**64) | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=40,
)
any_headers = st.lists(st.tuples(st.text(max_size=6) | st.sampled_from(["h", "s"]), st.none() | st.binary(max_size=8)),
                       max_size=5)
any_keys = st.none() | st.binary(max_size=12)

# Small vocabularies, so that patterns and records meet often.
near_json = st.recursive(st.sampled_from([None, *SCALARS, "é"]),
                         lambda children: st.lists(children, max_size=3)
                         | st.dictionaries(st.sampled_from(["a", "b"]), children, max_size=2),
                         max_leaves=8)
near_bytes = st.sampled_from([b"x", b"y", b"", b"1", b"\xff", "é".encode(), b"xy"])
near_keys = st.none() | near_bytes
near_headers = st.lists(st.tuples(st.sampled_from(["h", "s", "t"]), st.none() | near_bytes), max_size=4)


def tables(scalars: list[Any], numeric: bool) -> st.SearchStrategy[dict[str, Any]]:
    operand = st.sampled_from(scalars)
    operators: dict[str, st.SearchStrategy[Any]] = {
        "exists": st.just(True), "prefix": st.sampled_from(TEXT), "suffix": st.sampled_from(TEXT),
        "not": operand | st.lists(operand, min_size=1, max_size=3)}
    if numeric:
        operators |= {name: st.sampled_from([-1, 0, 1, 1.5, 2]) for name in (">", ">=", "<", "<=")}
    some = st.fixed_dictionaries({}, optional=operators).filter(bool)
    return some | st.just({"exists": False})


def conditions(path: str) -> st.SearchStrategy[Any]:
    scalars, numeric = (SCALARS, True) if path.startswith("value") else (TEXT, False)
    single = st.sampled_from(scalars) | tables(scalars, numeric)
    return single | st.lists(single, min_size=1, max_size=3)


patterns = st.lists(st.sampled_from(VALUE_PATHS + META_PATHS), min_size=1, max_size=4, unique=True).flatmap(
    lambda paths: st.fixed_dictionaries({path: conditions(path) for path in paths}))


def _equal(scalar: Any, element: Any) -> bool:
    if isinstance(scalar, bool) or isinstance(element, bool):
        return type(scalar) is type(element) and scalar == element
    if isinstance(scalar, str):
        return isinstance(element, str) and element == scalar
    return type(element) in (int, float) and element == scalar


def _element_holds(table: dict[str, Any], element: Any) -> bool:
    for name, operand in table.items():
        if name == "exists":
            continue
        if name == "prefix":
            if not (isinstance(element, str) and element.startswith(operand)):
                return False
        elif name == "suffix":
            if not (isinstance(element, str) and element.endswith(operand)):
                return False
        elif name == "not":
            if any(_equal(x, element) for x in (operand if isinstance(operand, list) else [operand])):
                return False
        elif type(element) not in (int, float) or not {">": element > operand, ">=": element >= operand,
                                                          "<": element < operand, "<=": element <= operand}[name]:
            return False
    return True


def _holds(condition: Any, present: bool, candidates: list[Any]) -> bool:
    """The semantics as docs/routes.md states them, the slow way."""
    if isinstance(condition, list):
        return any(_holds(c, present, candidates) for c in condition)
    if isinstance(condition, dict):
        if "exists" in condition and condition["exists"] != present:
            return False
        if len(condition) == 1 and "exists" in condition:
            return True
        return present and any(_element_holds(condition, e) for e in candidates)
    return present and any(_equal(condition, e) for e in candidates)


def _text(raw: bytes | None) -> Any:
    try:
        return (raw or b"").decode("utf-8")
    except UnicodeDecodeError:
        return NOT_TEXT


def _field(path: str, key: bytes | None, headers: list[tuple[str, bytes | None]], value: Any) -> tuple[bool, list[Any]]:
    if path == "key":
        return (False, []) if key is None else (True, [_text(key)])
    if path.startswith("headers."):
        found = [_text(raw) for name, raw in headers if name == path[len("headers."):]]
        return bool(found), found
    for part in path.split(".")[1:]:
        if not isinstance(value, dict) or part not in value:
            return False, []
        value = value[part]
    return True, value if isinstance(value, list) else [value]


def oracle(spec: dict[str, Any], key: bytes | None, headers: list[tuple[str, bytes | None]], value: Any) -> bool:
    return all(_holds(condition, *_field(path, key, headers, value)) for path, condition in spec.items())


@PROPERTY_SETTINGS
@given(patterns, near_keys, near_headers, near_json)
def test_matches_agrees_with_the_semantics_stated_slowly(spec: dict[str, Any], key: bytes | None,
                                                         headers: list[tuple[str, bytes | None]], value: Any) -> None:
    try:
        match = compile_match(spec)
    except MatchError as exc:  # only what the rules refuse
        assert "exists = false cannot be combined" in str(exc)
        return
    expected = oracle(spec, key, headers, value)
    assert match.matches(key, headers, value) is expected
    assert (match.explain(key, headers, value) is None) is expected
    assert (match.select_meta(key, headers) and match.select_value(value)) is expected
    assert match_from_json(match.to_json()).matches(key, headers, value) is expected


@PROPERTY_SETTINGS
@given(patterns, any_keys, any_headers, any_json)
def test_no_key_header_or_value_crashes_matching(spec: dict[str, Any], key: bytes | None,
                                                 headers: list[tuple[str, bytes | None]], value: Any) -> None:
    try:
        match = compile_match(spec)
    except MatchError:
        return
    result = match.matches(key, headers, value)
    reason = match.explain(key, headers, value)
    assert isinstance(result, bool)
    assert (reason is None) is result
    assert reason is None or ("\n" not in reason and len(reason) < 1000)


@PROPERTY_SETTINGS
@given(any_json)
def test_no_pattern_crashes_compiling(spec: Any) -> None:
    try:
        match = compile_match(spec)
    except MatchError as exc:
        assert "\n" not in str(exc)
        return
    assert json.loads(match.to_json()) == spec
