"""The benchmark's workers must start with the worker's default settings: their routes are checked here."""

from __future__ import annotations

from pathlib import Path

import orjson

from bench.broker import broker_name, new_broker
from bench.config import FULL
from bench.data import make_values
from bench.service import shared_topic_routes
from bench.worker import ORDER_SCHEMA, RouteSpec, routes_toml
from service.decoding import decode_value
from service.dev.apache_kafka import ApacheKafka
from service.dev.stack import Broker
from service.routes import check_batch_bytes, load_routes
from service.settings import Settings
from tests.unit.factories import make_record


def test_bench_routes_pass_the_workers_checks_with_default_settings(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(routes_toml([RouteSpec("bench.a", 12_500, 1.0), RouteSpec("bench.b", 1_000_000, 2.5),
                                 RouteSpec("bench.c", 12_500, 1.0, ORDER_SCHEMA)]))
    routes = load_routes(path)
    check_batch_bytes(routes, Settings().max_batch_bytes)
    assert {route.topic for route in routes.values()} == {"bench.a", "bench.b", "bench.c"}
    assert routes["bench.a"].schema is None and routes["bench.c"].schema is not None


def test_the_bench_orders_all_pass_the_sample_schema(tmp_path: Path) -> None:
    """`service_schema` measures validation, not dead-lettering: every benchmark value is valid."""
    path = tmp_path / "routes.toml"
    path.write_text(routes_toml([RouteSpec("bench.c", 12_500, 1.0, ORDER_SCHEMA)]))
    validator = load_routes(path)["bench.c"].validator()
    assert validator is not None and validator.fast is not None
    settings = Settings()
    for value in make_values(2_000):
        decode_value(make_record(0, value=value), settings.max_message_bytes, validator)


def test_the_shared_topic_routes_take_what_the_benchmark_counts(tmp_path: Path) -> None:
    """`service_routes` waits for 2 x messages launched: both order routes take every value, refunds none."""
    path = tmp_path / "routes.toml"
    path.write_text(routes_toml(shared_topic_routes("bench.orders", 25_000)))
    routes = load_routes(path)
    check_batch_bytes(routes, Settings().max_batch_bytes)
    assert set(routes) == {"orders", "priced", "refunds"}
    values = [orjson.loads(raw) for raw in make_values(2_000)]
    taken = {name: sum(route.match.matches(None, [], value) for value in values)
             for name, route in routes.items() if route.match is not None}
    assert taken == {"orders": 2_000, "priced": 2_000, "refunds": 0}


def test_the_bench_runs_apache_kafka_unless_told_tansu_and_names_the_broker(tmp_path: Path) -> None:
    apache, apache_info = new_broker("apache", tmp_path)
    tansu, tansu_info = new_broker("tansu", tmp_path)

    assert isinstance(apache, ApacheKafka) and isinstance(tansu, Broker)
    assert broker_name({"broker": apache_info}) == "Apache Kafka 3.9.1"
    assert broker_name({"broker": tansu_info}).startswith("Tansu 0.6.0")
    assert broker_name({}) == "Tansu 0.6.0"  # results written before the broker was recorded


def test_the_framed_decode_cost_is_measured_beside_the_json_parse() -> None:
    from bench.framed import costs

    figures = costs(50, passes=1)
    assert set(figures) == {"json route: parse the value", "avro route: frame, cached schema, decode",
                            "avro minus json"}
    assert figures["avro route: frame, cached schema, decode"] > 0


def test_record_size_data_sets_fill_whole_batches_within_max_bytes() -> None:
    """A batch that closed on max_bytes would leave a remainder waiting for max_wait_s (60 s), and the
    figure would time that wait (it read 3,245 msgs/s at 1 KB)."""
    from types import SimpleNamespace

    from bench.config import FULL, QUICK
    from bench.record_sizes import FILL, batch_plan
    from bench.worker import MAX_BYTES

    for mode in (FULL, QUICK):
        for value_bytes in mode.record_sizes:
            messages, max_records = batch_plan(SimpleNamespace(mode=mode), value_bytes)  # type: ignore[arg-type]
            assert messages % (mode.partitions * max_records) == 0
            assert max_records * value_bytes <= FILL * MAX_BYTES
            assert messages * value_bytes <= mode.record_sizes_budget_bytes


def test_the_growth_route_holds_launches_on_dagsters_queue(tmp_path: Path) -> None:
    """`bench.queue_growth` compares a route without a queue limit and one with `max_queued_runs`."""
    path = tmp_path / "routes.toml"
    mode = FULL
    path.write_text(routes_toml([RouteSpec("bench.g", mode.growth_max_records, mode.growth_max_wait_s,
                                           max_queued_runs=mode.growth_max_queued_runs)]))
    route = load_routes(path)["bench.g"]
    assert route.max_queued_runs == mode.growth_max_queued_runs and route.throttled
    assert route.max_wait_s == mode.growth_max_wait_s and route.max_records == mode.growth_max_records
