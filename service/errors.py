"""Errors the delivery path decides on: three kinds of failure, and who is fenced.

Every failure that reaches the delivery logic is translated at the edge of the
library it comes from, in one place per library: httpx and GraphQL results in
`service.dagster`, aiokafka errors (by their own `retriable` flag) in
`service.kafka.errors`. The rest of the code decides on these classes only:

    KafkaDagsterError
    ├── TransientError          retry with backoff and jitter; consumption pauses; never dead-lettered
    │   ├── DagsterUnavailable  connection refused or reset, timeout, HTTP 5xx and 408
    │   │   └── RateLimited     HTTP 429; waits at least its Retry-After
    │   ├── DagsterError        Dagster answered PythonError (it may pass; ten in a row pause the route)
    │   ├── BrokerUnavailable   a retriable Kafka error, or the broker cannot be reached
    │   └── RegistryUnavailable the schema registry cannot be reached, timed out, or answered 5xx/408/429
    ├── RecordError             the record itself is bad: that record alone goes to the DLQ
    │   ├── DecodeError         stage `decode`
    │   │   ├── NullValue       the value is null (a tombstone)
    │   │   ├── NotUtf8         the value is not UTF-8
    │   │   ├── InvalidJson     the value is UTF-8 but not JSON
    │   │   ├── BadFraming      no Confluent wire-format frame (magic byte, schema id) where one is required
    │   │   ├── UnknownSchema   the registry has no schema of the record's id (HTTP 404), or not of its format
    │   │   └── UndecodableValue the bytes do not decode with their writer schema
    │   ├── ValidationError     stage `validate`
    │   │   ├── MessageTooLarge the record is over the size bound
    │   │   ├── JsonTooDeep     the value nests deeper than the depth bound
    │   │   ├── TooManyKeys     the value has more object keys than the bound
    │   │   ├── SchemaViolation the value breaks the route's JSON Schema
    │   │   ├── PartitionKeyMissing  the record has no partition key where the route's partition_key looks
    │   │   └── PartitionKeyNotFound the key is not a partition of the target's (static or time-window) definition
    │   └── NoRouteMatched      stage `route`: no route matches it and its topic dead-letters those
    ├── RouteError              the route cannot launch anything now: it pauses and retries the
    │   │                       same batch with a capped backoff; nothing is dead-lettered
    │   │                       (unless the route sets on_launch_rejected = "dead_letter")
    │   ├── LaunchRejected      a LaunchRunResult error member (PipelineNotFoundError, ...)
    │   ├── Unauthorized        HTTP 401/403 or UnauthorizedError: the token is refused
    │   ├── RegistryRefused     the schema registry answered 401/403 (`schema_registry_auth`)
    │   │                       or another 4xx than 404/408/429 (`schema_registry_rejected`)
    │   └── RequestRejected     HTTP 400/404 and other 4xx, GraphQL errors: a wrong URL or query
    ├── BatchTooLarge           HTTP 413: relaunch the batch with its offset range only
    ├── KafkaRejected           a Kafka error that waiting will not fix (e.g. a record too large
    │   │                       for the broker): pauses the partition with a reason
    │   └── KafkaRefused        the broker refused the worker itself: a failure of the system, never
    │       │                   of the data; the routes it touches pause and resume once it is fixed
    │       ├── KafkaNotAuthenticated  SASL credentials refused (`kafka_auth`)
    │       └── KafkaNotAuthorized     an ACL denies an operation (`kafka_authorization`), naming it
    ├── Fenced                  this worker no longer owns the partition in the current generation
    └── ConfigurationError      a bad setting or routes file: fail at start
"""

from __future__ import annotations


class KafkaDagsterError(Exception):
    """Base of every error kafka-dagster raises on purpose."""


class TransientError(KafkaDagsterError):
    """A failure that may go away on its own: retry, do not dead-letter."""

    retry_after_s: float | None = None


