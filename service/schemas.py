r"""A route's JSON Schema, compiled: a fast verdict, and jsonschema's words for a rejection.

jsonschema-rs decides whether a value is valid in about a microsecond; the
`jsonschema` package takes some 30. Valid values, nearly all of them, get the
fast verdict alone. A rejected value is explained by `jsonschema` (its
`best_match` error, path and message), so the DLQ reason reads as it always
has, and `jsonschema` has the last word: a value it finds no error in passes.

Both validate with the draft that `jsonschema` picks from the schema's
`$schema` (2020-12 when absent or unknown). Where the two would judge a value
differently, jsonschema-rs is given `jsonschema`'s rule:
- `pattern` is Python's `re.search`, as in `jsonschema` (jsonschema-rs speaks
  ECMA-262, where `\d`, `\w`, `.` and `$` mean other things);
- `multipleOf` is `jsonschema`'s own check (jsonschema-rs accepts 0.07 as a
  multiple of 0.01; `jsonschema`'s float division does not);
- neither asserts `format`, as `jsonschema` does not without a format checker.
`jsonschema` validates alone (`fast` is None, `slow_reason` says why) a draft 3
schema, which jsonschema-rs lacks; a schema whose `patternProperties` keys use
regex syntax the two engines may read differently; and a draft 4-7 schema with
a regex that is Python's but not ECMA-262's (jsonschema-rs checks those drafts'
regexes against ECMA-262 before it compiles). jsonschema-rs never
fetches a remote `$ref` (`offline`): a schema that needs one does not compile.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Protocol

import jsonschema
import jsonschema_rs

FAST_DRAFTS: dict[type[Any], type[jsonschema_rs.Validator]] = {
    jsonschema.Draft4Validator: jsonschema_rs.Draft4Validator,
    jsonschema.Draft6Validator: jsonschema_rs.Draft6Validator,
    jsonschema.Draft7Validator: jsonschema_rs.Draft7Validator,
    jsonschema.Draft201909Validator: jsonschema_rs.Draft201909Validator,
    jsonschema.Draft202012Validator: jsonschema_rs.Draft202012Validator,
}


class SchemaValidator(Protocol):
    """What decoding needs of a validator: a verdict, and the errors behind a rejection."""

    def is_valid(self, instance: Any) -> bool: ...

    def iter_errors(self, instance: Any) -> Iterator[jsonschema.ValidationError]: ...


class _PythonPattern:
    """`pattern` as `jsonschema` checks it: `re.search` on strings, other types pass."""

    def __init__(self, parent_schema: dict[str, Any], value: str, schema_path: list[str | int]) -> None:
        self.search = re.compile(value).search

    def validate(self, instance: Any) -> None:
        if isinstance(instance, str) and not self.search(instance):
            raise ValueError("does not match the pattern")


def _multiple_of(explainer_cls: type[Any]) -> type[Any]:
    class MultipleOf:
        """`multipleOf` judged by `jsonschema` itself, with the route's draft."""

        def __init__(self, parent_schema: dict[str, Any], value: Any, schema_path: list[str | int]) -> None:
            self.is_valid = explainer_cls({"multipleOf": value}).is_valid

        def validate(self, instance: Any) -> None:
            if not self.is_valid(instance):
                raise ValueError("is not a multiple")

    return MultipleOf


PORTABLE_REGEX = re.compile(r"[^\\.$({]*")  # no escapes, dot, dollar, groups or braces: one meaning in both


def _unportable_pattern_property(schema: Any) -> str | None:
    """The first `patternProperties` key that ECMA-262 and Python's `re` may read differently, if any."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            keys = node.get("patternProperties")
            if isinstance(keys, dict):
                for key in keys:
                    if not PORTABLE_REGEX.fullmatch(key):
                        return str(key)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


class SchemaCompileError(ValueError):
    """The schema passes its metaschema but jsonschema-rs cannot build a validator from it."""


class CompiledSchema:
    """One schema, compiled once: `is_valid` is fast, `iter_errors` is jsonschema's.

    :param schema: a JSON Schema that passes its metaschema (`check_schema`).
    :raises SchemaCompileError: when jsonschema-rs refuses it, with its reason on one line.
    """

    def __init__(self, schema: dict[str, Any]) -> None:
        explainer_cls = jsonschema.validators.validator_for(schema)
        self.explainer: jsonschema.protocols.Validator = explainer_cls(schema)
        self.draft = explainer_cls.__name__.removeprefix("Draft").removesuffix("Validator")
        self.fast: jsonschema_rs.Validator | None = None
        self.slow_reason: str | None = None
        fast_cls = FAST_DRAFTS.get(explainer_cls)
        unportable = _unportable_pattern_property(schema)
        if fast_cls is None:
            self.slow_reason = f"JSON Schema draft {self.draft} has no compiled validator"
        elif unportable is not None:
            self.slow_reason = (f"patternProperties regex {unportable!r} may match differently in "
                                f"jsonschema-rs (ECMA-262) and in jsonschema (Python re)")
        else:
            keywords: dict[str, type[Any]] = {"pattern": _PythonPattern, "multipleOf": _multiple_of(explainer_cls)}
            try:
                self.fast = fast_cls(schema, validate_formats=False, offline=True, keywords=keywords)
            except jsonschema_rs.ValidationError as exc:
                if not _is_regex_format(exc):
                    raise SchemaCompileError(_one_line(str(exc))) from None
                # Drafts 4-7 check every regex as ECMA-262 before the `pattern` override applies.
                self.slow_reason = f"regex {exc.instance!r} is Python's, not ECMA-262, which jsonschema-rs requires"
            except ValueError as exc:
                raise SchemaCompileError(_one_line(str(exc))) from None

    def is_valid(self, instance: Any) -> bool:
        if self.fast is None:
            return self.explainer.is_valid(instance)
        return self.fast.is_valid(instance)

    def iter_errors(self, instance: Any) -> Iterator[jsonschema.ValidationError]:
        return self.explainer.iter_errors(instance)

    def first_error(self, instance: Any) -> jsonschema.ValidationError | None:
        """None when `instance` is valid, else the error `jsonschema` would report first."""
        return first_error(self, instance)


def first_error(validator: SchemaValidator, instance: Any) -> jsonschema.ValidationError | None:
    """The fast verdict first; only a rejection pays for `best_match`."""
    if validator.is_valid(instance):
        return None
    return jsonschema.exceptions.best_match(validator.iter_errors(instance))


def _is_regex_format(exc: jsonschema_rs.ValidationError) -> bool:
    kind = getattr(exc, "kind", None)
    return isinstance(kind, jsonschema_rs.ValidationErrorKind.Format) and kind.format == "regex"


def _one_line(message: str) -> str:
    """jsonschema-rs's reason without its multi-line context ("Failed validating ... On instance ...")."""
    head = message.split("\n\nFailed validating", 1)[0]
    return re.sub(r"\s+", " ", head).strip()
