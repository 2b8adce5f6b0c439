"""The one pause-and-retry loop: which pause a success clears is its scope's, and only that."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from service.errors import Unauthorized
from service.retry import EVERY_PAUSE, OWN_PAUSE, Backoff, Refusal, Resumes, route_refusal, until_accepted


class Pauses:
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def pause(self, route: str, reason: str, message: str, hint: str) -> None:
        self.events.append(("pause", route, reason))

    def resume(self, route: str, reason: str | None = None) -> None:
        self.events.append(("resume", route, reason or "*"))

    async def wait(self, route: str, delay_s: float) -> None:
        self.events.append(("wait", route))


def refused_once() -> Callable[[], Awaitable[str]]:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Unauthorized("token refused")
        return "ok"
    return attempt


@pytest.mark.parametrize(("resumes", "resumed"), [(EVERY_PAUSE, "*"), (OWN_PAUSE, "unauthorized"),
                                                  (Resumes("dlq_write"), "dlq_write")])
async def test_a_refused_attempt_pauses_waits_and_its_success_clears_its_scope(resumes: Resumes,
                                                                                resumed: str) -> None:
    pauses = Pauses()
    result = await until_accepted(refused_once(), pauses=pauses, route="r", resumes=resumes,
                                  refusal=route_refusal, backoff=Backoff(base_s=0.0))
    assert result == "ok"
    assert pauses.events == [("pause", "r", "unauthorized"), ("wait", "r"), ("resume", "r", resumed)]


async def test_a_loop_that_paused_nothing_resumes_nothing_of_its_own() -> None:
    pauses = Pauses()

    async def attempt() -> str:
        return "ok"
    await until_accepted(attempt, pauses=pauses, route="r", resumes=OWN_PAUSE, refusal=route_refusal,
                         backoff=Backoff())
    assert pauses.events == []


async def test_a_failure_that_is_no_refusal_is_raised_and_one_waited_out_pauses_nothing() -> None:
    pauses = Pauses()

    async def attempt() -> str:
        raise KeyError("bug")
    with pytest.raises(KeyError):
        await until_accepted(attempt, pauses=pauses, route="r", resumes=EVERY_PAUSE, refusal=route_refusal,
                             backoff=Backoff())
    waits: list[Refusal] = []

    async def wait(refused: Refusal, delay_s: float) -> None:
        waits.append(refused)
    await until_accepted(refused_once(), pauses=pauses, route="r", resumes=OWN_PAUSE,
                         refusal=lambda exc: Refusal("down", str(exc), "", pauses=False),
                         backoff=Backoff(base_s=0.0), wait=wait)
    assert pauses.events == [] and [w.reason for w in waits] == ["down"]
