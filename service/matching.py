"""Route match patterns: which of its topic's records a route takes.

A route's `match` is a table of path = condition, in the spirit of EventBridge
event patterns; every condition must hold. Paths are `key`, `headers.<name>`,
`value` and `value.<a>.<b>...`. A condition is a scalar (equality, JSON types
kept apart), a list (any of its elements), or a table of operators (`exists`,
`prefix`, `suffix`, `not`, `>`, `>=`, `<`, `<=`, all of which must hold). On a
JSON array, and on a header that repeats, a condition holds if it holds for any
element.

`compile_match` validates the whole pattern up front (a `MatchError` is one line
naming the path) and turns it into closures, so matching a record costs a few
hundred nanoseconds (`python -m bench.matching`). Standard library only: the
Dagster code location imports this module too.
"""

from __future__ import annotations

import copy
import json
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

OPERATORS = ("exists", "prefix", "suffix", "not", ">", ">=", "<", "<=")
COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
PATHS = "key, headers.<name>, value, value.<field>..."

Headers = Sequence[tuple[str, bytes | None]]
Predicate = Callable[[Any], bool]
Bound = tuple[str, Any]  # (">", 100): greater than 100
Interval = tuple[Any, bool, Any, bool]  # low, low excluded, high, high excluded


class MatchError(ValueError):
    """A match pattern that cannot be compiled; the message is one line naming the path and the problem."""


class _Missing:
    """A path with nothing at its end (no such key or header, or a path through a non-object)."""

    def __repr__(self) -> str:
        return "missing"


MISSING: Any = _Missing()


class _NotText:
    """Key or header bytes that are not UTF-8: never equal to a string, but present."""

    __slots__ = ("raw",)

    def __init__(self, raw: object) -> None:
        self.raw = raw


class _Occurrences(list[Any]):
    """Every value of a header that occurs more than once."""


def _text(raw: object) -> Any:
    if raw is None:
        return ""
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return _NotText(raw)
    return raw if isinstance(raw, str) else _NotText(raw)


NUMBER_TYPES = frozenset({int, float})  # JSON numbers; bool is not one


def _is_number(value: object) -> bool:
    return type(value) in NUMBER_TYPES


# -- describing values and conditions in words -----------------------------------


def _render(value: Any, depth: int = 0) -> str:
    """A short, TOML-flavoured rendering of a field's value for `explain`."""
    if isinstance(value, _NotText):
        return f"non-UTF-8 bytes {bytes(value.raw)[:16]!r}" if isinstance(value.raw, bytes | bytearray | memoryview) \
            else f"non-text {type(value.raw).__name__}"
    if isinstance(value, _Occurrences):
        return " and ".join(_render(item, depth) for item in value[:4]) + (" and more" if len(value) > 4 else "")
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, list):
        if depth >= 2 and value:
            return "[...]"
        items = [_render(item, depth + 1) for item in value[:4]]
        return "[" + ", ".join(items + (["..."] if len(value) > 4 else [])) + "]"
    if isinstance(value, dict):
        if depth >= 2 and value:
            return "{...}"
        items = [f"{_render(str(k), depth + 1)}: {_render(v, depth + 1)}" for k, v in list(value.items())[:4]]
        return "{" + ", ".join(items + (["..."] if len(value) > 4 else [])) + "}"
    return repr(value)


# -- compiling ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Test:
    """A compiled condition, without its path."""

    field: Predicate  # the field (MISSING, a value, or _Occurrences) -> the condition holds
    element: Predicate | None  # one element -> holds; None when the condition is about the field as a whole
    words: str  # the condition in words, to follow "not" or "none is"
    strings: frozenset[str] | None = None  # the element test is `in strings`: `_check` inlines it
    interval: Interval | None = None  # the element test is a number in this interval: `_check` inlines it


