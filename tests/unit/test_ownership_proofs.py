"""Proofs of ownership asked together go out in one commit, none waits for another (`service.ownership_proofs`)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from service.errors import BrokerUnavailable, KafkaNotAuthorized
from service.ownership_proofs import OwnershipProofs


class Coordinator:
    """Answers each commit when the test releases it; records what each commit carried."""

    def __init__(self) -> None:
        self.commits: list[dict[str, int]] = []
        self.release = asyncio.Event()
        self.verdicts: dict[str, bool | BaseException] = {}
        self.fails: BaseException | None = None

    async def commit_many(self, offsets: Mapping[str, int]) -> dict[str, bool | BaseException]:
        self.commits.append(dict(offsets))
        await self.release.wait()
        if self.fails is not None:
            raise self.fails
        return {tp: self.verdicts.get(tp, True) for tp in offsets}


async def until(condition: object) -> None:
    for _ in range(100):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


async def test_proofs_asked_together_go_out_in_one_commit_and_none_waits_for_another() -> None:
    coordinator = Coordinator()
    proofs: OwnershipProofs[str] = OwnershipProofs(coordinator.commit_many)
    first = asyncio.ensure_future(proofs.prove("p0", 10))
    await until(lambda: len(coordinator.commits) == 1)
    later = [asyncio.ensure_future(proofs.prove(tp, offset)) for tp, offset in (("p1", 20), ("p2", 30))]
    await until(lambda: len(coordinator.commits) == 2)  # out while the first is still unanswered
    assert not first.done() and not any(t.done() for t in later)
    coordinator.release.set()
    assert await first is True and [await t for t in later] == [True, True]
    assert coordinator.commits == [{"p0": 10}, {"p1": 20, "p2": 30}]


async def test_each_partition_gets_its_own_verdict() -> None:
    coordinator = Coordinator()
    coordinator.release.set()
    refused = KafkaNotAuthorized("committing: TOPIC_AUTHORIZATION_FAILED", "grant Read", "topic b")
    coordinator.verdicts = {"a/1": False, "b/0": refused}
    proofs: OwnershipProofs[str] = OwnershipProofs(coordinator.commit_many)
    results = await asyncio.gather(proofs.prove("a/0", 1), proofs.prove("a/1", 2), proofs.prove("b/0", 3),
                                   return_exceptions=True)
    assert results == [True, False, refused]


async def test_a_commit_that_fails_as_a_whole_fails_every_proof_it_carried_and_the_next_go_on() -> None:
    coordinator = Coordinator()
    coordinator.fails = BrokerUnavailable("the group coordinator did not answer in 10s")
    coordinator.release.set()
    proofs: OwnershipProofs[str] = OwnershipProofs(coordinator.commit_many)
    results = await asyncio.gather(proofs.prove("p0", 1), proofs.prove("p1", 2), return_exceptions=True)
    assert all(isinstance(r, BrokerUnavailable) for r in results)
    coordinator.fails = None
    assert await proofs.prove("p0", 1) is True


async def test_a_caller_that_gives_up_leaves_the_others_of_its_commit_their_verdicts() -> None:
    coordinator = Coordinator()
    proofs: OwnershipProofs[str] = OwnershipProofs(coordinator.commit_many)
    abandoned = asyncio.ensure_future(proofs.prove("p1", 20))
    kept = asyncio.ensure_future(proofs.prove("p2", 30))
    await until(lambda: len(coordinator.commits) == 1)
    abandoned.cancel()
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    coordinator.release.set()
    assert await kept is True
    assert coordinator.commits == [{"p1": 20, "p2": 30}]


async def test_a_caller_that_gives_up_while_its_proof_is_out_leaves_no_unread_error() -> None:
    coordinator = Coordinator()
    coordinator.fails = BrokerUnavailable("no answer")
    proofs: OwnershipProofs[str] = OwnershipProofs(coordinator.commit_many)
    gone = asyncio.ensure_future(proofs.prove("p0", 10))
    await until(lambda: len(coordinator.commits) == 1)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    [sending] = proofs._sending
    coordinator.release.set()
    await until(sending.done)
    assert sending.exception() is None  # its answer was cancelled, not failed
    coordinator.fails = None
    assert await proofs.prove("p0", 11) is True


async def test_two_proofs_of_one_partition_at_once_are_a_caller_error() -> None:
    coordinator = Coordinator()
    proofs: OwnershipProofs[str] = OwnershipProofs(coordinator.commit_many)
    first = asyncio.ensure_future(proofs.prove("p0", 10))
    await until(lambda: len(coordinator.commits) == 1)
    with pytest.raises(RuntimeError, match="commit lock"):
        await proofs.prove("p0", 11)
    coordinator.release.set()
    assert await first is True
    assert await proofs.prove("p0", 12) is True  # answered: the next proof of it may go
