"""Errors the delivery path decides on.

Every failure that reaches the delivery logic is one of two kinds, translated
at the edge where it happens (httpx in `dagster_client`, aiokafka in `dlq` and
`kafka`):

    KafkaDagsterError
    ├── TransientError          retry with backoff; never dead-lettered
    │   └── DagsterUnavailable  connection refused, timeout, HTTP 5xx
    ├── PermanentError          dead-letter the affected records; never retried
    │   ├── DecodeError         stage `decode`
    │   │   ├── NullValue       the value is null (a tombstone)
    │   │   ├── NotUtf8         the value is not UTF-8
    │   │   └── InvalidJson     the value is UTF-8 but not JSON
    │   ├── ValidationError     stage `validate`
    │   │   ├── MessageTooLarge the record is over the size bound
    │   │   ├── JsonTooDeep     the value nests deeper than the depth bound
    │   │   ├── TooManyKeys     the value has more object keys than the bound
    │   │   └── SchemaViolation the value breaks the route's JSON Schema
    │   └── LaunchRejected      Dagster refused the run (stage `launch`)
    └── ConfigurationError      a bad setting or routes file: fail at start
"""

from __future__ import annotations


class KafkaDagsterError(Exception):
    """Base of every error kafka-dagster raises on purpose."""


class TransientError(KafkaDagsterError):
    """A failure that may go away on its own: retry, do not dead-letter."""


class DagsterUnavailable(TransientError):
    """Dagster's GraphQL endpoint could not be reached or answered 5xx."""


class PermanentError(KafkaDagsterError):
    """A failure that retrying cannot fix: dead-letter the records involved."""

    stage = "launch"


class DecodeError(PermanentError):
    """The record's value is not decodable (not UTF-8, not JSON, null)."""

    stage = "decode"


class ValidationError(PermanentError):
    """The decoded value breaks its route's schema or an input bound."""

    stage = "validate"


class NullValue(DecodeError):
    """The record has no value."""


class NotUtf8(DecodeError):
    """The value's bytes are not UTF-8."""


class InvalidJson(DecodeError):
    """The value is UTF-8 text but not JSON."""


class MessageTooLarge(ValidationError):
    """The record is larger than `KAFKA_DAGSTER_MAX_MESSAGE_BYTES`."""


class JsonTooDeep(ValidationError):
    """The value nests objects and arrays deeper than `KAFKA_DAGSTER_MAX_JSON_DEPTH`."""


class TooManyKeys(ValidationError):
    """The value holds more object keys, all levels together, than `KAFKA_DAGSTER_MAX_JSON_KEYS`."""


class SchemaViolation(ValidationError):
    """The value does not conform to the route's JSON Schema."""


class LaunchRejected(PermanentError):
    """Dagster answered `launchRun` with a result that cannot succeed on retry."""

    stage = "launch"

    def __init__(self, typename: str, message: str) -> None:
        super().__init__(f"{typename}: {message}")
        self.typename = typename


class ConfigurationError(KafkaDagsterError):
    """A setting or the routes file is invalid; the message names which."""