@dataclass(frozen=True)
class _Condition:
    """One `path = condition` of a pattern, compiled."""

    path: str
    getter: Callable[..., Any]  # (key, headers) or (value) -> the field
    test: _Test
    check: Callable[..., bool]  # getter and test in one closure: what `matches` calls

    def explain(self, *source: Any) -> str | None:
        found = self.getter(*source)
        if self.test.field(found):
            return None
        if found is MISSING:
            return f"{self.path} is missing"
        if self.test.element is not None and isinstance(found, list):
            return f"{self.path} is {_render(found)}: none is {self.test.words}"
        return f"{self.path} is {_render(found)}, not {self.test.words}"


def _elementwise(pred: Predicate, words: str) -> _Test:
    return _Test(_on_elements(pred), pred, words)


class _Compiler:
    """Validates the condition of one path and builds its predicates."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.text_only = not path.startswith("value")

    def error(self, problem: str) -> MatchError:
        return MatchError(f"{self.path!r}: {problem}")

    def condition(self, condition: Any) -> _Test:
        if isinstance(condition, list):
            return self.any_of(condition)
        if isinstance(condition, dict):
            return self.table(condition)
        return self.equals([condition])

    def any_of(self, conditions: list[Any]) -> _Test:
        if not conditions:
            raise self.error("empty list (a list means any of its elements)")
        scalars: list[Any] = []
        parts: list[_Test] = []
        for item in conditions:
            if isinstance(item, list):
                raise self.error("nested list (a list's elements are scalars or operator tables)")
            if isinstance(item, dict):
                parts.append(self.table(item))
            else:
                scalars.append(item)
        if scalars:
            parts.insert(0, self.equals(scalars))
        if len(parts) == 1:
            return parts[0]
        words = "one of " + ", ".join([_render(s) for s in scalars] + [part.words for part in parts[bool(scalars):]])
        preds = [part.element for part in parts if part.element is not None]
        if len(preds) == len(parts):
            return _elementwise(_any(preds), words)
        tests = [part.field for part in parts]
        return _Test(lambda found: any(test(found) for test in tests), None, words)

    def equals(self, scalars: list[Any]) -> _Test:
        pred, words = self.equality(scalars)
        strings = frozenset(scalars) if all(isinstance(s, str) for s in scalars) else None
        return _Test(_on_elements(pred), pred, words, strings=strings)

    def equality(self, scalars: list[Any]) -> tuple[Predicate, str]:
        """An element predicate: equal to one of `scalars`, JSON types kept apart."""
        for scalar in scalars:
            self.scalar(scalar)
        strings = frozenset(s for s in scalars if isinstance(s, str))
        numbers = frozenset(s for s in scalars if _is_number(s))
        bools = frozenset(s for s in scalars if isinstance(s, bool))
        words = ", ".join(_render(s) for s in scalars)
        if len(scalars) > 1:
            words = "one of " + words
        if not numbers and not bools:
            if len(strings) == 1:
                [only] = strings
                return (lambda v: v == only if isinstance(v, str) else False), words
            return (lambda v: v in strings if isinstance(v, str) else False), words

        def equals(v: Any) -> bool:
            if isinstance(v, str):
                return v in strings
            if type(v) is bool:
                return v in bools
            return v in numbers if type(v) in NUMBER_TYPES else False

        return equals, words

    def scalar(self, value: Any) -> None:
        role = "a value to compare with"
        if value is None:
            raise self.error(f"null is not {role} (a missing field is {{ exists = false }})")
        if not (isinstance(value, str) or type(value) in (bool, int, float)):
            kind = "a list" if isinstance(value, list) else "a table" if isinstance(value, dict) \
                else type(value).__name__
            raise self.error(f"{kind} is not {role} (use a string, number or boolean)")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(f"{value} is not {role} (JSON numbers are finite)")
        if self.text_only and not isinstance(value, str):
            raise self.error(f"{_render(value)} can never equal a {self.kind()}, which is text: quote it")

    def kind(self) -> str:
        return "key" if self.path == "key" else "header"

    def table(self, table: dict[str, Any]) -> _Test:
        """The conjunction of an operator table's operators."""
        if not table:
            raise self.error("empty operator table")
        exists: bool | None = None
        preds: list[Predicate] = []
        words: list[str] = []
        bounds: list[Bound] = []
        for name, operand in table.items():
            if name == "exists":
                if not isinstance(operand, bool):
                    raise self.error(f"exists takes true or false, not {_render(operand)}")
                exists = operand
            elif name in ("prefix", "suffix"):
                if not isinstance(operand, str):
                    raise self.error(f"{name} takes a string, not {_render(operand)}")
                preds.append(_affix(name, operand))
                words.append(f"a string {'starting' if name == 'prefix' else 'ending'} with {_render(operand)}")
            elif name == "not":
                excluded = operand if isinstance(operand, list) else [operand]
                if not excluded:
                    raise self.error("not takes a scalar or a non-empty list of scalars, not an empty list")
                equals, _ = self.equality(excluded)
                preds.append(_negate(equals))
                words.append(f"anything but {', '.join(_render(s) for s in excluded)}")
            elif name in COMPARISONS:
                if not _is_number(operand) or (isinstance(operand, float) and not math.isfinite(operand)):
                    raise self.error(f"{name} takes a finite number, not {_render(operand)}")
                if self.text_only:
                    raise self.error(f"{name} compares numbers, and a {self.kind()} is text")
                bounds.append((name, operand))
            else:
                raise self.error(f"unknown operator {name!r} (operators: {', '.join(OPERATORS)})")
        if bounds:
            preds.append(_numeric(bounds))
            words.append("a number " + " and ".join(f"{name} {_render(n)}" for name, n in table.items()
                                                     if name in COMPARISONS))
        if exists is False:
            if preds:
                raise self.error("exists = false cannot be combined with other operators (a missing field "
                                 "satisfies none of them)")
            return _Test(lambda found: found is MISSING, None, "missing")
        if not preds:
            return _Test(lambda found: found is not MISSING, None, "present")
        if len(preds) == 1:
            return _Test(_on_elements(preds[0]), preds[0], " and ".join(words), interval=_interval(bounds))
        return _elementwise(_all(preds), " and ".join(words))


