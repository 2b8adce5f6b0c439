"""HTTP to Dagster's GraphQL endpoint: the one place httpx failures become the service's errors.

Connection errors, timeouts, HTTP 5xx, 408 and 425 become `DagsterUnavailable`
and 429 `RateLimited` (transient); 401/403 `Unauthorized`, other 4xx and
GraphQL errors `RequestRejected` (the route pauses); 413 `BatchTooLarge`.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from service.errors import (
    BatchTooLarge,
    DagsterUnavailable,
    KafkaDagsterError,
    RateLimited,
    RequestRejected,
    Unauthorized,
)
from service.http_headers import retry_after_s

TOKEN_HEADER = "Dagster-Cloud-Api-Token"

# HTTP statuses that say "try again later" rather than "this request is wrong".
RETRY_LATER_STATUSES = frozenset({408, 425})


class GraphQL:
    """POSTs GraphQL documents to one Dagster endpoint and classifies what comes back."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None, cafile: str | None = None) -> None:
        """`cafile`: a private CA for an https:// URL; without it, the system's CAs. Verification is never off."""
        headers = {TOKEN_HEADER: token} if token else {}
        self.url = url
        self.shown_url = without_credentials(url)
        self._http = httpx.AsyncClient(headers=headers, timeout=timeout_s, transport=transport,
                                       verify=tls_context(cafile))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def execute(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST one GraphQL document; return its `data`, or raise a classified error."""
        if self._http.is_closed:  # shutting down: tasks still polling must not crash the worker
            raise DagsterUnavailable("the Dagster client is closed (the worker is stopping)")
        try:
            response = await self._http.post(self.url, json={"query": query, "variables": variables or {}})
        except httpx.TransportError as exc:
            raise DagsterUnavailable(f"{type(exc).__name__} talking to Dagster at {self.shown_url}{_tls_hint(exc)}") \
                from exc
        _raise_for_status(response, self.shown_url)
        try:
            body = response.json()
        except ValueError:
            raise RequestRejected(f"{self.shown_url} did not answer with JSON; is it Dagster's /graphql?") from None
        if not isinstance(body, dict) or (not isinstance(body.get("data"), dict) and not body.get("errors")):
            raise RequestRejected(f"{self.shown_url} did not answer with a GraphQL result")
        if body.get("errors"):
            raise RequestRejected(f"GraphQL error: {body['errors'][0].get('message')}")
        return body["data"]  # type: ignore[no-any-return]

    async def ping(self) -> bool:
        """True when the GraphQL endpoint answers (and accepts our token)."""
        try:
            await self.execute("{ version }")
        except KafkaDagsterError:
            return False
        return True

    async def reachable(self) -> bool:
        """True when Dagster's GraphQL endpoint answers at all (a refused token is an answer)."""
        try:
            await self.execute("{ version }")
        except RateLimited:
            return True
        except DagsterUnavailable:
            return False
        except KafkaDagsterError:
            return True
        return True


def _raise_for_status(response: httpx.Response, shown_url: str) -> None:
    """Map an HTTP status other than 200 to the kind of failure it is."""
    status = response.status_code
    if status == 200:
        return
    if status >= 500 or status in RETRY_LATER_STATUSES:
        raise DagsterUnavailable(f"Dagster answered HTTP {status}", status)
    if status == 429:
        retry_after = retry_after_s(response.headers.get("Retry-After"))
        raise RateLimited(f"Dagster answered HTTP 429 (Retry-After: {response.headers.get('Retry-After')})",
                          retry_after)
    if status in (401, 403):
        raise Unauthorized(f"Dagster at {shown_url} answered HTTP {status}: the request was not authorized; "
                           "check DAGSTER_API_TOKEN")
    if status == 413:
        raise BatchTooLarge(f"Dagster at {shown_url} answered HTTP 413: the request is too large")
    raise RequestRejected(f"Dagster at {shown_url} answered HTTP {status}")


def _tls_hint(exc: BaseException) -> str:
    """What to check when the failure underneath is a TLS verification failure."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f" (TLS certificate not trusted: {cause.verify_message}; check DAGSTER_SSL_CAFILE)"
        cause = cause.__cause__ or cause.__context__
    return ""


def without_credentials(url: str) -> str:
    """`url` fit for logs and dead letters: any user:password@ part is dropped."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def tls_context(cafile: str | None = None) -> ssl.SSLContext:
    """Certificate and host name verification, against `cafile` or the system's CAs."""
    return ssl.create_default_context(cafile=cafile)
