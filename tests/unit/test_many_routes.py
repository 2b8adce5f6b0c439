"""Several routes on one topic: fan-out, unmatched records, per-route batches and commits, rate limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from service.batching import batch_id
from service.metrics import Metrics
from service.routes import RouteTable, load_routes
from service.throttle import Throttle
from service.verdicts import FAILURE_REASON_TAG, STEP_FAILURE, RunInfo
from tests.unit.test_delivery import GROUP, Harness

TWO_ROUTES = """
[[routes]]
name = "created"
topic = "orders"
job = "process_orders"
match = { "value.type" = "order.created" }
max_records = 3
max_bytes = 1000000
max_wait_s = 5.0

[[routes]]
name = "large"
topic = "orders"
job = "process_large"
match = { "value.amount" = { ">" = 100 } }
max_records = 2
max_bytes = 1000000
max_wait_s = 5.0
{extra}
"""


@pytest.fixture
async def make_routed(registry: CollectorRegistry) -> AsyncIterator[Callable[[RouteTable], Harness]]:
    """A delivery harness over the given routes (closed after the test)."""
    harnesses: list[Harness] = []

    def make(routes: RouteTable) -> Harness:
        harnesses.append(Harness(registry, routes))
        return harnesses[-1]

    yield make
    for harness in harnesses:
        await harness.close()


def two_routes(tmp_path: Path, extra: str = "") -> RouteTable:
    path = tmp_path / "routes.toml"
    path.write_text(TWO_ROUTES.replace("{extra}", extra))
    return load_routes(path)


def event(kind: str, amount: float) -> bytes:
    return orjson.dumps({"type": kind, "amount": amount})


async def feed_events(h: Harness, *events: bytes, start: int = 0) -> None:
    await h.deliver(*(h.record(start + i, value=value) for i, value in enumerate(events)))


def launched_by_route(h: Harness) -> dict[str, list[tuple[int, int, int]]]:
    """route -> (offset_start, offset_end, record_count) of each launch."""
    runs: dict[str, list[tuple[int, int, int]]] = {}
    for _, tags in h.client.launches:
        runs.setdefault(tags["kafka/route"], []).append(
            (int(tags["kafka/offset_start"]), int(tags["kafka/offset_end"]), int(tags["kafka/record_count"])))
    return runs


def inline_offsets(h: Harness, route_job: str) -> list[list[int]]:
    return [[r["offset"] for r in json.loads(config["ops"]["read_batch"]["config"]["records_json"])]
            for config, tags in h.client.launches if tags and h.routes[tags["kafka/route"]].job == route_job]


async def test_each_route_batches_exactly_the_records_it_matches_and_a_record_may_go_to_both(
        make_routed: Callable[[RouteTable], Harness], tmp_path: Path) -> None:
    h = make_routed(two_routes(tmp_path))
    await feed_events(h,
                      event("order.created", 10),    # 0: created
                      event("order.created", 500),   # 1: created and large
                      event("refund.issued", 5),     # 2: neither
                      event("refund.issued", 200),   # 3: large
                      event("order.created", 20))    # 4: created: closes created's batch of 3
    assert await h.settle()
    assert launched_by_route(h) == {"created": [(0, 4, 3)], "large": [(1, 3, 2)]}
    assert inline_offsets(h, "process_orders") == [[0, 1, 4]]
    assert inline_offsets(h, "process_large") == [[1, 3]]
    assert h.sample("kafka_dagster_messages_unmatched_total", topic="orders") == 1
    assert h.sink.sent == []
    assert h.acked() == [0, 1, 2, 3, 4]


async def test_a_run_config_carries_its_routes_match_and_tags_its_route(
        make_routed: Callable[[RouteTable], Harness], tmp_path: Path) -> None:
    h = make_routed(two_routes(tmp_path))
    await feed_events(h, event("order.created", 500), event("order.created", 500))
    h.clock.now += 5.0
    await h.delivery.tick()
    assert await h.settle()
    config, tags = next((c, t) for c, t in h.client.launches if t["kafka/route"] == "large")
    batch = config["ops"]["read_batch"]["config"]
    assert json.loads(batch["match"]) == {"value.amount": {">": 100}}
    assert tags["kafka/batch_id"] == batch_id("orders", 0, 0, 1, route="large") == batch["batch_id"]
    other = next(t for _, t in h.client.launches if t["kafka/route"] == "created")
    assert other["kafka/batch_id"] != tags["kafka/batch_id"]  # the same offsets, another route's run


async def test_the_partition_commits_only_below_what_every_route_has_finished_with(
        make_routed: Callable[[RouteTable], Harness], tmp_path: Path) -> None:
    h = make_routed(two_routes(tmp_path))
    # "large" closes its batch at 2 records; "created" still holds offset 0 open.
    await feed_events(h, event("order.created", 10), event("refund.issued", 200), event("refund.issued", 300))
    assert await h.settle()
    assert launched_by_route(h) == {"large": [(1, 2, 2)]}
    assert h.acked() == []  # offset 0 is still in created's open batch
    h.clock.now += 5.0
    await h.delivery.tick()
    assert await h.settle()
    assert launched_by_route(h)["created"] == [(0, 0, 1)]
    assert h.acked() == [0, 1, 2]


async def test_a_launch_during_the_first_chunk_never_commits_past_another_routes_open_batch(
        registry: CollectorRegistry, tmp_path: Path) -> None:
    """A backlog fills "large"'s lane while the first chunk is still handed over: its launches must not prove
    ownership with a commit past offset 0, which "created" still holds open (a kill then would lose it)."""
    h = Harness(registry, two_routes(tmp_path), delivery={"queued_batches_per_partition": 1})
    try:
        await feed_events(h, event("order.created", 10), *(event("refund.issued", 200) for _ in range(8)))
        assert await h.settle()
        assert launched_by_route(h) == {"large": [(1, 2, 2), (3, 4, 2), (5, 6, 2), (7, 8, 2)]}
        assert {offset for _, offset in h.fenced_at} == {0}
        assert h.acked() == []
    finally:
        await h.close()


async def test_unmatched_records_are_dead_lettered_at_stage_route_where_the_topic_says_so(
        make_routed: Callable[[RouteTable], Harness], tmp_path: Path) -> None:
    h = make_routed(two_routes(tmp_path, '[topics."orders"]\nunmatched = "dead_letter"'))
    await feed_events(h, event("refund.issued", 5), event("order.created", 10))
    h.clock.now += 5.0
    await h.delivery.tick()
    assert await h.settle()
    [letter] = h.sink.sent
    assert letter["dlq"]["dlq.stage"] == "route"
    assert letter["dlq"]["dlq.offset"] == "0"
    assert "dlq.route" not in letter["dlq"]
    assert "no route" in letter["dlq"]["dlq.error.message"]
    assert h.sample("kafka_dagster_messages_unmatched_total", topic="orders") == 1
    assert h.sample("kafka_dagster_dlq_messages_total", topic="orders", stage="route") == 1
    assert h.acked() == [0, 1]


async def test_a_value_no_route_can_read_is_dead_lettered_once_for_all_of_them(
        make_routed: Callable[[RouteTable], Harness], tmp_path: Path) -> None:
    h = make_routed(two_routes(tmp_path))
    await feed_events(h, event("order.created", 500), b"not json", event("order.created", 500))
    h.clock.now += 5.0
    await h.delivery.tick()
    assert await h.settle()
    [letter] = h.sink.sent
    assert letter["dlq"]["dlq.stage"] == "decode"
    assert letter["dlq"]["dlq.route"] == "created,large"
    # Both routes' batches were split around it: no run's range covers the dead letter.
    assert launched_by_route(h) == {"created": [(0, 0, 1), (2, 2, 1)], "large": [(0, 0, 1), (2, 2, 1)]}
    assert h.acked() == [0, 1, 2]


async def test_a_schema_failure_dead_letters_the_record_for_that_route_only(
        make_routed: Callable[[RouteTable], Harness], tmp_path: Path) -> None:
    schema = '{ type = "object", required = ["customer"] }'
    routes = two_routes(tmp_path).values()
    path = tmp_path / "strict.toml"
    large = 'match = { "value.amount" = { ">" = 100 } }'
    path.write_text(TWO_ROUTES.replace("{extra}", "").replace(large, f"{large}\nschema = {schema}"))
    assert len(list(routes)) == 2
    h = make_routed(load_routes(path))
    await feed_events(h, event("order.created", 500))
    h.clock.now += 5.0
    await h.delivery.tick()
    assert await h.settle()
    [letter] = h.sink.sent
    assert (letter["dlq"]["dlq.stage"], letter["dlq"]["dlq.route"]) == ("validate", "large")
    assert launched_by_route(h) == {"created": [(0, 0, 1)]}


async def test_each_route_reconciles_its_own_runs(make_routed: Callable[[RouteTable], Harness], tmp_path: Path) -> None:
    h = make_routed(two_routes(tmp_path))
    h.client.runs.append(RunInfo("old", "SUCCESS", "process_large", {
        "kafka/topic": "orders", "kafka/partition": "0", "kafka/consumer_group": GROUP, "kafka/route": "large",
        "kafka/offset_start": "0", "kafka/offset_end": "1"}))
    await feed_events(h, event("order.created", 500), event("order.created", 500))
    h.clock.now += 5.0
    await h.delivery.tick()
    assert await h.settle()
    assert launched_by_route(h) == {"created": [(0, 1, 2)]}  # "large" launched these before
    assert sorted(c["kafka/route"] for c in h.client.find_calls) == ["created", "large"]


async def test_a_run_that_failed_is_copied_to_the_dlq_with_only_its_own_records(
        make_routed: Callable[[RouteTable], Harness], tmp_path: Path) -> None:
    h = make_routed(two_routes(tmp_path))
    records = [h.record(i, value=v) for i, v in enumerate([event("order.created", 500), event("refund.issued", 1),
                                                            event("refund.issued", 300)])]
    h.read_back[(0, 2)] = records
    await h.deliver(*records)
    assert await h.settle()
    run_id = next(r.run_id for r in h.client.runs if r.tags["kafka/route"] == "large")
    h.client.runs = [RunInfo(r.run_id, "FAILURE", r.job, r.tags | {FAILURE_REASON_TAG: STEP_FAILURE},
                             r.creation_time) if r.run_id == run_id else r for r in h.client.runs]
    await h.delivery.watcher.poll()
    assert sorted(h.sink.offsets("run")) == [0, 2]
    assert {m["dlq"]["dlq.route"] for m in h.sink.sent} == {"large"}


@pytest.mark.parametrize("names", [("", ""), ("a", "")])
def test_a_topic_with_two_routes_needs_a_name_for_each(tmp_path: Path, names: tuple[str, str]) -> None:
    from service.errors import ConfigurationError

    text = "".join(f'[[routes]]\n{f"name = {n!r}" if n else ""}\ntopic = "t"\njob = "j"\nmax_records = 1\n'
                   f'max_bytes = 10\nmax_wait_s = 1.0\n' for n in names)
    path = tmp_path / "routes.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match="give each"):
        load_routes(path)


def test_a_bad_match_fails_at_start_naming_the_route(tmp_path: Path) -> None:
    from service.errors import ConfigurationError

    path = tmp_path / "routes.toml"
    path.write_text(TWO_ROUTES.replace("{extra}", "").replace('{ ">" = 100 }', '{ "=>" = 100 }'))
    with pytest.raises(ConfigurationError) as raised:
        load_routes(path)
    message = str(raised.value)
    assert "routes[1]" in message and "value.amount" in message and "\n" not in message


def test_topic_patterns_subscribe_by_one_anchored_regex(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text('[[routes]]\ntopic_pattern = "shop\\\\.events\\\\..*"\njob = "j"\nmax_records = 1\n'
                    'max_bytes = 10\nmax_wait_s = 1.0\n[[routes]]\ntopic = "a.b"\njob = "j"\nmax_records = 1\n'
                    'max_bytes = 10\nmax_wait_s = 1.0\n')
    routes = load_routes(path)
    import re

    pattern = re.compile(routes.subscription_pattern or "")
    assert pattern.match("shop.events.eu") and pattern.match("a.b")
    assert not pattern.match("axb") and not pattern.match("a.b.c") and not pattern.match("x.shop.events.eu")
    assert [r.name for r in routes.for_topic("shop.events.eu")] == ["shop\\.events\\..*"]
    assert routes.for_topic("other") == ()


async def test_max_runs_per_minute_holds_launches_beyond_the_window(registry: CollectorRegistry) -> None:
    now = [0.0]

    async def sleep(seconds: float) -> None:  # time passes only while the throttle holds a launch
        now[0] += seconds

    throttle = Throttle("r", "j", Metrics(registry), max_runs_per_minute=2, max_queued_runs=None,
                        queued_runs=_never, clock=lambda: now[0], window_s=60.0, sleep=sleep)
    times = []
    for _ in range(5):
        throttle.launched(await throttle.acquire())
        times.append(now[0])
    # Two per window: launches 3 and 5 wait for the window to slide past the first of their window.
    assert times == [0.0, 0.0, 60.0, 60.0, 120.0]
    assert registry.get_sample_value("kafka_dagster_route_throttled_seconds_total", {"route": "r"}) == 120.0


async def test_max_queued_runs_waits_until_dagster_dequeues(registry: CollectorRegistry) -> None:
    queued = [5, 5, 2]
    asked: list[str] = []

    async def queued_runs(job: str) -> int:
        asked.append(job)
        return queued.pop(0) if queued else 0

    throttle = Throttle("r", "j", Metrics(registry), max_runs_per_minute=None, max_queued_runs=3,
                        queued_runs=queued_runs, queue_poll_s=0.01)
    task = asyncio.create_task(throttle.acquire())
    await asyncio.sleep(0)
    assert throttle.held
    throttle.launched(await asyncio.wait_for(task, 2.0))
    assert asked == ["j", "j", "j"] and not throttle.held


async def test_a_launch_counts_in_the_window_from_its_slot_until_a_window_after_it_was_made(
        registry: CollectorRegistry) -> None:
    now = [0.0]
    throttle = Throttle("r", "j", Metrics(registry), max_runs_per_minute=1, max_queued_runs=None,
                        queued_runs=_never, clock=lambda: now[0], window_s=60.0)
    slot = await throttle.acquire()
    now[0] = 100.0  # the launch took long: the window starts when the run exists
    assert throttle.held
    throttle.launched(slot)
    now[0] = 159.0
    assert throttle.held
    now[0] = 160.0
    assert not throttle.held
    throttle.release(await throttle.acquire())  # a launch that made no run gives its slot back
    assert not throttle.held


async def test_a_launch_holds_its_slot_until_it_got_through_or_raised(registry: CollectorRegistry) -> None:
    now = [0.0]
    throttle = Throttle("r", "j", Metrics(registry), max_runs_per_minute=1, max_queued_runs=None,
                        queued_runs=_never, clock=lambda: now[0], window_s=60.0)
    with pytest.raises(RuntimeError):
        async with throttle.launching():
            assert throttle.held
            raise RuntimeError("refused")
    assert not throttle.held  # no run made: the slot is given back
    async with throttle.launching():
        now[0] = 10.0
    now[0] = 69.0
    assert throttle.held  # a window from when the run was made
    now[0] = 70.0
    assert not throttle.held


async def _never(job: str) -> Any:
    raise AssertionError("not asked")


THREE_ROUTES_SAME_SCHEMA = """
[[routes]]
name = "created"
topic = "orders"
job = "process_orders"
match = { "value.type" = "order.created" }
schema = { type = "object", required = ["amount"] }
max_records = 4
max_bytes = 1000000
max_wait_s = 5.0

