"""The fence's fast way (`service.kafka.group_commits`) against a real group coordinator (the session's broker).

An OffsetCommit sent from another client with a member's id and generation is
accepted only while that member holds that generation: what the worker's
fence relies on when it commits from the app's loop instead of the consumer's
thread. Every other answer is "not accepted" (the consumer's own commit then
answers), never an exception.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from service.kafka.group_commits import GroupCommits, Membership
from tests.conftest import Stack
from tests.support import eventually, topic_created, unique


@pytest.fixture
async def member(stack: Stack) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer that joined a group of its own and was assigned the topic's one partition."""
    topic = unique("fast-fence")
    await topic_created(stack.bootstrap, topic, 1)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=stack.bootstrap, group_id=unique("fast-fence-group"),
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        async def assigned() -> bool:
            await consumer.getmany(timeout_ms=200)
            return bool(consumer.assignment()) and consumer._coordinator.coordinator_id is not None

        await eventually(assigned, 60, "the member's assignment")
        yield consumer
    finally:
        await consumer.stop()


def membership_of(consumer: AIOKafkaConsumer, **changed: object) -> Membership:
    coordinator = consumer._coordinator
    fields = {"group_id": coordinator.group_id, "generation": coordinator.generation,
              "member_id": coordinator.member_id, "coordinator_id": coordinator.coordinator_id} | changed
    return Membership(**fields)  # type: ignore[arg-type]


async def test_the_members_generation_is_accepted_and_its_offset_committed(
        stack: Stack, member: AIOKafkaConsumer) -> None:
    commits = GroupCommits(stack.bootstrap)
    try:
        [tp] = member.assignment()
        assert await commits.accepted(membership_of(member), {tp: 42}) == {tp}
        assert await member.committed(tp) == 42
    finally:
        await commits.stop()


async def test_a_stale_generation_an_unknown_member_or_the_wrong_node_is_not_accepted(
        stack: Stack, member: AIOKafkaConsumer) -> None:
    commits = GroupCommits(stack.bootstrap, timeout_s=5)
    try:
        [tp] = member.assignment()
        generation = member._coordinator.generation
        assert await commits.accepted(membership_of(member, generation=generation + 1), {tp: 7}) == set()
        assert await commits.accepted(membership_of(member, member_id="someone-else"), {tp: 7}) == set()
        assert await commits.accepted(membership_of(member, coordinator_id=9_999), {tp: 7}) == set()
        assert await member.committed(tp) is None  # nothing was committed by any of them
    finally:
        await commits.stop()


async def test_a_member_that_left_its_group_proves_nothing(stack: Stack, member: AIOKafkaConsumer) -> None:
    commits = GroupCommits(stack.bootstrap)
    try:
        [tp] = member.assignment()
        left = membership_of(member)
        await member.stop()  # leaves the group (LeaveGroup): the group moves on without it
        assert await eventually(lambda: _refused(commits, left, tp), 30, "the coordinator to refuse the old member")
    finally:
        await commits.stop()


async def _refused(commits: GroupCommits, membership: Membership, tp: TopicPartition) -> bool:
    return await commits.accepted(membership, {tp: 3}) == set()
