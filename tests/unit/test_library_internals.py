"""The Faust and aiokafka internals the worker relies on, pinned: an upgrade that changes them fails here.

`service/consumer.py` copies faust-streaming 0.15's `_drain_messages` and
`getmany`, overrides private methods of its aiokafka driver and reads the
aiokafka consumer's group generation; `service/fetched_records.py` hooks the
fetcher's record building; `service/app.py` overrides two `App`
methods; `service/consumer.py` reads the consumer's `_committed_offset` (`committed_offset`). None of
that is public API, so nothing else would notice a Faust or aiokafka release
that changes it. When a test here fails, the upgrade is a decision to make:
re-read the code named in the message against the new version, adapt it, then
record the new hash.

`app` is the unstarted app of tests/unit/conftest.py.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from typing import Any

import aiokafka
import faust
import pytest
from aiokafka.consumer.fetcher import Fetcher, FetchResult, PartitionRecords
from aiokafka.consumer.group_coordinator import GroupCoordinator
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP

from service import consumer
from service.app import App

PINNED = "faust-streaming 0.15.x (hashes taken from 0.15.3) and aiokafka 0.14.x"

FaustConsumer = faust_consumer.Consumer
DriverConsumer = aiokafka_driver.Consumer
DriverThread = aiokafka_driver.AIOKafkaConsumerThread

# (class, function, sha256 of its source in faust-streaming 0.15.3, what of ours depends on it)
FAUST_SOURCES: list[tuple[type, str, str, str]] = [
    (FaustConsumer, "_drain_messages", "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417",
     "copied as service/consumer.py Consumer._drain_messages"),
    (FaustConsumer, "getmany", "4b168d84882a70d6e3e2f9804430a63b92f8fd117d3187cbb4aeb54305bda34e",
     "copied as service/consumer.py Consumer._deliver"),
    (FaustConsumer, "_wait_next_records", "6218e1969a636b3ff504ad1b8e7ad58a113572e43d746cc96d684ed5153032c6",
     "called by service/consumer.py Consumer._drain_messages for (records, active_partitions)"),
    (DriverConsumer, "_filter_tps_with_pending_acks",
     "f6f9239774234e7e230eee7c40c686421a66302be95e59c59a9109c2bba5fbd6",
     "overridden by service/consumer.py Consumer (commits follow mark_done)"),
    (DriverConsumer, "_new_offset", "1d2c7ea89a7ad4f1a216c1d51936e569162cd66bd56f889e13fd29c910b58eb0",
     "overridden by service/consumer.py Consumer (commits follow mark_done)"),
    (DriverConsumer, "on_partitions_revoked", "d04b7ae72c6fc206924a2879d6c90dd383f3e8ba6f4b10a19ca99a921eb8f4db",
     "overridden by service/consumer.py Consumer (drops the revoked partitions' marks)"),
    (DriverConsumer, "force_commit", "cc094614d22c70fb03606f8e5b940fddedcc7d46648d53ae6ec53cab1546be13",
     "calls the overridden _filter_tps_with_pending_acks"),
    (DriverConsumer, "_filter_committable_offsets",
     "dc5e9baf5d994485473ce80aed1873b9318f02d735fde21e285de3d0c52a5e0e",
     "calls the overridden _new_offset"),
    (DriverConsumer, "_new_consumer_thread", "0870ec53dea75083995e3565c0f0a25a1c63ecceaeb238e92e2585e3623af5a9",
     "overridden by service/consumer.py Consumer (creates its ConsumerThread)"),
    (DriverThread, "_create_worker_consumer", "c2701bfc3e6f6cad95c2be36d6a255a86e2c57d18d36cc1082b5fb5c482d99d7",
     "wrapped by service/consumer.py ConsumerThread (sets the aiokafka consumer's fetch wait)"),
    (DriverThread, "subscribe", "74f90b8c8cbc6384755c866cb77076cf43865606d98ff4ad705507213f7c6d6b",
     "overridden by service/consumer.py ConsumerThread (subscribes by pattern when a route has topic_pattern)"),
    (DriverThread, "verify_event_path", "b983e7735f647cb34650530fb0f1bc709e8cb67d54c483b939b14b49b8d931e0",
     "Faust's livelock check: reads monitor.stream_inbound_time, which service/consumer.py _deliver writes, and "
     "aiokafka's position, which ConsumerThread lets it read only once set"),
    (DriverThread, "_commit", "932852ce7a23f658804273d0296de6affaa7d21c19311c279712c2fae91a3b03",
     "copied as service/consumer.py ConsumerThread._commit (a commit refused by an ACL pauses, not crashes)"),
    (DriverThread, "seek_to_committed", "775ab0adc4b052abee204d5347a556412b1f77ed4de971adde69a55a1cb6f908",
     "overridden by service/consumer.py ConsumerThread (seeks offset 0 and never-committed partitions too)"),
    (FaustConsumer, "perform_seek", "0e8c130ff4b0afd82c0be9c5fd831316e10febc62c94032833911096e156d7c6",
     "reads what service/consumer.py ConsumerThread.seek_to_committed returns (None: nothing committed)"),
    (faust.App, "_new_transport", "42db531312dd776fc3937154a32f19eeb9ad7d4ebc2722a92d081a2d271baea1",
     "overridden by service/app.py App (the transport of service/consumer.py)"),
    (faust.App, "on_stop", "bfe5a933defb2324031e00f20e2f650176416c192f16c6d70931006699b21938",
     "overridden by service/app.py App (before_stop runs before Faust stops the consumer)"),
]

# Private or undocumented names read or called on the consumer class (service/consumer.py, service/worker.py).
CONSUMER_METHODS = [
    "_wait_next_records", "_filter_tps_with_pending_acks", "_new_offset", "_filter_committable_offsets",
    "_new_consumer_thread", "on_partitions_revoked", "perform_seek", "wait_first", "sleep", "stop_flow",
    "highwaters", "assignment", "pause_partitions", "resume_partitions",
]
# Instance state of an (unstarted) consumer the same code reads or writes.
CONSUMER_STATE = [
    "_read_offset", "_committed_offset", "_stopped", "suspend_flow", "flow_active", "diag", "transport",
    "consumer_stopped_errors", "_thread",
]
# Called on Faust's consumer thread by service/consumer.py ConsumerThread (the fencing commit).
THREAD_METHODS = ["_create_worker_consumer", "_ensure_consumer", "call_thread", "seek_to_committed"]


def upgrade_message(what: str, found: str) -> str:
    return (f"{what}: {found} with faust-streaming {faust.__version__} / aiokafka {aiokafka.__version__}; "
            f"service/consumer.py, service/app.py and service/worker.py are written against {PINNED}. "
            "Re-read service/consumer.py (and app.py, worker.py) against the new version, adapt it, "
            "then update the hash or the name in tests/unit/test_library_internals.py.")


def defining_class(cls: type, name: str) -> type:
    return next(klass for klass in cls.__mro__ if name in vars(klass))


def source_hash(function: Callable[..., Any]) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()


def test_the_pinned_versions_are_installed() -> None:
    assert faust.__version__.startswith("0.15."), upgrade_message("faust-streaming", "a version other than 0.15.x")
    assert aiokafka.__version__.startswith("0.14."), upgrade_message("aiokafka", "a version other than 0.14.x")


@pytest.mark.parametrize(("cls", "name", "recorded", "why"), FAUST_SOURCES,
                         ids=[f"{cls.__name__}.{name}" for cls, name, _, _ in FAUST_SOURCES])
def test_copied_and_overridden_faust_code_is_unchanged(cls: type, name: str, recorded: str, why: str) -> None:
    owner = defining_class(cls, name)
    where = f"{owner.__module__}.{owner.__qualname__}.{name} ({why})"
    actual = source_hash(getattr(cls, name))
    assert actual == recorded, upgrade_message(where, f"its source now hashes to {actual}, not {recorded}")


@pytest.mark.parametrize("name", CONSUMER_METHODS)
def test_the_consumer_methods_relied_on_exist(name: str) -> None:
    assert callable(getattr(DriverConsumer, name, None)), upgrade_message(f"Consumer.{name}", "it is gone")


@pytest.mark.parametrize("name", THREAD_METHODS)
def test_the_thread_methods_relied_on_exist(name: str) -> None:
    assert callable(getattr(DriverThread, name, None)), upgrade_message(f"AIOKafkaConsumerThread.{name}", "it is gone")
    assert issubclass(consumer.ConsumerThread, DriverThread)


def test_fetching_flag_exists() -> None:
    assert isinstance(getattr(faust_consumer, "CONSUMER_FETCHING", None), str), \
        upgrade_message("faust.transport.consumer.CONSUMER_FETCHING", "it is gone")


async def test_the_consumer_and_monitor_state_relied_on_exists(app: App) -> None:
    c = app.consumer
    assert isinstance(c, consumer.Consumer)
    assert isinstance(c._thread, consumer.ConsumerThread)  # type: ignore[attr-defined]
    missing = [name for name in CONSUMER_STATE if not hasattr(c, name)]
    assert not missing, upgrade_message(f"Consumer attributes {missing}", "they are gone")
    assert c._read_offset[TP("t", 0)] is None, \
        upgrade_message("Consumer._read_offset", "it is no longer a defaultdict of None")
    assert c._committed_offset.get(TP("t", 0)) is None
    assert isinstance(app.monitor.stream_inbound_time, dict), \
        upgrade_message("Monitor.stream_inbound_time", "it is no longer a dict")
    assert isinstance(app.consumer_generation_id, int), \
        upgrade_message("App.consumer_generation_id", "it is gone")
    assert callable(getattr(app.flow_control, "suspend", None))


def test_aiokafka_reads_the_fetch_wait_when_the_consumer_starts() -> None:
    """`ConsumerThread` sets `_fetch_max_wait_ms` after construction: it counts only if `start` reads it."""
    init = inspect.getsource(aiokafka.AIOKafkaConsumer.__init__)
    start = inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    assert "self._fetch_max_wait_ms = fetch_max_wait_ms" in init, \
        upgrade_message("AIOKafkaConsumer.__init__", "it no longer stores self._fetch_max_wait_ms")
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in start, \
        upgrade_message("AIOKafkaConsumer.start", "it no longer hands self._fetch_max_wait_ms to its Fetcher")


def test_aiokafka_builds_each_fetched_record_through_the_hook_service_fetched_records_sets() -> None:
    """`service.fetched_records` swaps the fetcher's `_records` dict and sets each new result's
    `PartitionRecords._consumer_record`: it counts only if aiokafka stores results there and builds each
    record through that name."""
    init = inspect.getsource(Fetcher.__init__)
    store = inspect.getsource(Fetcher._proc_fetch_request)
    unpack = inspect.getsource(PartitionRecords._unpack_records)
    assert "self._records = collections.OrderedDict()" in init, \
        upgrade_message("Fetcher.__init__", "it no longer keeps fetched results in self._records")
    assert "self._records[tp] = FetchResult(" in store and "partition_records=partition_records" in store, \
        upgrade_message("Fetcher._proc_fetch_request", "it no longer stores a FetchResult per partition")
    assert "consumer_record = self._consumer_record(tp, record)" in unpack, \
        upgrade_message("PartitionRecords._unpack_records", "it no longer builds records with _consumer_record")
    assert "self._partition_records = partition_records" in inspect.getsource(FetchResult.__init__)


def test_aiokafka_keeps_the_group_generation_on_its_coordinator() -> None:
    """`ConsumerThread._commit_owned` reads `consumer._coordinator.generation` (< 0: not in the group)."""
    start = inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    init = inspect.getsource(GroupCoordinator.__init__)
    assert "self._coordinator = GroupCoordinator(" in start, \
        upgrade_message("AIOKafkaConsumer.start", "it no longer keeps its GroupCoordinator as self._coordinator")
    assert "self.generation = " in init, \
        upgrade_message("GroupCoordinator.__init__", "it no longer keeps the group generation as self.generation")


def test_aiokafka_holds_coordinator_errors_for_the_application() -> None:
    """`ConsumerThread._take_coordinator_error` takes what aiokafka's coordinator holds (`check_errors`), which
    lets it try again, and requests a rejoin after a refused group; `service.kafka.unauthorized_topics` sends
    its own metadata request through the admin client."""
    check = inspect.getsource(GroupCoordinator.check_errors)
    push = inspect.getsource(GroupCoordinator._push_error_to_user)
    assert "self._pending_exception = None" in check and "self._error_consumed_fut.set_result(None)" in check, \
        upgrade_message("GroupCoordinator.check_errors", "it no longer hands over and clears the held error")
    assert "self._pending_exception = exc" in push, \
        upgrade_message("GroupCoordinator._push_error_to_user", "it no longer holds the error for the application")
    assert callable(getattr(GroupCoordinator, "request_rejoin", None))
    assert "self._coordination_task = " in inspect.getsource(GroupCoordinator.__init__)
    assert callable(getattr(aiokafka.AIOKafkaClient, "force_metadata_update", None))
    assert callable(getattr(aiokafka.admin.AIOKafkaAdminClient, "_send_request", None)), \
        upgrade_message("AIOKafkaAdminClient._send_request", "it is gone")
