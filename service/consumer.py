"""Faust's aiokafka consumer with a cheaper hand-off from the fetcher to the streams.

Faust's fetch loop (`Consumer._drain_messages`) hands every message to the
conductor with `wait_first(callback(message), suspend_flow.wait())`: four
tasks and an `asyncio.wait` per message, so that a rebalance can abandon a
hand-off blocked on a full stream buffer. Profiling the worker showed that
machinery as the largest single cost per message (about 40% of the event
loop's time). Almost every hand-off completes without waiting, so here the
callback is first stepped synchronously; only a hand-off that has to wait is
raced against `suspend_flow` exactly as Faust does. Message order, acks and
commits are unchanged.

The loop below is faust-streaming 0.15's `_drain_messages` (pinned `<0.16`)
with that one change, in `_hand_off`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as aiokafka_driver


class _Resumed(Awaitable[Any]):
    """Awaits the rest of a coroutine that was stepped once by hand and yielded `pending`."""

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        pending = self._pending
        while True:
            try:
                sent = yield pending
            except BaseException as exc:  # cancellation included: forwarded into the coroutine
                try:
                    pending = self._coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    pending = self._coro.send(sent)
                except StopIteration as stop:
                    return stop.value


class Consumer(aiokafka_driver.Consumer):
    async def _hand_off(self, callback: Callable[[Any], Awaitable[Any]], message: Any) -> None:
        """`callback(message)`, raced against `suspend_flow` only if it has to wait."""
        coro = callback(message)
        if self.suspend_flow.is_set() or not isinstance(coro, Coroutine):
            await self.wait_first(coro, self.suspend_flow.wait())
            return
        try:
            pending = coro.send(None)
        except StopIteration:
            return
        await self.wait_first(_Resumed(coro, pending), self.suspend_flow.wait())

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        hand_off = self._hand_off
        yield_every = 100
        num_since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await asyncio.sleep(0)
                            num_since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            await hand_off(callback, message)
                            set_read_offset(tp, offset)
                        else:
                            self.log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, message.key, message.value)
                    unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)


class Transport(aiokafka_driver.Transport):
    """The aiokafka transport, creating the consumer above."""

    Consumer = Consumer
