"""`GroupCommits` once the worker stops: the consumer's own commit answers, no client is started again."""

from __future__ import annotations

from faust.types import TP

from service.kafka.group_commits import GroupCommits, Membership


async def test_after_stop_nothing_is_accepted_and_nothing_connects() -> None:
    commits = GroupCommits("127.0.0.1:1")  # nothing listens there: a connection attempt would fail loudly
    await commits.stop()
    assert await commits.accepted(Membership("g", 5, "member-1", 1), {TP("orders", 0): 10}) == set()
    assert commits._client is None
