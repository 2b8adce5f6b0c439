"""The broker refusing the worker: each aiokafka error as the pause reason and the ACL to grant, and which routes
each refusal pauses until it ends (`service.kafka.errors`, `service.kafka.access`, `service.topic_check`)."""

from __future__ import annotations

import pytest
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
)
from aiokafka.structs import TopicPartition

from service.delivery.dead_letters import DLQ_WRITE, dlq_refusal
from service.errors import (
    KAFKA_AUTH,
    KAFKA_AUTHORIZATION,
    BrokerUnavailable,
    KafkaNotAuthenticated,
    KafkaNotAuthorized,
    KafkaRefused,
    KafkaRejected,
)
from service.kafka import kafka_error, not_authorized
from service.kafka.access import CREDENTIALS, DLQ_TOPICS, GROUP, QUIET_S, TOPICS, KafkaAccess, scope_of, topic_scope
from service.metrics import Metrics
from service.pauses import RoutePauses
from service.retry import Backoff, route_refusal
from service.routes import Route, RouteTable
from service.topic_check import TOPIC_MISSING, HiddenTopics, watch_topics
from tests.unit.factories import make_record


@pytest.mark.parametrize(("exc", "needs", "resource", "fix"), [
    (TopicAuthorizationFailedError("orders"), None, "topic orders", "--operation Read --topic orders"),
    (TopicAuthorizationFailedError({"b", "a"}), None, "topic a, b", "--operation Read --topic a"),
    (TopicAuthorizationFailedError("kafka-dagster.dlq"), "Write", "topic kafka-dagster.dlq",
     "--operation Write --topic kafka-dagster.dlq"),
    (GroupAuthorizationFailedError("workers"), None, "group workers", "--operation Read --group workers"),
    (TopicAuthorizationFailedError(TopicPartition("orders", 3)), None, "topic orders", "--topic orders"),
    # aiokafka wraps a refused offset fetch in a plain KafkaError: recognised by name, naming no topic
    (KafkaError("TopicAuthorizationFailedError()"), None, "topic", "--operation Read --topic <name>"),
])
def test_an_authorization_error_names_the_acl_to_grant(exc: KafkaError, needs: str | None, resource: str,
                                                       fix: str) -> None:
    refused = kafka_error("producing to x", exc, needs)
    assert isinstance(refused, KafkaNotAuthorized) and isinstance(refused, KafkaRejected)
    assert refused.reason == KAFKA_AUTHORIZATION and refused.resource == resource
    assert fix in refused.hint and "User:<the worker's user>" in refused.hint
    assert str(refused).startswith("producing to x: ") and "the broker's ACLs deny the worker" in str(refused)


def test_a_cluster_refusal_says_to_create_the_topics_or_grant_create() -> None:
    refused = not_authorized("creating topics", ClusterAuthorizationFailedError())
    assert refused is not None and refused.resource == "cluster" and "CLUSTER_AUTHORIZATION_FAILED" in str(refused)
    assert "grant Create on the cluster" in refused.hint and "<dlq>.outcomes" in refused.hint


@pytest.mark.parametrize(("exc", "kind"), [
    (KafkaConnectionError("reset"), BrokerUnavailable),  # retriable: waited out, no pause
    (RecordTooLargeError(), KafkaRejected),  # a refusal of the record, not of the worker
])
def test_other_errors_are_no_refusal_of_the_worker(exc: KafkaError, kind: type) -> None:
    mapped = kafka_error("producing", exc)
    assert type(mapped) is kind and not isinstance(mapped, KafkaRefused)
    assert not_authorized("producing", exc) is None


def test_a_refusal_pauses_the_route_with_its_reason_and_fix() -> None:
    refused = KafkaNotAuthenticated("a new login was refused", "restore the credentials", "credentials")
    refusal = route_refusal(refused)
    assert refusal is not None and (refusal.reason, refusal.hint) == (KAFKA_AUTH, "restore the credentials")


SIZE_FIX = "raise the DLQ topic's max.message.bytes (or the broker's message.max.bytes)"


