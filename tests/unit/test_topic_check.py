"""A routed topic missing from the cluster pauses its route, saying which topic and what to do, until it exists."""

from __future__ import annotations

from service.routes import Route
from service.topic_check import TOPIC_MISSING, watch_topics


async def test_a_missing_topic_pauses_its_route_until_it_exists() -> None:
    routes = [Route("orders", "process_orders", 10, 1000, 1.0), Route("refunds", "process_refunds", 10, 1000, 1.0),
              Route("", "process_all", 10, 1000, 1.0, topic_pattern="shop\\..*")]
    listings = [{"refunds"}, {"refunds"}, {"refunds", "orders"}]
    events: list[tuple[str, ...]] = []

    async def existing() -> set[str]:
        return listings.pop(0)

    async def no_wait(_: float) -> None:
        return None

    def pause(route: str, reason: str, message: str, hint: str) -> None:
        events.append(("pause", route, reason, message, hint))

    def resume(route: str, reason: str) -> None:
        events.append(("resume", route, reason))

    await watch_topics(routes, existing, pause, resume, "127.0.0.1:9092", sleep=no_wait)
    assert listings == []
    paused = [e for e in events if e[0] == "pause"]
    assert {e[1] for e in paused} == {"orders"} and len(paused) == 2
    assert paused[0][2] == TOPIC_MISSING and "topic 'orders' does not exist on 127.0.0.1:9092" in paused[0][3]
    assert "kafka-topics.sh --create --topic orders" in paused[0][4]
    assert ("resume", "orders", TOPIC_MISSING) in events and ("resume", "refunds", TOPIC_MISSING) in events