class DagsterUnavailable(TransientError):
    """Dagster's GraphQL endpoint could not be reached, timed out, or answered 5xx/408."""

    def __init__(self, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status  # set when the webserver answered (it is up, something behind it is not)


class RateLimited(DagsterUnavailable):
    """Dagster (or a proxy in front of it) answered HTTP 429."""

    def __init__(self, message: str, retry_after_s: float | None) -> None:
        super().__init__(message, 429)
        self.retry_after_s = retry_after_s


class DagsterError(TransientError):
    """Dagster answered a query or launch with PythonError: its own trouble, which may pass."""

    def __init__(self, typename: str, message: str) -> None:
        super().__init__(f"{typename}: {message}")
        self.typename = typename


class BrokerUnavailable(TransientError):
    """The Kafka broker could not be reached, or answered a retriable error."""


class RegistryUnavailable(TransientError):
    """The schema registry could not be reached, timed out, or answered 5xx, 408 or 429."""


class RecordError(KafkaDagsterError):
    """The record itself cannot be delivered: dead-letter it alone; never retried."""

    stage = "validate"


class DecodeError(RecordError):
    """The record's value is not decodable (not UTF-8, not JSON, null)."""

    stage = "decode"


class ValidationError(RecordError):
    """The decoded value breaks its route's schema or an input bound."""

    stage = "validate"


class NullValue(DecodeError):
    """The record has no value."""


class NotUtf8(DecodeError):
    """The value's bytes are not UTF-8."""


class InvalidJson(DecodeError):
    """The value is UTF-8 text but not JSON."""


class BadFraming(DecodeError):
    """The value (or key) has no Confluent wire-format frame where its route's format needs one."""


class UnknownSchema(DecodeError):
    """The registry has no schema of the record's id or GUID, or one of another format than the route's."""


class UndecodableValue(DecodeError):
    """The bytes after the frame do not decode with their writer schema (or break a JSON Schema)."""


class MessageTooLarge(ValidationError):
    """The record is larger than `KAFKA_DAGSTER_MAX_MESSAGE_BYTES`."""


class JsonTooDeep(ValidationError):
    """The value nests objects and arrays deeper than `KAFKA_DAGSTER_MAX_JSON_DEPTH`."""


class TooManyKeys(ValidationError):
    """The value holds more object keys, all levels together, than `KAFKA_DAGSTER_MAX_JSON_KEYS`."""


class SchemaViolation(ValidationError):
    """The value does not conform to the route's JSON Schema."""


class PartitionKeyMissing(ValidationError):
    """The record has no usable partition key where the route's `partition_key` looks."""


class PartitionKeyNotFound(ValidationError):
    """The record's partition key is not a partition of the target's partitions definition."""


class NoRouteMatched(RecordError):
    """No route of the record's topic matches it, and the topic dead-letters such records."""

    stage = "route"


class RouteError(KafkaDagsterError):
    """The route cannot launch anything until something outside the worker is fixed.

    `reason` is a metric label from a small fixed set; `hint` says what to fix.
    """

    reason = "launch_rejected"
    typename = "LaunchRejected"
    hint = "check the route's job and the Dagster deployment"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


CODE_LOCATION_ERROR = "code_location_error"  # the reason of a route whose code location failed to load
CODE_LOCATION_HINT = "fix the code location (its load error is in the Dagster UI) and reload it"

# The reason label and the fix for each LaunchRunResult error member.
LAUNCH_RESULT_REASONS: dict[str, tuple[str, str]] = {
    "PipelineNotFoundError": ("job_not_found", "deploy the job, or fix the route's job/location"),
    "RunConfigValidationInvalid": ("run_config_invalid",
                                   "the job's config no longer accepts the batch: check the route's batch_op"),
    "InvalidSubsetError": ("launch_rejected", "check the route's job or asset selection"),
    "UnauthorizedError": ("unauthorized", "check DAGSTER_API_TOKEN"),
    "PythonError": ("dagster_error", "Dagster keeps failing to launch: see the webserver's log"),
}


class LaunchRejected(RouteError):
    """Dagster answered `launchRun` with an error member of `LaunchRunResult`."""

    def __init__(self, typename: str, message: str, hint: str | None = None, reason: str | None = None) -> None:
        default_reason, default_hint = LAUNCH_RESULT_REASONS.get(typename, ("launch_rejected", RouteError.hint))
        super().__init__(f"{typename}: {message}", hint or default_hint)
        self.typename = typename
        self.reason = reason or default_reason


class Unauthorized(RouteError):
    """Dagster refused the request's credentials."""

    reason = "unauthorized"
    typename = "UnauthorizedError"
    hint = "check DAGSTER_API_TOKEN"


class RegistryRefused(RouteError):
    """The schema registry refused the worker's requests: credentials (401/403) or another 4xx."""

    reason = "schema_registry_auth"
    typename = "RegistryRefused"
    hint = "check KAFKA_DAGSTER_SCHEMA_REGISTRY_USERNAME and _PASSWORD"

    def __init__(self, message: str, http_status: int, hint: str | None = None) -> None:
        auth = http_status in (401, 403)
        super().__init__(message, hint or (None if auth else "check KAFKA_DAGSTER_SCHEMA_REGISTRY_URL (the "
                         "registry's Confluent-compatible API, e.g. .../apis/ccompat/v7)"))
        if not auth:
            self.reason = "schema_registry_rejected"
        self.http_status = http_status


class RequestRejected(RouteError):
    """Dagster answered a 4xx other than 401/403/408/413/429, or a GraphQL error."""

    reason = "bad_request"
    typename = "RequestRejected"
    hint = "check DAGSTER_GRAPHQL_URL (it must end in /graphql)"


class BatchTooLarge(KafkaDagsterError):
    """The launch request was refused for its size (HTTP 413)."""


class KafkaRejected(KafkaDagsterError):
    """Kafka refused a request in a way that waiting alone will not fix."""


KAFKA_AUTH = "kafka_auth"  # pause reason: the broker refused the worker's credentials
KAFKA_AUTHORIZATION = "kafka_authorization"  # pause reason: an ACL denies the worker an operation


class KafkaRefused(KafkaRejected):
    """The broker refused the worker's own access: credentials or an ACL. `reason` is the pause reason,
    `hint` the fix; `resource` names what was refused (e.g. "topic orders", "group kafka-dagster")."""

    reason = KAFKA_AUTHORIZATION

    def __init__(self, message: str, hint: str, resource: str) -> None:
        super().__init__(message)
        self.hint = hint
        self.resource = resource


class KafkaNotAuthenticated(KafkaRefused):
    """The broker refused the worker's SASL credentials (revoked, changed, or never valid)."""

    reason = KAFKA_AUTH


class KafkaNotAuthorized(KafkaRefused):
    """The broker's authorizer denies the worker's principal an operation on a topic, group or cluster."""

    reason = KAFKA_AUTHORIZATION


class Fenced(KafkaDagsterError):
    """The group coordinator says this worker no longer owns the partition."""


class ConfigurationError(KafkaDagsterError):
    """A setting or the routes file is invalid; the message names which."""
