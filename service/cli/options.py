"""Option types and option sets shared by the commands."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click

from service.contract import DEFAULT_BOOTSTRAP_SERVERS, DEFAULT_DLQ_TOPIC, STAGES

F = TypeVar("F", bound=Callable[..., Any])


class HeaderParam(click.ParamType):
    """`NAME=VALUE` -> (NAME, VALUE as UTF-8), a Kafka record header."""

    name = "NAME=VALUE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, bytes]:
        if isinstance(value, tuple):
            return value
        name, equals, text = str(value).partition("=")
        if not equals or not name:
            self.fail(f"{value!r} is not NAME=VALUE", param, ctx)
        return name, text.encode("utf-8")


class SinceParam(click.ParamType):
    """An ISO-8601 time (UTC unless it names its offset) or a duration back from now (`90s`, `15m`,
    `2h`, `1d`, `1h30m`) -> that time as epoch milliseconds."""

    name = "TIME|DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return since_ms(str(value), datetime.now(UTC))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
DURATIONS = re.compile(r"(?:\d+(?:\.\d+)?[smhd])+")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_ms(text: str, now: datetime) -> int:
    """`text` (see `SinceParam`) as epoch milliseconds, `now` being the time durations count back from."""
    text = text.strip()
    compact = text.replace(" ", "")
    if compact and DURATIONS.fullmatch(compact):
        seconds = sum(float(n) * UNIT_S[unit] for n, unit in DURATION.findall(compact))
        return int((now - timedelta(seconds=seconds)).timestamp() * 1000)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO-8601 time (2024-05-01T12:00:00Z) "
                         "nor a duration (90s, 15m, 2h, 1d)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def dlq_options(command: F) -> F:
    command = click.option("--bootstrap-servers", envvar="KAFKA_BOOTSTRAP_SERVERS", default=DEFAULT_BOOTSTRAP_SERVERS,
                           show_default=True, metavar="HOST:PORT[,...]",
                           help="Kafka brokers to connect to (env KAFKA_BOOTSTRAP_SERVERS).")(command)
    command = click.option("--dlq-topic", envvar="KAFKA_DAGSTER_DLQ_TOPIC", default=DEFAULT_DLQ_TOPIC,
                           show_default=True,
                           help="The dead-letter topic the worker writes (env KAFKA_DAGSTER_DLQ_TOPIC).")(command)
    command = click.option("--stage", type=click.Choice(STAGES),
                           default=None, help="Only dead letters of this stage.")(command)
    command = click.option("--source-topic", default=None, help="Only dead letters from this topic.")(command)
    return command