def _negate(pred: Predicate) -> Predicate:
    return lambda v: not pred(v)


def _affix(name: str, operand: str) -> Predicate:
    if name == "prefix":
        return lambda v: v.startswith(operand) if isinstance(v, str) else False
    return lambda v: v.endswith(operand) if isinstance(v, str) else False


def _numeric(bounds: list[Bound]) -> Predicate:
    compares = [(COMPARISONS[name], n) for name, n in bounds]
    return lambda v: all(compare(v, n) for compare, n in compares) if type(v) in NUMBER_TYPES else False


def _interval(bounds: list[Bound]) -> Interval | None:
    """The bounds as one interval, when they are at most one lower and one upper bound."""
    lower = [(n, name == ">") for name, n in bounds if name[0] == ">"]
    upper = [(n, name == "<") for name, n in bounds if name[0] == "<"]
    if not bounds or len(lower) > 1 or len(upper) > 1:
        return None
    low, low_excluded = lower[0] if lower else (-math.inf, False)
    high, high_excluded = upper[0] if upper else (math.inf, False)
    return low, low_excluded, high, high_excluded


def _all(preds: list[Predicate]) -> Predicate:
    def every(v: Any) -> bool:
        for pred in preds:
            if not pred(v):
                return False
        return True

    return every


def _any(preds: list[Predicate]) -> Predicate:
    def some(v: Any) -> bool:
        for pred in preds:
            if pred(v):
                return True
        return False

    return some


def _on_elements(pred: Predicate) -> Predicate:
    """A field test from an element predicate: a missing field fails, a list holds if any element does."""

    def test(found: Any) -> bool:
        if isinstance(found, list):
            return any(map(pred, found))
        return found is not MISSING and pred(found)

    return test


