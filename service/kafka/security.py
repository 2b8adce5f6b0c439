"""Kafka TLS and SASL: from settings to client arguments, in one place.

Every Kafka client of the project (the Faust app, the DLQ producer, the
range reader, the admin client, the CLI and the Dagster code location's
Kafka resource) gets its security arguments from here, so they cannot drift:

    KafkaSecurity ──ssl_context()──────> ssl.SSLContext (verifies the broker's certificate and host name)
                  ──aiokafka_kwargs()──> security_protocol, ssl_context, sasl_* for aiokafka
                  ──faust_credentials()> faust.SSLCredentials / faust.SASLCredentials

`faust_credentials` is `service.app`'s, from the same `ssl_context`: nothing
in `service.kafka` imports Faust, so the code location imports this package.
The SASL password is kept out of every `repr`; nothing here logs it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

# The environment variable of each KafkaSecurity field: the worker, the CLI and the code location read these.
ENV = {
    "protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "KAFKA_SASL_MECHANISM",
    "sasl_username": "KAFKA_SASL_USERNAME",
    "sasl_password": "KAFKA_SASL_PASSWORD",
    "ssl_cafile": "KAFKA_SSL_CAFILE",
    "ssl_certfile": "KAFKA_SSL_CERTFILE",
    "ssl_keyfile": "KAFKA_SSL_KEYFILE",
}


@dataclass(frozen=True)
class KafkaSecurity:
    """How to reach the brokers: `KAFKA_SECURITY_PROTOCOL` and its TLS and SASL settings."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def describe(self) -> str:
        """One line for logs and error messages: protocol, mechanism and user, never the password."""
        if self.uses_sasl:
            return f"{self.protocol} ({self.sasl_mechanism} as {self.sasl_username!r})"
        return self.protocol


PLAINTEXT = KafkaSecurity()


def as_env(security: KafkaSecurity) -> dict[str, str]:
    """`security` as the environment variables that say it ("" for what is not set)."""
    return {name: getattr(security, field) or "" for field, name in ENV.items()}


def ssl_context(security: KafkaSecurity) -> ssl.SSLContext | None:
    """A client TLS context that verifies the broker (CA file or the system's CAs), or None without TLS."""
    if not security.uses_ssl:
        return None
    context = ssl.create_default_context(cafile=security.ssl_cafile)
    if security.ssl_certfile:
        context.load_cert_chain(security.ssl_certfile, security.ssl_keyfile)
    return context


def aiokafka_kwargs(security: KafkaSecurity) -> dict[str, Any]:
    """Keyword arguments for `AIOKafkaProducer`, `AIOKafkaConsumer` and `AIOKafkaAdminClient`."""
    kwargs: dict[str, Any] = {"security_protocol": security.protocol}
    context = ssl_context(security)
    if context is not None:
        kwargs["ssl_context"] = context
    if security.uses_sasl:
        kwargs.update(
            sasl_mechanism=security.sasl_mechanism,
            sasl_plain_username=security.sasl_username,
            sasl_plain_password=security.sasl_password,
        )
    return kwargs
