"""The Faust app, configured from `Settings`."""

from __future__ import annotations

import faust

from service.settings import Settings


def create_app(settings: Settings) -> faust.App:
    """A Faust app whose consumer group, broker and web server come from `settings`.

    Commits follow manual acks only, no internal topics are created, and a
    rebalance does not wait for open batches (the worker hands them over itself).
    """
    return faust.App(
        settings.group_id,
        broker=settings.broker_urls,
        autodiscover=False,
        store="memory://",
        web_enabled=True,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_host=settings.web_host,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 5),
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        topic_allow_declare=False,
        stream_wait_empty=False,
        producer_acks=-1,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
    )