def _getter(path: str) -> Callable[..., Any]:
    if path == "key":
        return lambda key, headers: MISSING if key is None else _text(key)
    if path.startswith("headers."):
        name = path[len("headers."):]

        def header(key: Any, headers: Headers) -> Any:
            found = [_text(raw) for header_name, raw in headers or () if header_name == name]
            if not found:
                return MISSING
            return found[0] if len(found) == 1 else _Occurrences(found)

        return header
    if path == "value":
        return lambda value: value
    parts = path.split(".")[1:]
    if len(parts) == 1:
        [part] = parts
        return lambda value: value.get(part, MISSING) if isinstance(value, dict) else MISSING

    def nested(value: Any) -> Any:
        for part in parts:
            if not isinstance(value, dict):
                return MISSING
            value = value.get(part, MISSING)
        return value

    return nested


def _check(path: str, getter: Callable[..., Any], test: _Test) -> Callable[..., bool]:
    """`test` of the field `getter` finds, in one closure where the path is one level into the value."""
    pred = test.element
    field_test = test.field
    if pred is not None and not path.startswith("value"):
        return _meta_check(path, pred, test.strings)
    if pred is None or not path.startswith("value.") or "." in path[len("value."):]:
        if path.startswith("value"):
            return lambda value: field_test(getter(value))
        return lambda key, headers: field_test(getter(key, headers))
    part = path[len("value."):]
    if test.strings is not None:
        strings = test.strings

        def among(value: Any) -> bool:
            if isinstance(value, dict):
                found = value.get(part)
                if isinstance(found, str):
                    return found in strings
                if isinstance(found, list):
                    return any(map(pred, found))
            return False

        return among
    if test.interval is not None:
        low, low_excluded, high, high_excluded = test.interval

        def within(value: Any) -> bool:
            if isinstance(value, dict):
                found = value.get(part)
                if type(found) in NUMBER_TYPES:
                    return ((found > low) if low_excluded else (found >= low)) and \
                        ((found < high) if high_excluded else (found <= high))
                if isinstance(found, list):
                    return any(map(pred, found))
            return False

        return within

    def check(value: Any) -> bool:
        if isinstance(value, dict):
            found = value.get(part, MISSING)
            if isinstance(found, list):
                return any(map(pred, found))
            return found is not MISSING and pred(found)
        return False

    return check


def _meta_check(path: str, pred: Predicate, strings: frozenset[str] | None) -> Callable[..., bool]:
    """An element test of the key or of any occurrence of a header; bytes are compared undecoded where they can be."""
    encoded = frozenset(_utf8(strings)) if strings is not None else frozenset()
    if path == "key":

        def key_check(key: bytes | None, headers: Headers) -> bool:
            if strings is not None and type(key) is bytes:
                return key in encoded
            return key is not None and pred(_text(key))

        return key_check
    name = path[len("headers."):]

    def header_check(key: bytes | None, headers: Headers) -> bool:
        for header_name, raw in headers or ():
            if header_name == name:
                if strings is not None and type(raw) is bytes:
                    if raw in encoded:
                        return True
                elif pred(_text(raw)):
                    return True
        return False

    return header_check


def _utf8(strings: frozenset[str]) -> list[bytes]:
    """The UTF-8 encodings of `strings` (a string with a lone surrogate has none, and no bytes decode to it)."""
    encoded = []
    for text in strings:
        try:
            encoded.append(text.encode("utf-8"))
        except UnicodeEncodeError:
            continue
    return encoded


def _check_path(path: Any) -> str:
    if not isinstance(path, str):
        raise MatchError(f"match: a path is a string, not {_render(path)}")
    if path in ("key", "value"):
        return path
    head, _, rest = path.partition(".")
    if head == "headers" and rest:
        return path
    if head == "value" and rest and all(rest.split(".")):
        return path
    raise MatchError(f"{path!r}: unknown path (paths: {PATHS})")


# -- the public face -----------------------------------------------------------------


def _every_meta(conditions: Sequence[_Condition]) -> Callable[[bytes | None, Headers], bool]:
    checks = [c.check for c in conditions]
    if not checks:
        return lambda key, headers: True
    if len(checks) == 1:
        return checks[0]

    def every(key: bytes | None, headers: Headers) -> bool:
        for check in checks:
            if not check(key, headers):
                return False
        return True

    return every


