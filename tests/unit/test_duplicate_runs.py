"""Cancelled duplicates are counted once each, also when the answer to the cancel was lost."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from service.duplicates import DuplicateRuns
from service.errors import DagsterUnavailable
from service.metrics import Metrics
from service.verdicts import RunInfo


class Runs:
    """Dagster's runs of one batch; a cancel may time out after it landed, or land after it timed out."""

    def __init__(self) -> None:
        self.status = {"a": "QUEUED", "b": "QUEUED"}
        self.cancels: list[str] = []  # what the next terminate requests do: "ok", "lost", "late"

    async def find_runs(self, tags: dict[str, str], job: str | None = None, limit: int = 100) -> list[RunInfo]:
        # As Dagster's run records show them: a run cancelled from the queue has a start time too.
        return [RunInfo(run_id, status, "job", dict(tags), creation_time=ord(run_id),
                        start_time=100.0 if status == "CANCELED" else None)
                for run_id, status in self.status.items()]

    async def terminate_queued(self, run_id: str) -> bool:
        outcome = self.cancels.pop(0)
        if outcome == "lost":  # the webserver cancels it, the answer never comes back
            self.status[run_id] = "CANCELED"
            raise DagsterUnavailable("timed out")
        if outcome == "late":  # the earlier request landed in between: nothing left to cancel
            self.status[run_id] = "CANCELED"
            return False
        self.status[run_id] = "CANCELED"
        return True


class Log:
    def __init__(self) -> None:
        self.duplicates: set[str] = set()

    async def record(self, run_id: str, status: str) -> None:
        self.duplicates.add(run_id)

    async def cancelled_as_duplicates(self) -> set[str]:
        return set(self.duplicates)


def cancelled(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("kafka_dagster_duplicate_runs_cancelled_total", {"dagster_job": "job"})


async def test_a_cancel_confirmed_by_its_answer_is_counted_once() -> None:
    runs, metrics = Runs(), Metrics(CollectorRegistry())
    duplicates = DuplicateRuns(runs, metrics, Log(), window_s=0.0, max_system_failures=3)  # type: ignore[arg-type]
    runs.cancels = ["ok"]
    duplicates.watch("job", "batch")
    await duplicates.sweep()
    await duplicates.sweep()
    assert runs.status == {"a": "QUEUED", "b": "CANCELED"}
    assert cancelled(metrics) == 1.0
    assert duplicates.suspects == {}


async def test_a_cancel_whose_answer_was_lost_is_counted_once_dagster_shows_it_past_the_window() -> None:
    """The frozen webserver's case: the cancel lands but its answer is lost; the batch stays a suspect past its
    window until a sweep sees the run cancelled before it started, and counts it then."""
    runs, metrics = Runs(), Metrics(CollectorRegistry())
    duplicates = DuplicateRuns(runs, metrics, Log(), window_s=0.0, max_system_failures=3)  # type: ignore[arg-type]
    runs.cancels = ["late"]
    duplicates.watch("job", "batch")
    await duplicates.sweep()  # the retried cancel finds the run already cancelled: no confirmation
    assert cancelled(metrics) in (None, 0.0)
    assert "batch" in duplicates.suspects
    await duplicates.sweep()
    assert cancelled(metrics) == 1.0
    assert duplicates.suspects == {}


async def test_a_cancel_that_timed_out_is_counted_at_the_next_sweep() -> None:
    runs, metrics = Runs(), Metrics(CollectorRegistry())
    duplicates = DuplicateRuns(runs, metrics, Log(), window_s=0.0, max_system_failures=3)  # type: ignore[arg-type]
    runs.cancels = ["lost"]
    duplicates.watch("job", "batch")
    await duplicates.sweep()
    await duplicates.sweep()
    await duplicates.sweep()
    assert cancelled(metrics) == 1.0
    assert duplicates.suspects == {}
