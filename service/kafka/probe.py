"""Probing the brokers: a TCP connection, and a TLS/SASL handshake at start and while the worker runs.

A TLS or SASL failure cannot pass by waiting: `check_security` finds it at
start and raises `ConfigurationError` with one line naming what to fix;
`login_refused` finds a credential revoked while the worker runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError

from service.errors import ConfigurationError, KafkaNotAuthenticated
from service.kafka.security import KafkaSecurity, aiokafka_kwargs

logger = logging.getLogger(__name__)


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
