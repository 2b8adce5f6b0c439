"""The Faust app, configured from `Settings`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import faust
from faust.types import TransportT

from service.consumer import BeforeSeek, RecordSink, Refusals, Transport
from service.errors import ConfigurationError
from service.kafka.group_commits import GroupCommits
from service.kafka.security import KafkaSecurity, ssl_context
from service.settings import Settings


class App(faust.App):
    """A `faust.App` that runs `before_stop` while the consumer is still up.

    Its consumer is `service.consumer.Consumer`: it hands every fetched chunk
    of a partition to `record_sink` instead of feeding agents (see there why).

    Faust stops its consumer first thing in `on_stop`; the worker needs to
    launch its open batches and commit what they cover before that.
    """

    before_stop: Callable[[], Awaitable[None]] | None = None
    record_sink: RecordSink | None = None
    before_seek: BeforeSeek | None = None  # before an assignment's committed offsets are read
    # One regex for every routed topic when a route names a topic_pattern (Faust subscribes by name only).
    subscription_pattern: str | None = None
    # Where the consumer reports the broker refusing the worker (`service.kafka.access.KafkaAccess`).
    kafka_access: Refusals | None = None
    # Offset commits from the app's loop, the fence's fast way (`service.kafka.group_commits`).
    group_commits: GroupCommits | None = None

    def _new_transport(self) -> TransportT:
        """The aiokafka transport with the chunked fetch loop of `service.consumer`."""
        return Transport(self.conf.broker_consumer, self)

    async def on_stop(self) -> None:
        if self.before_stop is not None:
            await self.before_stop()
        await super().on_stop()


def faust_credentials(security: KafkaSecurity) -> Any:
    """`broker_credentials` for `faust.App` from the TLS/SASL settings (`service.kafka.security`): None for
    PLAINTEXT."""
    context = ssl_context(security)
    if security.uses_sasl:
        return faust.SASLCredentials(username=security.sasl_username, password=security.sasl_password,
                                     ssl_context=context, mechanism=security.sasl_mechanism)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def create_app(settings: Settings, subscription_pattern: str | None = None) -> App:
    """A Faust app whose consumer group, broker (with its TLS/SASL) and web server come from `settings`.

    Commits (every second) follow what the worker marked done, no internal
    topics are created, and a rebalance does not wait for open batches (the
    worker hands them over itself). With a `subscription_pattern` the consumer
    subscribes by it, and finds topics created later within
    `KAFKA_DAGSTER_TOPIC_REFRESH_S` (its metadata refresh). Faust's data
    directory, `<group>-data`, goes under `KAFKA_DAGSTER_DATA_DIR`, not the
    working directory.
    """
    try:
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"invalid setting KAFKA_DAGSTER_DATA_DIR={str(settings.data_dir)!r}: "
                                 f"cannot create it ({exc.__class__.__name__})") from None
    app = App(
        settings.group_id,
        broker=settings.broker_urls,
        broker_credentials=faust_credentials(settings.kafka_security),
        autodiscover=False,
        store="memory://",
        # Faust formats this path with its config (str.format): braces in the group id are escaped.
        datadir=str(settings.data_dir / f"{settings.group_id}-data").replace("{", "{{").replace("}", "}}"),
        web_enabled=True,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_host=settings.web_host,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 5),
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        topic_allow_declare=False,
        producer_acks=-1,
        broker_commit_interval=1.0,
        consumer_metadata_max_age_ms=int(settings.topic_refresh_s * 1000),
    )
    app.subscription_pattern = subscription_pattern
    return app
