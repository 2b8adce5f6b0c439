"""The worker: a Faust app whose consumer feeds `Delivery`, plus its timers, signals and pages."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import urlparse

from service import __version__
from service.app import App, create_app
from service.check import watch_routes
from service.dagster import DagsterClient
from service.delivery import Delivery, DeliverySettings, Links
from service.health import ConsumerLag, Heartbeat, probe_forever, readiness
from service.kafka import (
    Producer,
    ensure_topics,
    existing_topics,
    login_refused,
    read_range,
    unauthorized_topics,
)
from service.kafka.access import CREDENTIALS, DLQ_TOPICS, KafkaAccess, topic_scope
from service.kafka.group_commits import GroupCommits
from service.kafka.transactions import Transactions, how_dead_letters_are_written
from service.metrics import Metrics
from service.outcomes import OutcomeLog, outcomes_topic
from service.records import TP, Record
from service.registry import SchemaRegistry
from service.retry import Backoff
from service.routes import RouteTable, check_batch_bytes, check_registry, load_routes
from service.settings import Settings
from service.topic_check import CHECK_INTERVAL_S, HiddenTopics, watch_topics
from service.web import add_pages

logger = logging.getLogger(__name__)

TICK_S = 0.05
LAG_INTERVAL_S = 5.0
GC_THRESHOLDS = (50_000, 20, 10)
SWITCH_INTERVAL_S = 0.001  # `tune_threads`
DLQ_HEADER_ROOM_BYTES = 64 * 1024
# A refused DLQ creation is asked again at least this often: a launch that gets through meanwhile clears its
# routes' pauses, and the next refusal shows them again.
DLQ_CREATE_RETRY_MAX_S = 10.0


def build_worker(settings: Settings, metrics: Metrics | None = None, transactional: bool = False) -> App:
    """The Faust app with everything wired: routes, delivery, DLQ, metrics, pages.

    `transactional`: the cluster serves transactions (`service.kafka.transactions.broker_has_transactions`), so
    each partition's dead letters are written with the offset commit that covers them, in one transaction.
    """
    routes = load_routes(settings.routes_path)
    check_batch_bytes(routes, settings.max_batch_bytes)
    registry = settings.schema_registry.with_url(routes.registry_url)
    check_registry(routes, registry.url)
    metrics = metrics or Metrics()
    app = create_app(settings, subscription_pattern=routes.subscription_pattern)
    client = DagsterClient(settings.dagster_graphql_url, settings.dagster_api_token, settings.dagster_timeout_s,
                           cafile=settings.dagster_ssl_cafile)
    _warn_if_token_in_the_clear(settings)
    security = settings.kafka_security
    # Room for the largest record plus its dlq.* headers (the error message is bounded).
    dlq_producer = Producer(settings.bootstrap_servers, security=security,
                            max_request_size=settings.max_message_bytes + DLQ_HEADER_ROOM_BYTES)
    outcomes = OutcomeLog(settings.bootstrap_servers, outcomes_topic(settings.dlq_topic), dlq_producer, security)
    transactions = Transactions(settings.bootstrap_servers, settings.group_id, settings.transactional_id_prefix,
                                security, settings.max_message_bytes + DLQ_HEADER_ROOM_BYTES) \
        if transactional else None
    links = Links(
        FaustConsumer(app), dlq_producer, outcomes,
        lambda topic, partition, start, end: read_range(
            settings.bootstrap_servers, topic, partition, start, end, security=security),
        on_fatal=lambda exc: app.crash(exc),
        registry=SchemaRegistry(registry) if routes.framed else None, transactions=transactions,
    )
    delivery = Delivery(DeliverySettings.from_settings(settings), routes, client, links, metrics)
    access = app.kafka_access = KafkaAccess(delivery.pauses, routes)
    app.group_commits = GroupCommits(settings.bootstrap_servers, security)
    _add_intake(app, routes, delivery)
    _add_lifecycle(app, settings, delivery, dlq_producer, client, outcomes)
    _add_access_checks(app, settings, delivery, access)

    heartbeat = Heartbeat()
    lag = ConsumerLag(metrics)

    async def ready() -> dict[str, Any]:
        checks = await readiness(settings.bootstrap_servers, client, bool(app.consumer.assignment()))
        return {**checks, "routes_paused": delivery.pauses.status()}

    add_pages(app, metrics, ready, heartbeat.status, lambda: _status(app, settings, delivery, lag))
    _add_monitors(app, settings, routes, delivery, metrics, heartbeat, client, lag)
    metrics.build_info.labels(__version__).set(1)
    return app


class FaustConsumer:
    """The way back up from `Delivery` to Faust's consumer (`service.delivery.ConsumerLink`)."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def fence(self, tp: TP, offset: int) -> bool:
        return await self.app.consumer.prove_ownership(tp, offset)  # type: ignore[attr-defined,no-any-return]

    def mark_done(self, tp: TP, next_offset: int) -> None:
        self.app.consumer.mark_done(tp, next_offset)  # type: ignore[attr-defined]

    def pause(self, tps: set[TP]) -> None:
        """Stop fetching these partitions (a paused route's), where this worker holds them."""
        self.app.consumer.pause_partitions(self._held(tps))

    def resume(self, tps: set[TP]) -> None:
        self.app.consumer.resume_partitions(self._held(tps))

    def committing(self, tp: TP) -> AbstractAsyncContextManager[None]:
        return self.app.consumer.committing(tp)  # type: ignore[attr-defined,no-any-return]

    def committed(self, tp: TP, offset: int) -> None:
        self.app.consumer.committed(tp, offset)  # type: ignore[attr-defined]

    def _held(self, tps: set[TP]) -> set[Any]:
        return {tp for tp in self.app.consumer.assignment() if TP.of(tp) in tps}