def _every_value(conditions: Sequence[_Condition]) -> Callable[[Any], bool]:
    checks = [c.check for c in conditions]
    if not checks:
        return lambda value: True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda value: first(value) and second(value)
    if len(checks) == 3:
        first, second, third = checks
        return lambda value: first(value) and second(value) and third(value)

    def every(value: Any) -> bool:
        for check in checks:
            if not check(value):
                return False
        return True

    return every


@dataclass(frozen=True, eq=False)
class Match:
    """A compiled match pattern: `spec` as declared, and the closures that test a record against it.

    The key and header conditions (`select_meta`) can be checked before the
    value is decoded; `needs_value` says whether the value matters at all.
    Two matches are equal when their `to_json` is (Python's `1 == True` would
    make `{"value.x" = 1}` equal `{"value.x" = true}`).
    """

    spec: dict[str, Any]
    needs_value: bool
    _conditions: tuple[_Condition, ...] = field(repr=False)
    _meta: Callable[[bytes | None, Headers], bool] = field(repr=False)
    _value: Callable[[Any], bool] = field(repr=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Match) and other.to_json() == self.to_json()

    def __hash__(self) -> int:
        return hash(self.to_json())

    @property
    def needs_meta(self) -> bool:
        """True when a key or header condition decides too (`select_meta` is not always True)."""
        return any(not condition.path.startswith("value") for condition in self._conditions)

    def select_meta(self, key: bytes | None, headers: Headers) -> bool:
        """The key and header conditions alone (True if there are none)."""
        return self._meta(key, headers)

    def select_headers(self, headers: Headers) -> bool:
        """The header conditions alone (True if there are none): what decides for a record whose key cannot
        be read (a framed key that does not decode)."""
        return self.explain_headers(headers) is None

    def explain_headers(self, headers: Headers) -> str | None:
        """None when the header conditions hold; else the first failing one in words."""
        for condition in self._conditions:
            if condition.path.startswith("headers."):
                reason = condition.explain(None, headers)
                if reason is not None:
                    return reason
        return None

    def select_value(self, value: Any) -> bool:
        """The value conditions alone, on the decoded JSON value (True if there are none)."""
        return self._value(value)

    def matches(self, key: bytes | None, headers: Headers, value: Any) -> bool:
        """Every condition holds for this record."""
        return self._meta(key, headers) and self._value(value)

    def explain(self, key: bytes | None, headers: Headers, value: Any) -> str | None:
        """None when the record matches; else the first failing condition in words."""
        for condition in self._conditions:
            source = (value,) if condition.path.startswith("value") else (key, headers)
            reason = condition.explain(*source)
            if reason is not None:
                return reason
        return None

    def to_json(self) -> str:
        """The spec as compact JSON with sorted keys (`match_from_json` reads it back)."""
        return json.dumps(self.spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def compile_match(spec: Any) -> Match:
    """Validate a `match` table and compile it; `MatchError` names the first path that is wrong."""
    if not isinstance(spec, dict):
        raise MatchError(f"match: a table of path = condition, not {_render(spec)}")
    if not spec:
        raise MatchError("match: empty table (leave `match` out to take every record)")
    conditions = []
    for path, condition in spec.items():
        path = _check_path(path)
        test = _Compiler(path).condition(condition)
        getter = _getter(path)
        conditions.append(_Condition(path, getter, test, _check(path, getter, test)))
    on_value = [c for c in conditions if c.path.startswith("value")]
    on_meta = [c for c in conditions if not c.path.startswith("value")]
    return Match(copy.deepcopy(spec), bool(on_value), tuple(conditions), _every_meta(on_meta),
                 _every_value(on_value))


def match_from_json(text: str) -> Match:
    """The `Match` that `Match.to_json` wrote."""
    try:
        spec = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise MatchError(f"match: not JSON ({exc})") from None
    return compile_match(spec)
