"""aiokafka's errors as the service's own, in one place.

`map_kafka_errors` (a context manager) and `kafka_error` translate by
aiokafka's own `retriable` flag: failures that may pass (connection lost,
timeouts, leader changes) become `BrokerUnavailable` (transient), the rest
`KafkaRejected`; the rest of the code never sees aiokafka exceptions. A
refusal by the broker's authorizer (`TOPIC_AUTHORIZATION_FAILED`,
`GROUP_AUTHORIZATION_FAILED`, ...) becomes `KafkaNotAuthorized`
(`not_authorized`), naming the ACL to grant: a failure of the system, which
pauses what it touches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaError,
    KafkaTimeoutError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

from service.errors import BrokerUnavailable, KafkaNotAuthorized, KafkaRejected

# Errors aiokafka does not flag retriable that still only mean "not now": the client gave up waiting.
TRANSIENT_UNFLAGGED = (KafkaTimeoutError,)


@contextlib.contextmanager
def map_kafka_errors(what: str, needs: str | None = None) -> Iterator[None]:
    """Translate aiokafka's errors raised inside the block: retriable -> `BrokerUnavailable`, an authorizer's
    refusal -> `KafkaNotAuthorized` (`needs`: the operation the block needs, e.g. "Write"), else `KafkaRejected`."""
    try:
        yield
    except KafkaError as exc:
        raise kafka_error(what, exc, needs) from exc


def kafka_error(what: str, exc: KafkaError, needs: str | None = None) -> BrokerUnavailable | KafkaRejected:
    refused = not_authorized(what, exc, needs)
    if refused is not None:
        return refused
    if exc.retriable or isinstance(exc, TRANSIENT_UNFLAGGED):
        return BrokerUnavailable(f"{what}: {exc!r}")
    return KafkaRejected(f"{what}: {exc!r}")


# The resource kind each authorization error names, and the operation to grant when the caller names none.
AUTHORIZATION_ERRORS: dict[type[KafkaError], tuple[str, str]] = {
    TopicAuthorizationFailedError: ("topic", "Read"),
    GroupAuthorizationFailedError: ("group", "Read"),
    ClusterAuthorizationFailedError: ("cluster", "Create"),
    TransactionalIdAuthorizationFailed: ("transactional-id", "Write"),
}


def not_authorized(what: str, exc: KafkaError, needs: str | None = None) -> KafkaNotAuthorized | None:
    """`exc` as the ACL the worker lacks, or None if it is no authorization error.

    aiokafka raises some of them wrapped: a refused offset fetch as a plain
    `KafkaError` whose message is the refusal's repr; those are recognised by name.
    """
    kind = error_class = None
    for candidate, (resource_kind, default) in AUTHORIZATION_ERRORS.items():
        if isinstance(exc, candidate) or candidate.__name__ in str(exc):
            kind, error_class, needs = resource_kind, candidate, needs or default
            break
    if kind is None or error_class is None:
        return None
    names = _resource_names(exc) if isinstance(exc, error_class) else []
    resource = f"{kind} {', '.join(names)}" if names else kind
    operation = needs
    on = f"{kind} {', '.join(names)}" if names else f"the {kind}"
    hint = (f"grant {operation} on {on} to the worker's principal (kafka-acls.sh --add --allow-principal "
            f"User:<the worker's user> --operation {operation} --{kind} {names[0] if names else '<name>'})")
    if kind == "cluster":
        hint = ("grant Create on the cluster to the worker's principal, or create the worker's topics "
                "(the DLQ and <dlq>.outcomes) yourself and grant Describe and Write on them")
    return KafkaNotAuthorized(f"{what}: {error_class.message} ({resource}): the broker's ACLs deny the worker",
                              hint, resource)


def _resource_names(exc: KafkaError) -> list[str]:
    """The topic or group names aiokafka put in the error (a name, a TopicPartition, or a set of them)."""
    names: set[str] = set()
    for arg in exc.args:
        for item in arg if isinstance(arg, (set, frozenset, list)) else [arg]:
            name = getattr(item, "topic", item)  # a TopicPartition names its topic
            if isinstance(name, str) and name:
                names.add(name)
    return sorted(names)