def tune_gc() -> None:
    """Collect garbage less often than CPython's default (700, 10, 10) allows.

    Open batches hold tens of thousands of records, and the default thresholds
    had young collections re-scan them over and over: measured here, the
    worker consumed 25-30% more with these thresholds (600,000 messages, one
    worker). What exists at start is frozen out of collections altogether.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def tune_threads() -> None:
    """Hand the GIL between threads every millisecond instead of CPython's default five.

    The worker runs two: Faust's consumer thread, which unpacks fetched
    batches in long stretches, and the app's loop, which answers the fencing
    commit and Dagster's replies. A thread that wants the GIL waits up to a
    whole interval, and a fence wants it twice (its request, its answer):
    measured on Apache Kafka in one quick benchmark run each, a fence took
    10.1 ms per launch with the default and 8.7 ms with 1 ms (runs of the
    same setting differ by about that much), and the throughput did not
    move beyond that noise.
    """
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def _warn_if_token_in_the_clear(settings: Settings) -> None:
    url = urlparse(settings.dagster_graphql_url)
    if settings.dagster_api_token and url.scheme == "http" and url.hostname not in ("localhost", "127.0.0.1", "::1"):
        logger.warning("DAGSTER_API_TOKEN is sent without TLS to %s: use an https:// DAGSTER_GRAPHQL_URL",
                       url.hostname)


def _add_monitors(app: App, settings: Settings, routes: RouteTable, delivery: Delivery, metrics: Metrics,
                  heartbeat: Heartbeat, client: DagsterClient, lag: ConsumerLag) -> None:

    @app.task
    async def beat() -> None:
        await heartbeat.run_forever()

    @app.task
    async def probe_dependencies() -> None:
        await probe_forever(metrics, client, settings.bootstrap_servers, settings.probe_interval_s)

    @app.timer(LAG_INTERVAL_S, name="kafka_dagster.consumer_lag")
    async def consumer_lag() -> None:
        tps = [tp for tp in app.consumer.assignment() if routes.for_topic(tp.topic)]
        if not tps:
            return
        try:
            ends = await app.consumer.highwaters(*tps)
        except Exception as exc:  # a broker hiccup must not stop the timer
            logger.warning("reading end offsets for the lag gauge failed: %r", exc)
            return
        committed = {TP.of(tp): _committed(app, tp, delivery) for tp in tps}
        lag.update({TP.of(tp): end for tp, end in ends.items()}, committed, delivery.next_offsets)


def _status(app: App, settings: Settings, delivery: Delivery, lag: ConsumerLag) -> dict[str, Any]:
    """The /status document: `Delivery.snapshot` with each partition's committed offset and lag."""
    snapshot = delivery.snapshot()
    for partition in snapshot["partitions"]:
        tp = TP(partition["topic"], partition["partition"])
        partition["committed"] = app.consumer.committed_offset(tp)  # type: ignore[attr-defined]
        partition["lag"] = lag.lags.get(tp)
    return {"version": __version__, "group_id": settings.group_id, "dlq_topic": settings.dlq_topic, **snapshot}


def _committed(app: App, tp: Any, delivery: Delivery) -> int | None:
    """The partition's committed offset: Faust's last commit, else where this worker started reading."""
    committed = app.consumer.committed_offset(tp)  # type: ignore[attr-defined]
    if committed is not None:
        return int(committed)
    return delivery.positions.get(TP.of(tp))


def _add_intake(app: App, routes: RouteTable, delivery: Delivery) -> None:
    """Subscribe to the routed topics (by pattern when a route has one: `service.consumer`); every
    fetched chunk goes to `delivery`, commits follow it."""
    if routes.topics:
        app.topics.add(app.topic(*routes.topics, key_type=bytes, value_type=bytes, key_serializer="raw",
                                 value_serializer="raw", allow_empty=True))

    async def on_records(tp: Any, fetched: Sequence[Record]) -> None:
        epoch = delivery.epoch(TP.of(tp))
        for record in fetched:
            record.epoch = epoch
        await delivery.on_records(fetched)

    app.record_sink = on_records

    @app.task
    async def close_expired_batches() -> None:
        """Close each batch when its wait is over: sleep to the next deadline, waking every TICK_S
        at the latest, as batches opened meanwhile may be due sooner."""
        while True:
            await asyncio.sleep(delivery.seconds_to_next_deadline(TICK_S))
            await delivery.tick()


