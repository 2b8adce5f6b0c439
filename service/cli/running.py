"""What every command shares: one event loop of its own per command, failures as one line, Kafka settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

import click

from service.errors import BrokerUnavailable, ConfigurationError, KafkaDagsterError
from service.kafka.security import KafkaSecurity
from service.settings import load_kafka_security

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], interruptible: bool = False) -> T:
    """Run `coro` on a loop of its own, leaving no loop set (Faust's worker creates its own after).

    A `ConfigurationError` (the broker refusing the TLS/SASL settings), or a
    broker that cannot be reached or refuses a request, ends the command with
    one line (exit code 1). With `interruptible`, Ctrl-C cancels `coro`
    (which may end on its own terms) instead of raising in the middle of it.
    """
    loop = asyncio.new_event_loop()
    task = loop.create_task(coro)
    if interruptible:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, task.cancel)
    try:
        return loop.run_until_complete(task)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    except BrokerUnavailable as exc:
        raise click.ClickException(f"Kafka: {exc}; check --bootstrap-servers (KAFKA_BOOTSTRAP_SERVERS) and "
                                   "that the broker runs") from None
    except KafkaDagsterError as exc:
        raise click.ClickException(f"Kafka refused: {exc}") from None
    except asyncio.CancelledError:
        raise click.Abort() from None
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                loop.run_until_complete(task)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def kafka_security() -> KafkaSecurity:
    """The KAFKA_SECURITY_PROTOCOL/KAFKA_SASL_*/KAFKA_SSL_* settings (checked against the broker by the command)."""
    quiet_kafka_client()
    try:
        return load_kafka_security()
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None


def quiet_kafka_client() -> None:
    """aiokafka logs every failed connection attempt; a command says what failed in its one line instead."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