[[routes]]
name = "large"
topic = "orders"
job = "process_large"
match = { "value.amount" = { ">" = 100 } }
schema = { type = "object", required = ["amount"] }
max_records = 4
max_bytes = 1000000
max_wait_s = 5.0

[[routes]]
name = "all"
topic = "orders"
job = "process_all"
max_records = 4
max_bytes = 1000000
max_wait_s = 5.0
"""


async def test_three_routes_decode_each_record_once_and_check_a_shared_schema_once(
        make_routed: Callable[[RouteTable], Harness], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fan-out does no repeated work: one parse per record, one check per distinct schema, whatever the routes."""
    import service.routing
    from service.schemas import CompiledSchema

    parsed: list[int] = []
    checked: list[object] = []
    parse, is_valid = service.routing.parse_value, CompiledSchema.is_valid

    def counting_parse(record: Any, *args: Any) -> Any:
        parsed.append(record.offset)
        return parse(record, *args)

    def counting_is_valid(validator: Any, value: Any) -> bool:
        checked.append(value)
        return bool(is_valid(validator, value))

    monkeypatch.setattr(service.routing, "parse_value", counting_parse)
    monkeypatch.setattr(CompiledSchema, "is_valid", counting_is_valid)
    path = tmp_path / "three.toml"
    path.write_text(THREE_ROUTES_SAME_SCHEMA)
    h = make_routed(load_routes(path))
    await feed_events(h, event("order.created", 500), event("order.created", 10), event("refund.issued", 200),
                      event("refund.issued", 5))
    assert await h.settle()
    assert parsed == [0, 1, 2, 3]  # once each, for three routes
    assert len(checked) == 3  # records 0, 1, 2 feed a route with the schema; record 3 feeds "all" alone
    assert launched_by_route(h) == {"all": [(0, 3, 4)]}
    h.clock.now += 5.0
    await h.delivery.tick()
    assert await h.settle()
    assert launched_by_route(h) == {"all": [(0, 3, 4)], "created": [(0, 1, 2)], "large": [(0, 2, 2)]}
    assert h.acked() == [0, 1, 2, 3]