@pytest.mark.parametrize(("exc", "offsets", "transactional", "reason", "more", "fix"), [
    (KafkaRejected("MESSAGE_TOO_LARGE"), [5], False, DLQ_WRITE, "", SIZE_FIX),
    (KafkaRejected("MESSAGE_TOO_LARGE"), [5, 6, 7], True, DLQ_WRITE, " and 2 more",
     f"{SIZE_FIX}, or grant the transactional id its ACL"),
    (KafkaNotAuthorized("no Write", "grant Write on topic dlq", "topic dlq"), [5], False, KAFKA_AUTHORIZATION, "",
     "grant Write on topic dlq"),
    (KafkaNotAuthorized("no Write", "grant Write on topic dlq", "topic dlq"), [5, 6], True, KAFKA_AUTHORIZATION,
     " and 1 more", "grant Write on topic dlq"),
])
def test_a_refused_dead_letter_pauses_its_route_with_the_reason_and_the_fix(
        exc: KafkaRejected, offsets: list[int], transactional: bool, reason: str, more: str, fix: str) -> None:
    """One wording for both writers (`DeadLetterWriter` alone, `DeadLetterCommits` in a transaction)."""
    records = [make_record(offset, partition=2) for offset in offsets]
    refusal = dlq_refusal("dlq", records, exc, transactional=transactional)
    assert refusal.reason == reason and refusal.hint == fix
    assert refusal.message == f"the DLQ topic dlq refused a dead letter of orders/2 offset 5{more}: {exc}"


@pytest.mark.parametrize(("exc", "scope"), [
    (TopicAuthorizationFailedError("orders"), topic_scope("orders")),
    (TopicAuthorizationFailedError({"a", "b"}), TOPICS),
    (KafkaError("TopicAuthorizationFailedError()"), TOPICS),
    (GroupAuthorizationFailedError("g"), GROUP),
])
def test_the_scope_of_a_refusal(exc: KafkaError, scope: str) -> None:
    refused = not_authorized("consuming", exc)
    assert refused is not None and scope_of(refused) == scope


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def access_over(*routes: Route) -> tuple[KafkaAccess, RoutePauses, list[tuple[str, bool]], Clock]:
    changes: list[tuple[str, bool]] = []
    pauses = RoutePauses(Metrics(), lambda route, paused: changes.append((route, paused)))
    clock = Clock()
    return KafkaAccess(pauses, RouteTable({r.name: r for r in routes}), clock), pauses, changes, clock


ORDERS = Route("orders", "process_orders", 10, 1000, 1.0)
REFUNDS = Route("refunds", "process_refunds", 10, 1000, 1.0)


def gauge(pauses: RoutePauses, route: str, reason: str) -> float | None:
    return pauses.metrics.registry.get_sample_value("kafka_dagster_route_paused", {"route": route, "reason": reason})


async def test_a_refused_topic_pauses_its_routes_keeps_fetching_and_resumes_when_quiet() -> None:
    access, pauses, changes, clock = access_over(ORDERS, REFUNDS)
    refused = not_authorized("consuming", TopicAuthorizationFailedError("orders"))
    assert refused is not None
    access.refuse(scope_of(refused), refused)
    assert set(pauses.paused) == {"orders"} and pauses.paused["orders"].reason == KAFKA_AUTHORIZATION
    assert "--topic orders" in pauses.status()["orders"]["fix"]
    assert gauge(pauses, "orders", KAFKA_AUTHORIZATION) == 1
    assert changes == []  # its partitions keep fetching: the next fetch tells when Read is granted
    clock.now += QUIET_S - 1
    access.accept_quiet()
    assert pauses.is_paused("orders")
    access.refuse(scope_of(refused), refused)  # refused again: the quiet time starts over
    clock.now += QUIET_S - 1
    access.accept_quiet()
    assert pauses.is_paused("orders")
    clock.now += 1
    access.accept_quiet()
    assert not pauses.paused and gauge(pauses, "orders", KAFKA_AUTHORIZATION) == 0


