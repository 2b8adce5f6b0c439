"""load_routes: valid files parse, and every mistake fails with one line naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.errors import ConfigurationError
from service.routes import Route, load_routes

BASE = """
[[routes]]
topic = "orders"
job = "process_orders"
max_records = 500
max_bytes = 1048576
max_wait_s = 5.0
"""


def write(tmp_path: Path, text: str, name: str = "routes.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigurationError) as info:
        load_routes(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_minimal_route_with_defaults(tmp_path: Path) -> None:
    routes = load_routes(write(tmp_path, BASE))
    assert routes == {"orders": Route("orders", "process_orders", 500, 1_048_576, 5.0)}
    route = routes["orders"]
    assert route.location is None and route.repository is None
    assert route.batch_op == "read_batch"
    assert route.inline_max_bytes == 262_144
    assert route.schema is None
    assert route.validator() is None


def test_all_optional_fields_and_an_inline_schema(tmp_path: Path) -> None:
    text = BASE + """location = "loc"
repository = "__repository__"
batch_op = "my_op"
inline_max_bytes = 0
[routes.schema]
type = "object"
required = ["id"]
properties = { id = { type = "integer" } }

[[routes]]
topic = "clicks"
job = "process_clicks"
max_records = 1
max_bytes = 1
max_wait_s = 2
"""
    routes = load_routes(write(tmp_path, text))
    assert list(routes) == ["orders", "clicks"]
    orders = routes["orders"]
    assert (orders.location, orders.repository, orders.batch_op, orders.inline_max_bytes) == (
        "loc", "__repository__", "my_op", 0)
    assert orders.schema == {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}
    validator = orders.validator()
    assert validator is not None
    assert validator.is_valid({"id": 3})
    assert not validator.is_valid({"id": "3"})
    clicks = routes["clicks"]
    assert clicks.max_wait_s == 2.0 and isinstance(clicks.max_wait_s, float)


def test_schema_file_is_read_relative_to_the_routes_file(tmp_path: Path) -> None:
    (tmp_path / "schemas").mkdir()
    schema = {"type": "object", "properties": {"price": {"type": "number", "minimum": 0}}}
    (tmp_path / "schemas" / "order.json").write_text(json.dumps(schema))
    routes = load_routes(write(tmp_path, BASE + 'schema_file = "schemas/order.json"\n'))
    assert routes["orders"].schema == schema
    validator = routes["orders"].validator()
    assert validator is not None and not validator.is_valid({"price": -1})


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda t: t + 'colour = "red"\n', "colour"),
        (lambda t: t + "max_batch = 3\n", "max_batch"),
        (lambda t: t.replace('topic = "orders"\n', ""), "topic"),
        (lambda t: t.replace('job = "process_orders"\n', ""), "job"),
        (lambda t: t.replace("max_records = 500\n", ""), "max_records"),
        (lambda t: t.replace("max_bytes = 1048576\n", ""), "max_bytes"),
        (lambda t: t.replace("max_wait_s = 5.0\n", ""), "max_wait_s"),
        (lambda t: t.replace("max_records = 500", "max_records = 0"), "max_records"),
        (lambda t: t.replace("max_records = 500", "max_records = -3"), "max_records"),
        (lambda t: t.replace("max_records = 500", "max_records = 2.5"), "max_records"),
        (lambda t: t.replace("max_records = 500", 'max_records = "500"'), "max_records"),
        (lambda t: t.replace("max_records = 500", "max_records = true"), "max_records"),
        (lambda t: t.replace("max_bytes = 1048576", "max_bytes = 0"), "max_bytes"),
        (lambda t: t.replace("max_bytes = 1048576", "max_bytes = -1"), "max_bytes"),
        (lambda t: t + "inline_max_bytes = -1\n", "inline_max_bytes"),
        (lambda t: t.replace("max_wait_s = 5.0", "max_wait_s = 0"), "max_wait_s"),
        (lambda t: t.replace("max_wait_s = 5.0", "max_wait_s = -1.5"), "max_wait_s"),
        (lambda t: t.replace("max_wait_s = 5.0", 'max_wait_s = "5s"'), "max_wait_s"),
        (lambda t: t.replace("max_wait_s = 5.0", "max_wait_s = false"), "max_wait_s"),
        (lambda t: t.replace('job = "process_orders"', 'job = ""'), "job"),
        (lambda t: t.replace('job = "process_orders"', "job = 7"), "job"),
        (lambda t: t.replace('topic = "orders"', 'topic = ""'), "topic"),
        (lambda t: t + 'batch_op = ""\n', "batch_op"),
        (lambda t: t + "location = 1\n", "location"),
        (lambda t: t + 'schema = { type = "notatype" }\n', "schema"),
        (lambda t: t + "schema = { type = 5 }\n", "schema"),
        (lambda t: t + 'schema = "string"\n', "schema"),
        (lambda t: t + 'schema = { type = "object" }\nschema_file = "x.json"\n', "schema"),
        (lambda t: t + 'schema_file = "missing.json"\n', "schema_file"),
    ],
)
def test_bad_route_fails_with_one_line_naming_the_field(tmp_path: Path, edit, field: str) -> None:  # type: ignore[no-untyped-def]
    message = config_error(tmp_path, edit(BASE))
    assert field in message
    assert "routes[0]" in message


def test_nan_max_wait_s_is_rejected(tmp_path: Path) -> None:
    # `wait <= 0` is False for NaN, and a batch waiting NaN seconds never closes on time
    # (`now - opened_at >= nan` is always False): NaN must be refused by name.
    message = config_error(tmp_path, BASE.replace("max_wait_s = 5.0", "max_wait_s = nan"))
    assert "max_wait_s" in message


def test_error_names_the_route_index(tmp_path: Path) -> None:
    second = BASE.replace('"orders"', '"clicks"').replace("max_records = 500", "max_records = 0")
    message = config_error(tmp_path, BASE + second)
    assert "routes[1]" in message and "max_records" in message


def test_schema_file_that_is_not_json(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    message = config_error(tmp_path, BASE + 'schema_file = "bad.json"\n')
    assert "schema_file" in message


def test_schema_file_that_is_not_an_object(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text("[1, 2]")
    message = config_error(tmp_path, BASE + 'schema_file = "list.json"\n')
    assert "schema_file" in message


def test_schema_file_with_an_invalid_schema(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(json.dumps({"type": "object", "required": "id"}))
    message = config_error(tmp_path, BASE + 'schema_file = "s.json"\n')
    assert "schema" in message


def test_duplicate_topic(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE + BASE.replace("process_orders", "other_job"))
    assert "'orders'" in message and "twice" in message


@pytest.mark.parametrize("text", ["", "# nothing\n", "routes = []\n", '[routes]\ntopic = "a"\n',
                                  'title = "x"\n'])
def test_no_routes_tables(tmp_path: Path, text: str) -> None:
    message = config_error(tmp_path, text)
    assert "[[routes]]" in message


def test_invalid_toml(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[[routes]\ntopic = \n")
    assert "routes.toml" in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_routes(tmp_path / "nope.toml")
    assert "nope.toml" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("routes = [1]\n", "routes"),
        (BASE + "schema_file = 5\n", "schema_file"),
        (BASE + 'schema = { "$schema" = 5 }\n', "schema"),
    ],
)
def test_wrongly_typed_tables_and_schema_fields_fail_as_configuration_errors(
        tmp_path: Path, text: str, field: str) -> None:
    # Unchecked, each would escape as a raw exception instead of a one-line ConfigurationError:
    # `routes = [1]` (a non-table entry) and `schema_file = 5` (not a string) as TypeErrors, and
    # `schema = {"$schema" = 5}` as an AttributeError from jsonschema's validator_for.
    message = config_error(tmp_path, text)
    assert field in message


def test_route_max_bytes_is_capped_by_the_batch_bytes_setting() -> None:
    from service.routes import check_batch_bytes

    routes = {"t": Route("t", "job", max_records=10, max_bytes=2_000, max_wait_s=1.0)}
    check_batch_bytes(routes, 2_000)
    with pytest.raises(ConfigurationError) as info:
        check_batch_bytes(routes, 1_999)
    assert "KAFKA_DAGSTER_MAX_BATCH_BYTES=1999" in str(info.value) and "'t'" in str(info.value)


def test_worker_refuses_a_route_over_the_batch_bytes_setting(tmp_path: Path) -> None:
    from service.settings import load_settings
    from service.worker import build_worker

    routes = tmp_path / "routes.toml"
    routes.write_text('[[routes]]\ntopic = "t"\njob = "j"\nmax_records = 1\nmax_bytes = 5000\nmax_wait_s = 1\n')
    settings = load_settings({"KAFKA_DAGSTER_ROUTES": str(routes), "KAFKA_DAGSTER_MAX_BATCH_BYTES": "4096"})
    with pytest.raises(ConfigurationError, match="KAFKA_DAGSTER_MAX_BATCH_BYTES"):
        build_worker(settings)


def test_value_and_key_formats(tmp_path: Path) -> None:
    route = load_routes(write(tmp_path, BASE + 'value_format = "avro"\nkey_format = "json"\n'))["orders"]
    assert (route.value_format, route.key_format, route.framed) == ("avro", "json", True)
    plain = load_routes(write(tmp_path, BASE))["orders"]
    assert (plain.value_format, plain.key_format, plain.framed) == ("json", "json", False)


@pytest.mark.parametrize("fmt", ["avro", "protobuf", "json_schema"])
def test_a_framed_key_format_is_accepted_and_needs_a_registry(tmp_path: Path, fmt: str) -> None:
    from service.routes import check_registry

    table = load_routes(write(tmp_path, BASE + f'key_format = "{fmt}"\n'))
    route = table["orders"]
    assert (route.value_format, route.key_format, route.framed) == ("json", fmt, True)
    assert table.framed == [route]
    with pytest.raises(ConfigurationError, match=f"route 'orders': format {fmt} needs a schema registry"):
        check_registry(table, None)
    check_registry(table, "http://registry:8081")


def test_an_unknown_key_format_fails_with_one_line(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE + 'key_format = "avro_v2"\n')
    assert message.endswith("routes[0]: key_format must be one of json, avro, protobuf, json_schema"), message
    assert "not supported" not in message


def test_routes_that_share_a_topic_read_its_keys_alike(tmp_path: Path) -> None:
    shared = ('[[routes]]\nname = "a"\ntopic = "orders"\njob = "j"\nmax_records = 1\nmax_bytes = 10\n'
              'max_wait_s = 1.0\nkey_format = "avro"\n'
              '[[routes]]\nname = "b"\ntopic = "orders"\njob = "j"\nmax_records = 1\nmax_bytes = 10\n'
              'max_wait_s = 1.0\nvalue_format = "avro"\n')
    message = config_error(tmp_path, shared)
    assert "topic 'orders': its routes read keys as avro and json" in message
    assert "must have the same key_format" in message
    table = load_routes(write(tmp_path, shared.replace('value_format = "avro"', 'key_format = "avro"')))
    assert [r.key_format for r in table.values()] == ["avro", "avro"]


@pytest.mark.parametrize("name", ["value_format", "key_format"])
def test_a_bad_format_names_the_field(tmp_path: Path, name: str) -> None:
    message = config_error(tmp_path, BASE + f'{name} = "xml"\n')
    assert f"{name} must be one of json, avro, protobuf, json_schema" in message


def test_the_schema_registry_table_takes_a_url_alone(tmp_path: Path) -> None:
    table = load_routes(write(tmp_path, BASE + '\n[schema_registry]\nurl = "http://registry:8080/apis/ccompat/v7"\n'))
    assert table.registry_url == "http://registry:8080/apis/ccompat/v7"
    assert load_routes(write(tmp_path, BASE)).registry_url is None
    message = config_error(tmp_path, BASE + '\n[schema_registry]\nurl = "http://r"\npassword = "s3cret"\n')
    assert "unknown key(s) password" in message and "KAFKA_DAGSTER_SCHEMA_REGISTRY_USERNAME" in message
    assert "s3cret" not in message
    assert "url must be an http" in config_error(tmp_path, BASE + '\n[schema_registry]\nurl = "registry"\n')


def test_a_framed_route_needs_a_registry(tmp_path: Path) -> None:
    from service.routes import check_registry

    table = load_routes(write(tmp_path, BASE + 'value_format = "json_schema"\n'))
    with pytest.raises(ConfigurationError, match="route 'orders': format json_schema needs a schema registry"):
        check_registry(table, None)
    check_registry(table, "http://registry:8081")
    check_registry(load_routes(write(tmp_path, BASE)), None)