def _add_access_checks(app: App, settings: Settings, delivery: Delivery, access: KafkaAccess) -> None:
    """The routed topics (missing, or hidden by the ACLs), the DLQ topic, and the worker's login, each watched:
    a refusal by the broker pauses the routes it touches until it ends (`service.kafka.access`)."""
    bootstrap, security = settings.bootstrap_servers, settings.kafka_security

    async def topic_visible(topic: str) -> None:
        access.accept(topic_scope(topic))
        await app.consumer._thread.refresh_metadata()  # type: ignore[attr-defined]  # service.consumer

    hidden = HiddenTopics(lambda topics: unauthorized_topics(bootstrap, topics, security),
                          lambda topic, exc: access.refuse(topic_scope(topic), exc, quiet_ends=False), topic_visible)

    @app.task
    async def check_topics() -> None:
        await watch_topics(delivery.routes.values(), lambda: existing_topics(bootstrap, security),
                           delivery.pauses.pause, lambda route, reason: delivery.pauses.resume(route, reason=reason),
                           bootstrap, interval_s=min(CHECK_INTERVAL_S, settings.topic_refresh_s), hidden=hidden)

    @app.task
    async def create_dlq_topic() -> None:
        await access.until_accepted(DLQ_TOPICS, lambda: delivery.retry_transient(
            lambda: ensure_topics(bootstrap, {settings.dlq_topic: 1}, security), "creating the DLQ topic"),
            Backoff(base_s=1.0, max_delay_s=DLQ_CREATE_RETRY_MAX_S))

    @app.task
    async def check_login() -> None:
        """A fresh login every probe interval: a credential revoked while the worker runs shows here first."""
        if security.protocol == "PLAINTEXT":
            return
        while True:
            refused = await login_refused(bootstrap, security)
            if refused is None:
                access.accept(CREDENTIALS)
            else:
                access.refuse(CREDENTIALS, refused)
            await asyncio.sleep(settings.probe_interval_s)


def _add_lifecycle(app: App, settings: Settings, delivery: Delivery, dlq_producer: Producer,
                   client: DagsterClient, outcomes: OutcomeLog) -> None:
    revoke_timeout_s = settings.session_timeout_s / 2

    async def before_stop() -> None:
        """SIGTERM: stop fetching, launch what is open, commit what is covered."""
        logger.info("stopping: launching open batches (at most %.0fs) and committing",
                    settings.shutdown_timeout_s)
        app.consumer.stop_flow()
        app.flow_control.suspend()
        await delivery.close(settings.shutdown_timeout_s)
        await app.commit(None)  # type: ignore[arg-type]

    app.before_stop = before_stop

    async def before_seek(tps: set[Any]) -> None:
        await delivery.before_seek(TP.of(tp) for tp in tps)

    app.before_seek = before_seek  # read by service.consumer

    if delivery.transactions is not None:
        @app.timer(settings.dead_letter_flush_s, name="kafka_dagster.dead_letters")
        async def flush_dead_letters() -> None:
            """Write each partition's due dead letters with the commit that covers them."""
            await delivery.flush_dead_letters()

    @app.task
    async def say_how_dead_letters_are_written() -> None:
        logger.info(how_dead_letters_are_written(delivery.transactions is not None))

    @app.task
    async def watch_runs() -> None:
        await delivery.watcher.run_forever()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # Faust's signal type wants a keyword `signal`
    async def on_assigned(app: Any, assigned: set[Any], **kwargs: Any) -> None:
        delivery.on_assigned(TP.of(tp) for tp in assigned)
        app.consumer.add_future(app.consumer.prepare_proofs(assigned))

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: Any, revoked: set[Any], **kwargs: Any) -> None:
        await delivery.on_revoked({TP.of(tp) for tp in revoked}, revoke_timeout_s)

    @app.task
    async def check_routes() -> None:
        """`kafka-dagster check` at start: a route that fails it pauses, with the reason, until it passes."""
        await watch_routes(delivery.routes.values(), client, delivery.pauses, settings.route_retry_max_delay_s)


    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def on_shutdown(app: Any, **kwargs: Any) -> None:
        closing = [outcomes.stop(), dlq_producer.stop(), client.aclose()]
        if app.group_commits is not None:
            closing.append(app.group_commits.stop())
        if delivery.transactions is not None:
            closing.append(delivery.transactions.stop())
        if delivery.framed is not None:
            closing.append(delivery.framed.registry.aclose())
        await asyncio.gather(*closing, return_exceptions=True)
