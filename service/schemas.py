"""A route's JSON Schema, compiled: a fast verdict, and jsonschema's words for a rejection.

jsonschema-rs decides whether a value is valid in about a microsecond; the
`jsonschema` package takes some 30. Valid values, nearly all of them, get the
fast verdict alone. A rejected value is explained by `jsonschema` (its
`best_match` error, path and message), so the DLQ reason reads as it always
has, and `jsonschema` has the last word: a value it finds no error in passes.

Both validate with the draft that `jsonschema` picks from the schema's
`$schema` (2020-12 when absent or unknown). jsonschema-rs has drafts 4, 6, 7,
2019-09 and 2020-12; a draft 3 schema is validated by `jsonschema` alone.
Neither asserts `format`, as `jsonschema` does not without a format checker,
and jsonschema-rs never fetches a remote `$ref` (`offline`): a schema that
needs one does not compile.
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
        fast_cls = FAST_DRAFTS.get(explainer_cls)
        self.fast: jsonschema_rs.Validator | None = None
        if fast_cls is not None:
            try:
                self.fast = fast_cls(schema, validate_formats=False, offline=True)
            except (jsonschema_rs.ValidationError, ValueError) as exc:
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


def _one_line(message: str) -> str:
    """jsonschema-rs's reason without its multi-line context ("Failed validating ... On instance ...")."""
    head = message.split("\n\nFailed validating", 1)[0]
    return re.sub(r"\s+", " ", head).strip()