async def test_the_group_and_the_credentials_pause_every_route_until_each_is_accepted() -> None:
    access, pauses, changes, clock = access_over(ORDERS, REFUNDS)
    group = not_authorized("consuming", GroupAuthorizationFailedError("g"))
    assert group is not None
    login = KafkaNotAuthenticated("a new login was refused", "restore the credentials", "credentials")
    access.refuse(GROUP, group)
    access.refuse(CREDENTIALS, login)
    assert {route: pause.reason for route, pause in pauses.paused.items()} == {
        "orders": KAFKA_AUTH, "refunds": KAFKA_AUTH}  # the latest reason shows; both are held
    assert ("orders", True) in changes and ("refunds", True) in changes
    pauses.resume("orders")  # a launch got through: the broker accepting the worker again is not proven by it
    assert pauses.paused["orders"].reason == KAFKA_AUTH
    access.accept(CREDENTIALS)
    assert {route: pause.reason for route, pause in pauses.paused.items()} == {  # the group's refusal shows now
        "orders": KAFKA_AUTHORIZATION, "refunds": KAFKA_AUTHORIZATION}
    assert "--group g" in pauses.status()["orders"]["fix"]
    clock.now += QUIET_S
    access.accept_quiet()
    assert not pauses.paused and not access.refused


async def test_a_pause_held_by_two_refusals_of_one_reason_resumes_when_both_end() -> None:
    access, pauses, _, clock = access_over(ORDERS)
    topic = not_authorized("consuming", TopicAuthorizationFailedError("orders"))
    dlq = not_authorized("creating topics", TopicAuthorizationFailedError("dlq"), "Create")
    assert topic is not None and dlq is not None
    access.refuse(topic_scope("orders"), topic, quiet_ends=False)  # hidden from the metadata: only accept ends it
    access.refuse(DLQ_TOPICS, dlq)
    clock.now += 60
    access.accept_quiet()
    assert pauses.is_paused("orders")
    access.accept(DLQ_TOPICS)
    assert pauses.is_paused("orders")  # still refused its topic
    access.accept(topic_scope("orders"))
    assert not pauses.is_paused("orders")


async def test_until_accepted_pauses_every_route_while_the_worker_topics_are_refused() -> None:
    access, pauses, _, _ = access_over(ORDERS, REFUNDS)
    attempts = 0

    async def create() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise kafka_error("creating topics", TopicAuthorizationFailedError("dlq"), "Create")
        assert set(pauses.paused) == {"orders", "refunds"}
        return "created"

    assert await access.until_accepted(DLQ_TOPICS, create, Backoff(base_s=0.001, max_delay_s=0.001)) == "created"
    assert attempts == 3 and not pauses.paused


class EndOfScript(Exception):
    pass


async def test_a_topic_hidden_by_the_acls_pauses_for_authorization_not_as_missing() -> None:
    routes = [ORDERS, REFUNDS]
    listings = [{"refunds"}, {"refunds"}, {"refunds", "orders"}, {"refunds", "orders"}, set()]
    hidden_answers = [{"orders"}, set(), {"orders", "refunds"}]  # asked only while a topic is unlisted
    events: list[tuple[str, ...]] = []

    async def existing() -> set[str]:
        if not listings:
            raise EndOfScript
        return listings.pop(0)

    async def unauthorized(topics: set[str]) -> set[str]:
        return hidden_answers.pop(0) & topics

    async def accept(topic: str) -> None:
        events.append(("accept", topic))

    async def no_wait(_: float) -> None:
        return None

    hidden = HiddenTopics(unauthorized, lambda topic, exc: events.append(("refuse", topic, exc.reason, exc.hint)),
                          accept)
    with pytest.raises(EndOfScript):
        await watch_topics(routes, existing, lambda route, reason, message, hint: events.append(
            ("pause", route, reason)), lambda route, reason: events.append(("resume", route, reason)),
            "127.0.0.1:9092", sleep=no_wait, hidden=hidden)
    refusals = [e for e in events if e[0] == "refuse"]
    assert refusals[0][1:3] == ("orders", KAFKA_AUTHORIZATION) and "--topic orders" in refusals[0][3]
    assert ("pause", "orders", TOPIC_MISSING) in events  # the second look: no longer hidden, and missing
    assert ("accept", "orders") in events
    # Both revoked later (the last listing hides both): refused again, not called missing.
    assert [e[1] for e in refusals[1:]] == ["orders", "refunds"]
    assert ("pause", "refunds", TOPIC_MISSING) not in events
