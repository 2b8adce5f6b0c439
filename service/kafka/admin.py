"""Topics on the cluster: which exist, which the worker may not Describe, their partitions, and creating them.

Every admin client takes its TLS/SASL arguments from `service.kafka.security`
and has its errors translated by `service.kafka.errors`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, TopicAuthorizationFailedError, for_code
from aiokafka.protocol.metadata import MetadataRequest

from service.kafka.errors import map_kafka_errors
from service.kafka.security import PLAINTEXT, KafkaSecurity, aiokafka_kwargs

logger = logging.getLogger(__name__)


async def existing_topics(bootstrap_servers: str, security: KafkaSecurity = PLAINTEXT) -> set[str]:
    """The names of the topics on the cluster now."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **aiokafka_kwargs(security))
    try:
        with map_kafka_errors(f"listing topics on {bootstrap_servers}"):
            await admin.start()
            return set(await admin.list_topics())
    finally:
        await admin.close()


async def ensure_topics(bootstrap_servers: str, topics: Mapping[str, int],
                        security: KafkaSecurity = PLAINTEXT, configs: Mapping[str, str] | None = None) -> None:
    """Create each topic with its number of partitions (and `configs`) unless it exists."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **aiokafka_kwargs(security))
    try:
        with map_kafka_errors(f"creating topics on {bootstrap_servers}", needs="Create"):
            await admin.start()
            existing = set(await admin.list_topics())  # only the topics the worker may Describe
            missing = [NewTopic(name, partitions, 1, topic_configs=dict(configs or {}))
                       for name, partitions in topics.items() if name not in existing]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    response = await admin.create_topics(missing)
                    _raise_topic_errors(response.topic_errors)
                logger.info("created topics %s", ", ".join(t.name for t in missing))
    finally:
        await admin.close()


async def unauthorized_topics(bootstrap_servers: str, topics: Iterable[str],
                              security: KafkaSecurity = PLAINTEXT) -> set[str]:
    """Which of `topics` the worker may not even Describe (the broker answers TOPIC_AUTHORIZATION_FAILED).

    A cluster lists only the topics a principal may Describe, so to the
    worker such a topic looks missing. Asked by name, the broker tells the
    two apart; the request never auto-creates a topic.
    """
    names = sorted(set(topics))
    if not names:
        return set()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **aiokafka_kwargs(security))
    try:
        with map_kafka_errors(f"describing topics on {bootstrap_servers}"):
            await admin.start()
            response = await admin._send_request(MetadataRequest(names, allow_auto_topic_creation=False))
    finally:
        await admin.close()
    return {t["topic"] for t in response.to_object()["topics"]
            if t["error_code"] == TopicAuthorizationFailedError.errno}


def _raise_topic_errors(topic_errors: Iterable[tuple[Any, ...]]) -> None:
    """Raise the first error a CreateTopics answer carries per topic (aiokafka returns them unread)."""
    for topic, error_code, *_ in topic_errors:
        if error_code:
            error = for_code(error_code)
            raise error(topic) if error is TopicAuthorizationFailedError else error()


async def topic_partitions(bootstrap_servers: str, topics: Iterable[str],
                           security: KafkaSecurity = PLAINTEXT) -> dict[str, list[int]]:
    """The partition numbers of each of `topics` that exists; a missing topic is left out.

    It asks for the metadata of every topic, so a cluster that auto-creates topics
    creates none. A consumer's own metadata cannot tell: aiokafka bootstraps with a
    request naming no topics, which Apache Kafka answers with none (Tansu with all),
    so its `partitions_for_topic` knows only the topics it was given.
    """
    wanted = set(topics)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **aiokafka_kwargs(security))
    try:
        with map_kafka_errors(f"describing topics on {bootstrap_servers}"):
            await admin.start()
            described = await admin.describe_topics()
    finally:
        await admin.close()
    return {t["topic"]: sorted(p["partition"] for p in t["partitions"])
            for t in described if t["topic"] in wanted and t["error_code"] == 0}
