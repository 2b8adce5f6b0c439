"""One decision per batch: what the runs of one `kafka/batch_id` in Dagster say to do next.

Every decider applies this one rule to what it reads from Dagster: the launch
whose earlier answer was lost, the sweep of suspect batches, the watcher when
a run ends, the reconcile of a new owner, another worker. They agree because
the rule depends only on facts each of them reads the same way:

- A run is *dead* when it is CANCELING or CANCELED, or ended FAILURE without
  a step of its own failing (Dagster's `dagster/failure_reason` is missing or
  anything but STEP_FAILURE: the code location was unreachable at dequeue, its
  run worker died, it timed out starting): it never processed its batch.
  Every other run is *live*: queued, running, or done (SUCCESS, or FAILURE of
  a step, a fact about the data).
- The *survivor* is the live run that started first (start time, then run
  id), else the live run that was created first (creation time, then run
  id). A started run is never cancelled by a worker. Two deciders' views of a
  queued batch differ only by runs created later, which sort after the
  oldest, so they pick the same survivor.
- A run that starts while another live run of its batch started before it
  *stands down* in its own run (`stands_down`, called by the toolkit before
  a step reads its batch): the last guard, for a duplicate that no worker
  could cancel in time (the webserver frozen while the daemon dequeued it).
  The shipped run coordinator runs one run per batch at a time, so the
  earlier run has finished by then and both see the same facts.
- Every other live run still queued is a duplicate, to cancel. Nobody cancels
  the survivor, and a run once asked to cancel is dead for every later decision.
- No live run left: the batch is launched again, unless a run of it was
  cancelled by someone other than the duplicate rule (an operator: its
  records go to the DLQ at stage `run`), or it already failed for the system
  `max_system_failures` times (DLQ, with the last reason).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

FAILURE_REASON_TAG = "dagster/failure_reason"
PARENT_RUN_TAG = "dagster/parent_run_id"  # a re-execution an operator asked for
STEP_FAILURE = "STEP_FAILURE"
NOT_STARTED = frozenset({"QUEUED", "NOT_STARTED"})
CANCELLED = frozenset({"CANCELING", "CANCELED"})


@dataclass(frozen=True)
class RunInfo:
    """What a decider reads of one Dagster run (`service.dagster` fills it in from GraphQL, the toolkit
    from the instance)."""

    run_id: str
    status: str
    job: str
    tags: dict[str, str]
    creation_time: float = 0.0
    start_time: float | None = None  # when its run worker started it; None until then


def failed_for_the_system(run: RunInfo) -> bool:
    """The run ended FAILURE before or outside its steps: its batch's data was never at fault."""
    return run.status == "FAILURE" and run.tags.get(FAILURE_REASON_TAG) != STEP_FAILURE


def is_live(run: RunInfo) -> bool:
    return run.status not in CANCELLED and not failed_for_the_system(run)


def survivor(runs: Sequence[RunInfo]) -> RunInfo | None:
    """The run that keeps the batch: the first live run to start, else the first live run created."""
    live = [run for run in runs if is_live(run)]
    started = [run for run in live if run.status not in NOT_STARTED]
    if started:  # STARTING has no start time yet: after those that have one
        return min(started, key=lambda run: (run.start_time is None, run.start_time or 0.0, run.run_id))
    if not live:
        return None
    return min(live, key=lambda run: (run.creation_time, run.run_id))


def stands_down(run_id: str, runs: Sequence[RunInfo]) -> RunInfo | None:
    """The live run of the batch that started before `run_id`, which then must not process the batch; None
    when `run_id` is the batch's run (or not among `runs`, or a re-execution an operator asked for)."""
    mine = next((run for run in runs if run.run_id == run_id), None)
    if mine is None or PARENT_RUN_TAG in mine.tags:
        return None
    first = survivor([run for run in runs if PARENT_RUN_TAG not in run.tags])
    return first if first is not None and first.run_id != run_id else None


def failure_reason(run: RunInfo) -> str:
    """In words, why a dead run did not process its batch."""
    if run.status in CANCELLED:
        return f"run {run.run_id} was canceled"
    return f"run {run.run_id} failed before processing its batch ({run.tags.get(FAILURE_REASON_TAG, 'no reason')})"


@dataclass(frozen=True)
class Verdict:
    """What to do with one batch now.

    `survivor` keeps the batch (watch it); `duplicates` are queued runs to cancel.
    With no survivor, either `relaunch` is set, or `dead_letter` names the run
    whose end puts the batch's records in the DLQ; `reason` says why, and
    `dead_runs` are the batch's runs that will not process it.
    """

    survivor: RunInfo | None
    duplicates: tuple[RunInfo, ...] = ()
    relaunch: bool = False
    dead_letter: RunInfo | None = None
    reason: str = ""
    dead_runs: tuple[RunInfo, ...] = ()
    system_failures: int = 0  # dead runs that failed for the system
    cancelled_as_duplicates: frozenset[str] = frozenset()


def judge(runs: Sequence[RunInfo], cancelled_as_duplicates: Collection[str], max_system_failures: int) -> Verdict:
    """The verdict on one batch from all its runs; `cancelled_as_duplicates`: run ids the duplicate rule cancelled."""
    kept = survivor(runs)
    if kept is not None:
        duplicates = tuple(run for run in runs
                           if run is not kept and is_live(run) and run.status in NOT_STARTED)
        return Verdict(kept, duplicates)
    newest_first = tuple(sorted(runs, key=lambda run: (run.creation_time, run.run_id), reverse=True))
    ours = frozenset(run.run_id for run in runs if run.run_id in cancelled_as_duplicates)
    system_failures = [run for run in newest_first if failed_for_the_system(run)]
    facts = Verdict(None, dead_runs=newest_first, system_failures=len(system_failures),
                    cancelled_as_duplicates=ours)
    cancelled = [run for run in newest_first if run.status in CANCELLED and run.run_id not in ours]
    if cancelled:
        return replace(facts, dead_letter=cancelled[0], reason=failure_reason(cancelled[0]))
    if len(system_failures) >= max_system_failures:
        return replace(facts, dead_letter=system_failures[0],
                       reason=f"{len(system_failures)} runs failed without processing the batch; last: "
                              f"{failure_reason(system_failures[0])}")
    return replace(facts, relaunch=True, reason=failure_reason(newest_first[0]) if newest_first else "no run")
