"""DagsterClient against httpx.MockTransport as the fake Dagster."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.dagster import DagsterClient, JobSelector
from service.dagster.transport import TOKEN_HEADER, _tls_hint, without_credentials
from service.errors import (
    BatchTooLarge,
    DagsterError,
    DagsterUnavailable,
    KafkaDagsterError,
    LaunchRejected,
    RateLimited,
    RequestRejected,
    RouteError,
    TransientError,
    Unauthorized,
)
from service.http_headers import retry_after_s
from tests.tls import make_ca

URL = "http://dagster.test/graphql"
SELECTOR = JobSelector("loc", "__repository__", "process_orders")
Handler = Callable[[httpx.Request], httpx.Response]


class FakeDagster:
    """Answers each POST with `respond(body)`; keeps every request body."""

    def __init__(self, respond: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.bodies: list[dict[str, Any]] = []
        self.respond = respond or (lambda body: {"data": {}})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        self.bodies.append(body)
        answer = self.respond(body)
        return answer if isinstance(answer, httpx.Response) else httpx.Response(200, json=answer)


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., DagsterClient]]:
    clients: list[DagsterClient] = []

    def make(handler: Handler, token: str | None = None) -> DagsterClient:
        client = DagsterClient(URL, token=token, timeout_s=5, transport=httpx.MockTransport(handler))
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def launch_answer(result: dict[str, Any]) -> Callable[[dict[str, Any]], Any]:
    return lambda body: {"data": {"launchRun": result}}


async def test_launch_success_returns_the_run_id(make_client: Callable[..., DagsterClient]) -> None:
    fake = FakeDagster(launch_answer(
        {"__typename": "LaunchRunSuccess", "run": {"runId": "abc-123", "status": "QUEUED"}}))
    client = make_client(fake)
    run_id = await client.launch_run(SELECTOR, {"ops": {"read_batch": {"config": {}}}}, {"kafka/topic": "orders"})
    assert run_id == "abc-123"
    [request] = fake.requests
    assert request.method == "POST" and str(request.url) == URL
    params = fake.bodies[0]["variables"]["executionParams"]
    assert params["selector"] == {
        "repositoryLocationName": "loc", "repositoryName": "__repository__", "jobName": "process_orders"}
    assert params["runConfigData"] == {"ops": {"read_batch": {"config": {}}}}
    assert params["executionMetadata"] == {"tags": [{"key": "kafka/topic", "value": "orders"}]}
    assert "mutation" in fake.bodies[0]["query"] and "launchRun" in fake.bodies[0]["query"]


REJECTIONS: list[dict[str, Any]] = [
    {"__typename": "RunConfigValidationInvalid", "errors": [{"message": "bad a", "reason": "X"},
                                                            {"message": "bad b", "reason": "Y"}]},
    {"__typename": "PipelineNotFoundError", "message": "no such job"},
    {"__typename": "InvalidSubsetError", "message": "bad subset"},
    {"__typename": "UnauthorizedError", "message": "no permission"},
    {"__typename": "ConflictingExecutionParamsError", "message": "conflict"},
    {"__typename": "PresetNotFoundError", "message": "no preset"},
    {"__typename": "NoModeProvidedError", "message": "no mode"},
    {"__typename": "InvalidStepError", "invalidStepKey": "step_x"},
    {"__typename": "InvalidOutputError", "stepKey": "step_y", "invalidOutputName": "out_z"},
    {"__typename": "RunConflict", "message": "already running"},
]


@pytest.mark.parametrize("result", REJECTIONS, ids=[r["__typename"] for r in REJECTIONS])
async def test_every_other_launch_result_is_rejected_by_name(
        make_client: Callable[..., DagsterClient], result: dict[str, Any]) -> None:
    client = make_client(FakeDagster(launch_answer(result)))
    with pytest.raises(LaunchRejected) as info:
        await client.launch_run(SELECTOR, {}, {})
    assert info.value.typename == result["__typename"]
    assert isinstance(info.value, RouteError)  # the route pauses; nothing is dead-lettered
    assert not isinstance(info.value, TransientError)
    assert info.value.reason in ("job_not_found", "run_config_invalid", "launch_rejected", "unauthorized",
                                 "code_location_error")
    assert str(info.value).startswith(result["__typename"] + ": ")


@pytest.mark.parametrize(
    ("result", "detail"),
    [
        (REJECTIONS[0], "bad a; bad b"),
        (REJECTIONS[1], "no such job"),
        (REJECTIONS[7], "step_x"),
        (REJECTIONS[8], "out_z"),
    ],
)
async def test_rejection_messages_carry_dagsters_detail(
        make_client: Callable[..., DagsterClient], result: dict[str, Any], detail: str) -> None:
    client = make_client(FakeDagster(launch_answer(result)))
    with pytest.raises(LaunchRejected, match=detail):
        await client.launch_run(SELECTOR, {}, {})


async def test_python_error_is_transient(make_client: Callable[..., DagsterClient]) -> None:
    client = make_client(FakeDagster(launch_answer(
        {"__typename": "PythonError", "message": "duplicate key", "className": "IntegrityError"})))
    with pytest.raises(TransientError) as info:
        await client.launch_run(SELECTOR, {}, {})
    assert isinstance(info.value, DagsterError)
    assert not isinstance(info.value, RouteError)
    assert info.value.typename == "PythonError"
    assert "duplicate key" in str(info.value)


@pytest.mark.parametrize(
    "exc",
    [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.ConnectTimeout("slow"),
     httpx.RemoteProtocolError("eof")],
    ids=lambda e: type(e).__name__,
)
async def test_transport_failures_are_dagster_unavailable(
        make_client: Callable[..., DagsterClient], exc: httpx.TransportError) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    client = make_client(handler)
    with pytest.raises(DagsterUnavailable) as info:
        await client.launch_run(SELECTOR, {}, {})
    assert isinstance(info.value, TransientError)
    assert type(exc).__name__ in str(info.value)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
async def test_http_5xx_is_dagster_unavailable(make_client: Callable[..., DagsterClient], status: int) -> None:
    client = make_client(FakeDagster(lambda body: httpx.Response(status, text="down")))
    with pytest.raises(DagsterUnavailable, match=str(status)):
        await client.launch_run(SELECTOR, {}, {})


@pytest.mark.parametrize("status", [401, 403])
async def test_http_401_is_rejected_as_unauthorized(make_client: Callable[..., DagsterClient], status: int) -> None:
    client = make_client(FakeDagster(lambda body: httpx.Response(status, text="no")))
    with pytest.raises(Unauthorized) as info:
        await client.launch_run(SELECTOR, {}, {})
    assert info.value.typename == "UnauthorizedError" and info.value.reason == "unauthorized"
    assert info.value.hint == "check DAGSTER_API_TOKEN"


@pytest.mark.parametrize("status", [400, 404, 405])
async def test_other_http_errors_and_graphql_errors_pause_the_route(
        make_client: Callable[..., DagsterClient], status: int) -> None:
    client = make_client(FakeDagster(lambda body: httpx.Response(status, text="bad request")))
    with pytest.raises(RequestRejected, match=str(status)) as info:
        await client.launch_run(SELECTOR, {}, {})
    assert "DAGSTER_GRAPHQL_URL" in info.value.hint
    client = make_client(FakeDagster(lambda body: {"errors": [{"message": "Cannot query field"}], "data": None}))
    with pytest.raises(RequestRejected, match="Cannot query field"):
        await client.launch_run(SELECTOR, {}, {})


@pytest.mark.parametrize(("header", "seconds"), [("7", 7.0), (None, None), ("soon", None)])
async def test_http_429_is_transient_and_carries_retry_after(
        make_client: Callable[..., DagsterClient], header: str | None, seconds: float | None) -> None:
    headers = {"Retry-After": header} if header else {}
    client = make_client(FakeDagster(lambda body: httpx.Response(429, headers=headers, text="slow down")))
    with pytest.raises(RateLimited) as info:
        await client.launch_run(SELECTOR, {}, {})
    assert isinstance(info.value, TransientError)
    assert info.value.retry_after_s == seconds


def test_retry_after_as_an_http_date() -> None:
    assert retry_after_s("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412500.0) == pytest.approx(10.0)
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412500.0) == 0.0


async def test_http_413_is_a_batch_too_large(make_client: Callable[..., DagsterClient]) -> None:
    client = make_client(FakeDagster(lambda body: httpx.Response(413, text="too large")))
    with pytest.raises(BatchTooLarge):
        await client.launch_run(SELECTOR, {}, {})


async def test_an_unknown_job_names_the_code_location_that_failed_to_load(
        make_client: Callable[..., DagsterClient]) -> None:
    def respond(body: dict[str, Any]) -> Any:
        if "workspaceOrError" in body["query"]:
            return {"data": {"workspaceOrError": {"__typename": "Workspace", "locationEntries": [
                {"name": "orders_location", "locationOrLoadError": {
                    "__typename": "PythonError", "message": "ModuleNotFoundError: No module named 'x'\n..."}}]}}}
        return {"data": {"repositoriesOrError": {"__typename": "RepositoryConnection", "nodes": []}}}

    client = make_client(FakeDagster(respond))
    with pytest.raises(LaunchRejected) as info:
        await client.workspace.resolve_job("process_orders")
    assert info.value.reason == "code_location_error"
    assert "orders_location: ModuleNotFoundError: No module named 'x'" in str(info.value)


async def test_a_200_answer_that_is_not_json_is_a_classified_error(
        make_client: Callable[..., DagsterClient]) -> None:
    # BUG (service/dagster/transport.py, GraphQL.execute): `response.json()` is not guarded, so a
    # 200 answer with an HTML body (e.g. DAGSTER_GRAPHQL_URL pointing at the UI, or a proxy page)
    # escapes as json.JSONDecodeError instead of a TransientError/PermanentError; in Delivery that
    # kills the partition's lane task instead of retrying or dead-lettering.
    client = make_client(FakeDagster(lambda body: httpx.Response(200, text="<html>Dagster</html>")))
    with pytest.raises(KafkaDagsterError):
        await client.launch_run(SELECTOR, {}, {})


async def test_token_header_sent_only_when_given(make_client: Callable[..., DagsterClient]) -> None:
    success = launch_answer({"__typename": "LaunchRunSuccess", "run": {"runId": "r", "status": "QUEUED"}})
    with_token, without_token, empty_token = FakeDagster(success), FakeDagster(success), FakeDagster(success)
    await make_client(with_token, token="tok-123").launch_run(SELECTOR, {}, {})
    await make_client(without_token).launch_run(SELECTOR, {}, {})
    await make_client(empty_token, token="").launch_run(SELECTOR, {}, {})
    assert with_token.requests[0].headers[TOKEN_HEADER] == "tok-123"
    assert TOKEN_HEADER not in without_token.requests[0].headers
    assert TOKEN_HEADER not in empty_token.requests[0].headers


async def test_message_content_travels_only_in_variables(make_client: Callable[..., DagsterClient]) -> None:
    fake = FakeDagster(launch_answer({"__typename": "LaunchRunSuccess", "run": {"runId": "r", "status": "Q"}}))
    hostile = '"}) { __typename } } mutation Evil { deleteRun(runId: "x") { __typename } } #'
    config = {"ops": {"read_batch": {"config": {"records": [
        {"offset": 1, "timestamp_ms": 0, "key": "KEY-7f3a", "value": hostile}]}}}}
    tags = {"kafka/topic": "orders-TOPIC-9e1b"}
    await make_client(fake).launch_run(SELECTOR, config, tags)
    body = fake.bodies[0]
    for secret in (hostile, "KEY-7f3a", "orders-TOPIC-9e1b", "deleteRun"):
        assert secret not in body["query"]
    assert body["variables"]["executionParams"]["runConfigData"] == config
    assert set(body) == {"query", "variables"}


REPOSITORIES = {
    "__typename": "RepositoryConnection",
    "nodes": [
        {"name": "__repository__", "location": {"name": "loc_a"}, "jobs": [{"name": "other"}]},
        {"name": "__repository__", "location": {"name": "loc_b"}, "jobs": [{"name": "process_orders"}]},
        {"name": "repo_c", "location": {"name": "loc_c"}, "jobs": [{"name": "process_orders"}]},
    ],
}


async def test_resolve_job_finds_and_caches(make_client: Callable[..., DagsterClient]) -> None:
    fake = FakeDagster(lambda body: {"data": {"repositoriesOrError": REPOSITORIES}})
    client = make_client(fake)
    first = await client.workspace.resolve_job("process_orders")
    second = await client.workspace.resolve_job("process_orders")
    assert first == second == JobSelector("loc_b", "__repository__", "process_orders")
    assert len(fake.requests) == 1
    assert "repositoriesOrError" in fake.bodies[0]["query"]


async def test_resolve_job_honours_location_and_repository(make_client: Callable[..., DagsterClient]) -> None:
    fake = FakeDagster(lambda body: {"data": {"repositoriesOrError": REPOSITORIES}})
    client = make_client(fake)
    assert await client.workspace.resolve_job("process_orders", location="loc_c") == JobSelector(
        "loc_c", "repo_c", "process_orders")
    assert await client.workspace.resolve_job("process_orders", repository="repo_c") == JobSelector(
        "loc_c", "repo_c", "process_orders")
    with pytest.raises(LaunchRejected):
        await client.workspace.resolve_job("process_orders", location="loc_a")


async def test_resolve_unknown_job(make_client: Callable[..., DagsterClient]) -> None:
    fake = FakeDagster(lambda body: {"data": {"repositoriesOrError": REPOSITORIES}})
    client = make_client(fake)
    with pytest.raises(LaunchRejected) as info:
        await client.workspace.resolve_job("no_such_job")
    assert info.value.typename == "PipelineNotFoundError"
    assert "no_such_job" in str(info.value)


async def test_resolve_job_python_error_is_transient_and_not_cached(
        make_client: Callable[..., DagsterClient]) -> None:
    answers = [{"__typename": "PythonError", "message": "loading"}, REPOSITORIES]
    fake = FakeDagster(lambda body: {"data": {"repositoriesOrError": answers.pop(0)}})
    client = make_client(fake)
    with pytest.raises(TransientError):
        await client.workspace.resolve_job("process_orders")
    assert (await client.workspace.resolve_job("process_orders")).location == "loc_b"
    assert len(fake.requests) == 2


async def test_find_runs_sends_the_tag_filter(make_client: Callable[..., DagsterClient]) -> None:
    runs = {"__typename": "Runs", "results": [
        {"runId": "r1", "status": "SUCCESS", "jobName": "process_orders",
         "tags": [{"key": "kafka/offset_end", "value": "9"}]}]}
    fake = FakeDagster(lambda body: {"data": {"runsOrError": runs}})
    [run] = await make_client(fake).find_runs({"kafka/topic": "orders"}, job="process_orders", limit=5)
    assert (run.run_id, run.status, run.job, run.tags) == ("r1", "SUCCESS", "process_orders",
                                                           {"kafka/offset_end": "9"})
    assert fake.bodies[0]["variables"] == {
        "filter": {"tags": [{"key": "kafka/topic", "value": "orders"}], "pipelineName": "process_orders"},
        "limit": 5,
    }


async def test_get_run_not_found_is_none(make_client: Callable[..., DagsterClient]) -> None:
    fake = FakeDagster(lambda body: {"data": {"runOrError": {"__typename": "RunNotFoundError", "message": "x"}}})
    assert await make_client(fake).get_run("r-404") is None


async def test_ping(make_client: Callable[..., DagsterClient]) -> None:
    assert await make_client(FakeDagster(lambda body: {"data": {"version": "1.13"}})).ping() is True
    assert await make_client(FakeDagster(lambda body: httpx.Response(503))).ping() is False


async def test_https_certificates_are_verified_by_default() -> None:
    client = DagsterClient("https://dagster.test/graphql")
    try:
        context = client._http._transport._pool._ssl_context  # type: ignore[attr-defined]
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    finally:
        await client.aclose()


async def test_a_private_ca_file_is_what_the_client_trusts(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "private-ca")
    client = DagsterClient("https://dagster.test/graphql", cafile=str(ca.cert))
    try:
        context = client._http._transport._pool._ssl_context  # type: ignore[attr-defined]
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "private-ca"),),)]
    finally:
        await client.aclose()


async def test_unauthorized_names_the_setting_never_the_token(make_client: Callable[..., DagsterClient]) -> None:
    client = make_client(lambda request: httpx.Response(401), token="tok-0f1e2d3c")
    with pytest.raises(Unauthorized) as info:
        await client.launch_run(SELECTOR, {}, {})
    assert "DAGSTER_API_TOKEN" in str(info.value) and "tok-0f1e2d3c" not in str(info.value)
    assert await client.ping() is False


def test_a_tls_verification_failure_says_what_to_check() -> None:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "unable to get local issuer certificate"
    try:
        try:
            raise error
        except ssl.SSLError as exc:
            raise httpx.ConnectError("failed") from exc
    except httpx.ConnectError as wrapped:
        hint = _tls_hint(wrapped)
    assert "unable to get local issuer certificate" in hint and "DAGSTER_SSL_CAFILE" in hint
    assert _tls_hint(httpx.ConnectError("refused")) == ""


async def test_credentials_in_the_url_never_reach_an_error_message() -> None:
    url = "https://svc:pw-4b3a2c1d@dagster.test/graphql"
    assert without_credentials(url) == "https://dagster.test/graphql"
    assert without_credentials(URL) == URL
    for answer in (httpx.Response(401), httpx.Response(200, text="not json")):
        client = DagsterClient(url, transport=httpx.MockTransport(lambda request, a=answer: a))
        try:
            with pytest.raises(KafkaDagsterError) as info:
                await client.execute("{ version }")
        finally:
            await client.aclose()
        assert "pw-4b3a2c1d" not in str(info.value) and "dagster.test" in str(info.value)


async def test_a_closed_client_answers_unavailable_not_a_crash() -> None:
    """Tasks still polling while the worker stops get a transient error, which they log, not a RuntimeError."""
    client = DagsterClient(URL, transport=httpx.MockTransport(FakeDagster()))
    await client.aclose()
    with pytest.raises(DagsterUnavailable, match="closed"):
        await client.run_statuses(["r"])
