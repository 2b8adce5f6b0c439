"""aiokafka at the edge: topic creation, a producer and readers, with errors translated.

Every aiokafka error is translated in one place, `map_kafka_errors`, by
aiokafka's own `retriable` flag: failures that may pass (connection lost,
timeouts, leader changes) become `BrokerUnavailable` (transient), the rest
`KafkaRejected`; the rest of the code never sees aiokafka exceptions. A
refusal by the broker's authorizer (`TOPIC_AUTHORIZATION_FAILED`,
`GROUP_AUTHORIZATION_FAILED`, ...) becomes `KafkaNotAuthorized`, naming the
ACL to grant: a failure of the system, which pauses what it touches.
A TLS or SASL failure cannot pass by waiting: `check_security` finds it at
start and raises `ConfigurationError` with one line naming what to fix.
Every client takes its TLS/SASL arguments from `service.kafka.security`.
Every reader here reads committed records only (`READ_COMMITTED`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    for_code,
)
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.structs import ConsumerRecord

from service.errors import (
    BrokerUnavailable,
    ConfigurationError,
    KafkaNotAuthenticated,
    KafkaNotAuthorized,
    KafkaRejected,
)
from service.kafka.security import KafkaSecurity, aiokafka_kwargs
from service.records import Record

PLAINTEXT = KafkaSecurity()
# Every reader reads committed records only: the DLQ and its companion topics are written in transactions
# (`service.kafka.transactions`); an aborted dead letter is never seen, and an open transaction's records not yet.
READ_COMMITTED = "read_committed"

logger = logging.getLogger(__name__)


# Errors aiokafka does not flag retriable that still only mean "not now": the client gave up waiting.
TRANSIENT_UNFLAGGED = (KafkaTimeoutError,)


@contextlib.contextmanager
def map_kafka_errors(what: str, needs: str | None = None) -> Iterator[None]:
    """Translate aiokafka's errors raised inside the block: retriable -> `BrokerUnavailable`, an authorizer's
    refusal -> `KafkaNotAuthorized` (`needs`: the operation the block needs, e.g. "Write"), else `KafkaRejected`."""
    try:
        yield
    except KafkaError as exc:
        raise kafka_error(what, exc, needs) from exc


def kafka_error(what: str, exc: KafkaError, needs: str | None = None) -> BrokerUnavailable | KafkaRejected:
    refused = not_authorized(what, exc, needs)
    if refused is not None:
        return refused
    if exc.retriable or isinstance(exc, TRANSIENT_UNFLAGGED):
        return BrokerUnavailable(f"{what}: {exc!r}")
    return KafkaRejected(f"{what}: {exc!r}")


# The resource kind each authorization error names, and the operation to grant when the caller names none.
AUTHORIZATION_ERRORS: dict[type[KafkaError], tuple[str, str]] = {
    TopicAuthorizationFailedError: ("topic", "Read"),
    GroupAuthorizationFailedError: ("group", "Read"),
    ClusterAuthorizationFailedError: ("cluster", "Create"),
    TransactionalIdAuthorizationFailed: ("transactional-id", "Write"),
}


def not_authorized(what: str, exc: KafkaError, needs: str | None = None) -> KafkaNotAuthorized | None:
    """`exc` as the ACL the worker lacks, or None if it is no authorization error.

    aiokafka raises some of them wrapped: a refused offset fetch as a plain
    `KafkaError` whose message is the refusal's repr; those are recognised by name.
    """
    kind = error_class = None
    for candidate, (resource_kind, default) in AUTHORIZATION_ERRORS.items():
        if isinstance(exc, candidate) or candidate.__name__ in str(exc):
            kind, error_class, needs = resource_kind, candidate, needs or default
            break
    if kind is None or error_class is None:
        return None
    names = _resource_names(exc) if isinstance(exc, error_class) else []
    resource = f"{kind} {', '.join(names)}" if names else kind
    operation = needs
    on = f"{kind} {', '.join(names)}" if names else f"the {kind}"
    hint = (f"grant {operation} on {on} to the worker's principal (kafka-acls.sh --add --allow-principal "
            f"User:<the worker's user> --operation {operation} --{kind} {names[0] if names else '<name>'})")
    if kind == "cluster":
        hint = ("grant Create on the cluster to the worker's principal, or create the worker's topics "
                "(the DLQ and <dlq>.outcomes) yourself and grant Describe and Write on them")
    return KafkaNotAuthorized(f"{what}: {error_class.message} ({resource}): the broker's ACLs deny the worker",
                              hint, resource)


def _resource_names(exc: KafkaError) -> list[str]:
    """The topic or group names aiokafka put in the error (a name, a TopicPartition, or a set of them)."""
    names: set[str] = set()
    for arg in exc.args:
        for item in arg if isinstance(arg, (set, frozenset, list)) else [arg]:
            name = getattr(item, "topic", item)  # a TopicPartition names its topic
            if isinstance(name, str) and name:
                names.add(name)
    return sorted(names)


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


class Producer:
    """An idempotent-enough aiokafka producer (acks=all) with translated errors."""

    def __init__(self, bootstrap_servers: str, linger_ms: int = 5, security: KafkaSecurity = PLAINTEXT,
                 max_request_size: int = 1_048_576) -> None:
        """`max_request_size`: the largest record (key, value and headers) it will send."""
        self.bootstrap_servers = bootstrap_servers
        self.linger_ms = linger_ms
        self.security = security
        self.max_request_size = max_request_size
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()

    async def start(self) -> AIOKafkaProducer:
        """The started aiokafka producer (created on first use, inside the event loop, once however many
        senders ask at the same time)."""
        async with self._starting:
            if self._producer is None:
                self._producer = await self._started_producer()
        return self._producer

    async def _started_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers, acks="all",
                                    linger_ms=self.linger_ms,
                                    max_batch_size=max(1_048_576, self.max_request_size),
                                    max_request_size=self.max_request_size,
                                    **aiokafka_kwargs(self.security))
        try:
            with map_kafka_errors("connecting the producer"):
                await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   headers: list[tuple[str, bytes]] | None = None, timestamp_ms: int | None = None,
                   partition: int | None = None) -> None:
        """Send one record and wait for the broker's acknowledgement."""
        producer = await self.start()
        with map_kafka_errors(f"producing to {topic}", needs="Write"):
            await producer.send_and_wait(topic, value=value, key=key, headers=headers or None,
                                         timestamp_ms=timestamp_ms, partition=partition)

    async def send_batch(self, topic: str, records: Sequence[tuple[bytes | None, bytes | None]],
                         partition: int | None = None, headers: list[tuple[str, bytes]] | None = None) -> None:
        """Send many (key, value) records, each with `headers`, waiting for all acknowledgements at the end."""
        producer = await self.start()
        with map_kafka_errors(f"producing to {topic}", needs="Write"):
            futures = [await producer.send(topic, value=v, key=k, partition=partition, headers=headers or None)
                       for k, v in records]
            for future in futures:
                await future


    async def enqueue(self, topic: str, key: bytes | None, value: bytes | None,
                      headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future[object]:
        """Hand one record to the producer without waiting for its acknowledgement: await the
        returned future with `acknowledged` (many at once), so sending never waits for one ack per record."""
        producer = await self.start()
        with map_kafka_errors(f"producing to {topic}", needs="Write"):
            return await producer.send(topic, value=value, key=key, headers=headers or None)

    @staticmethod
    async def acknowledged(acks: Sequence[asyncio.Future[object]]) -> None:
        """Wait until the broker has acknowledged every record of `acks` (from `enqueue`)."""
        with map_kafka_errors("producing", needs="Write"):
            for ack in acks:
                await ack


async def read_range(bootstrap_servers: str, topic: str, partition: int, start: int, end: int,
                     timeout_s: float = 30.0, security: KafkaSecurity = PLAINTEXT) -> list[Record]:
    """The records of one partition with offsets in [start, end] still in the log, read without a consumer group.

    Records below the log start are gone (retention) and are not waited for;
    the read ends once the position passes `end`, so gaps (compaction,
    transaction markers) do not hold it up either.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level=READ_COMMITTED,
                                **aiokafka_kwargs(security))
    records: list[Record] = []
    try:
        await consumer.start()
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        start = max(start, (await consumer.beginning_offsets([tp]))[tp])
        if start > end:
            return []
        consumer.seek(tp, start)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while await consumer.position(tp) <= end:
            if asyncio.get_running_loop().time() > deadline:
                raise BrokerUnavailable(f"reading {topic}/{partition} offsets {start}-{end} timed out")
            fetched = await consumer.getmany(tp, timeout_ms=500)
            records.extend(Record(topic, partition, message.offset, message.timestamp, message.key, message.value,
                                  list(message.headers or ()))
                           for message in fetched.get(tp, []) if message.offset <= end)
    except KafkaError as exc:
        raise kafka_error(f"reading {topic}/{partition}", exc) from exc
    finally:
        await consumer.stop()
    return records


async def read_topic(bootstrap_servers: str, topic: str, timeout_s: float = 30.0,
                     security: KafkaSecurity = PLAINTEXT) -> list[tuple[int, int, object]]:
    """Every record of `topic` present now, as (partition, offset, message).

    End offsets are treated as a lower bound and reading stops at the first
    empty fetch after them: some Kafka-compatible brokers (Tansu) report the
    last batch's base offset + 1 as the end offset.
    """
    tps = await _topic_partitions(bootstrap_servers, topic, security)
    if not tps:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level=READ_COMMITTED,
                                **aiokafka_kwargs(security))
    found: list[tuple[int, int, object]] = []
    try:
        await consumer.start()
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if loop.time() > deadline:
                raise BrokerUnavailable(f"reading {topic} timed out")
            fetched = await consumer.getmany(*tps, timeout_ms=300)
            for tp, messages in fetched.items():
                for message in messages:
                    found.append((tp.partition, message.offset, message))
            # The position, not the last record's offset + 1: transaction markers take offsets too.
            if not any(fetched.values()) and all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                return found
    except KafkaError as exc:
        raise kafka_error(f"reading {topic}", exc) from exc
    finally:
        await consumer.stop()


async def stream_topic(bootstrap_servers: str, topic: str, from_offset: int | None = None, follow: bool = False,
                       stall_timeout_s: float = 30.0, security: KafkaSecurity = PLAINTEXT,
                       ) -> AsyncGenerator[ConsumerRecord[bytes, bytes]]:
    """The records of every partition of `topic` (from `from_offset` in each, else its beginning), as they
    are fetched, without a consumer group.

    Without `follow` it ends at the end of the topic as it was when it started
    (an empty fetch at or past the end offsets, which Tansu reports too low);
    with `follow` it waits for new records until cancelled. Nothing is kept in
    memory: a topic of any size streams. A read that makes no progress for
    `stall_timeout_s` while records remain raises `BrokerUnavailable`.
    """
    tps = await _topic_partitions(bootstrap_servers, topic, security)
    if not tps:
        return
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level=READ_COMMITTED,
                                **aiokafka_kwargs(security))
    try:
        with map_kafka_errors(f"reading {topic}"):
            await consumer.start()
            consumer.assign(tps)
            await _seek(consumer, tps, from_offset)
            ends = await consumer.end_offsets(tps)
        loop = asyncio.get_running_loop()
        progress_at = loop.time()
        while True:
            with map_kafka_errors(f"reading {topic}"):
                fetched = await consumer.getmany(*tps, timeout_ms=300, max_records=500)
            for messages in fetched.values():
                for message in messages:
                    yield message
            if any(fetched.values()):
                progress_at = loop.time()
                continue
            if follow:
                continue
            with map_kafka_errors(f"reading {topic}"):
                positions = [await consumer.position(tp) for tp in tps]
            if all(position >= ends[tp] for position, tp in zip(positions, tps, strict=True)):
                return
            if loop.time() - progress_at > stall_timeout_s:
                raise BrokerUnavailable(f"reading {topic}: no record for {stall_timeout_s:.0f}s before its end")
    finally:
        await consumer.stop()


async def _topic_partitions(bootstrap_servers: str, topic: str, security: KafkaSecurity) -> list[TopicPartition]:
    partitions = await topic_partitions(bootstrap_servers, [topic], security)
    return [TopicPartition(topic, p) for p in partitions.get(topic, [])]


async def _seek(consumer: AIOKafkaConsumer, tps: list[TopicPartition], from_offset: int | None) -> None:
    await consumer.seek_to_beginning(*tps)
    if from_offset is not None:
        beginnings = await consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(from_offset, beginnings[tp]))


async def check_security(bootstrap_servers: str, security: KafkaSecurity, timeout_s: float = 15.0) -> None:
    """Complete one TLS/SASL handshake with the first reachable bootstrap server, or raise `ConfigurationError`.

    An unreachable broker is not a security failure: the worker starts and
    retries as it would without TLS. A broker that answers but rejects the
    certificate or the credentials is, and it will not change its mind.
    """
    if security.protocol == "PLAINTEXT":
        return
    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        if await tcp_reachable(host, int(port), timeout_s):
            await _handshake(host, int(port), security, timeout_s)
            return
    logger.warning("no Kafka bootstrap server of %s is reachable; TLS/SASL not checked yet", bootstrap_servers)


class NoHandshakeAnswer(ConfigurationError):
    """The broker accepted the connection but did not complete the handshake in time."""


LOGIN_HINT = ("restore the worker's credentials on the broker (e.g. kafka-configs.sh --alter --entity-type users "
              "--entity-name <user> --add-config 'SCRAM-SHA-512=[password=...]'), or set the new ones in "
              "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD and restart the worker")


async def login_refused(bootstrap_servers: str, security: KafkaSecurity,
                        timeout_s: float = 15.0) -> KafkaNotAuthenticated | None:
    """One fresh TLS/SASL login with the first reachable bootstrap server, as at start: the broker's refusal,
    or None when it accepts (or no server is reachable or answers: not a refusal).

    Connections the worker holds stay logged in until the broker re-authenticates them
    (`connections.max.reauth.ms`), so a credential revoked while it runs shows first here.
    """
    if security.protocol == "PLAINTEXT":
        return None
    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        if await tcp_reachable(host, int(port), timeout_s):
            try:
                await _handshake(host, int(port), security, timeout_s)
            except NoHandshakeAnswer:
                return None
            except ConfigurationError as exc:
                return KafkaNotAuthenticated(f"a new login to Kafka was refused: {exc}", LOGIN_HINT, "credentials")
            return None
    return None


async def tcp_reachable(host: str, port: int, timeout_s: float) -> bool:
    """True when a TCP connection to host:port opens within `timeout_s`."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def _handshake(host: str, port: int, security: KafkaSecurity, timeout_s: float) -> None:
    where = f"Kafka broker {host}:{port} ({security.describe()})"
    try:
        conn = await asyncio.wait_for(
            create_conn(host, port, request_timeout_ms=int(timeout_s * 1000), **aiokafka_kwargs(security)),
            timeout_s)
    except ssl.SSLCertVerificationError as exc:
        raise ConfigurationError(f"{where}: its TLS certificate is not trusted ({exc.verify_message}); "
                                 "check KAFKA_SSL_CAFILE") from None
    except ssl.SSLError as exc:
        raise _tls_failure(where, exc) from None
    except TimeoutError:
        raise NoHandshakeAnswer(f"{where}: no answer to the handshake within {timeout_s:.0f}s; "
                                "check KAFKA_SECURITY_PROTOCOL") from None
    except (KafkaError, OSError, KeyError, ValueError) as exc:
        tls_error = _ssl_cause(exc)
        if tls_error is not None:  # TLS 1.3: the server's alert (e.g. on our client certificate) comes late
            raise _tls_failure(where, tls_error) from None
        # Class names only: nothing of the credentials may leak. aiokafka's SCRAM raises KeyError
        # when the server's final message carries an error instead of its signature.
        if security.uses_sasl:
            raise ConfigurationError(f"{where}: SASL authentication failed ({exc.__class__.__name__}); check "
                                     "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM") from None
        client_cert = ", and KAFKA_SSL_CERTFILE if the broker requires a client certificate" \
            if security.uses_ssl else ""
        raise ConfigurationError(f"{where}: connection closed during the handshake ({exc.__class__.__name__}); "
                                 f"check KAFKA_SECURITY_PROTOCOL{client_cert}") from None
    with contextlib.suppress(Exception):
        conn.close()


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    cause = exc.__cause__ or exc.__context__
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    return cause


def _tls_failure(where: str, exc: ssl.SSLError) -> ConfigurationError:
    return ConfigurationError(f"{where}: TLS handshake failed ({exc.reason or exc.__class__.__name__}); check "
                              "KAFKA_SECURITY_PROTOCOL, KAFKA_SSL_CAFILE, KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE")
