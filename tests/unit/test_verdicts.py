"""The one rule that settles a batch's runs: every decider, whatever it saw first, reaches the same survivor."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from service.verdicts import FAILURE_REASON_TAG, PARENT_RUN_TAG, STEP_FAILURE, RunInfo, judge, stands_down, survivor

MAX = 3


def run(run_id: str, status: str, created: float, reason: str | None = None,
        started: float | None = None) -> RunInfo:
    tags = {"kafka/batch_id": "b"} | ({FAILURE_REASON_TAG: reason} if reason else {})
    return RunInfo(run_id, status, "job", tags, created, started)


def test_the_oldest_queued_run_is_kept_and_the_others_are_duplicates() -> None:
    runs = [run("b", "QUEUED", 2.0), run("a", "QUEUED", 1.0), run("c", "QUEUED", 3.0)]
    verdict = judge(runs, set(), MAX)
    assert verdict.survivor is not None and verdict.survivor.run_id == "a"
    assert {r.run_id for r in verdict.duplicates} == {"b", "c"}


def test_a_cancelled_run_never_becomes_the_survivor() -> None:
    """The loss of issue 21: the sweep after the launch's answer saw the cancelled duplicate as 'started'."""
    at_launch = [run("a", "QUEUED", 1.0), run("b", "QUEUED", 2.0)]
    first = judge(at_launch, set(), MAX)
    assert first.survivor is not None and first.survivor.run_id == "a"
    at_sweep = [run("a", "QUEUED", 1.0), run("b", "CANCELED", 2.0)]
    second = judge(at_sweep, {"b"}, MAX)
    assert second.survivor is not None and second.survivor.run_id == "a"
    assert second.duplicates == ()
    canceling = judge([run("a", "QUEUED", 1.0), run("b", "CANCELING", 2.0)], {"b"}, MAX)
    assert canceling.survivor is not None and canceling.survivor.run_id == "a" and canceling.duplicates == ()


def test_a_started_run_wins_and_is_never_a_duplicate() -> None:
    runs = [run("a", "QUEUED", 1.0), run("b", "STARTED", 2.0)]
    verdict = judge(runs, set(), MAX)
    assert verdict.survivor is not None and verdict.survivor.run_id == "b"
    assert [r.run_id for r in verdict.duplicates] == ["a"]


def test_a_step_failure_keeps_its_batch_a_system_failure_does_not() -> None:
    step = judge([run("a", "FAILURE", 1.0, STEP_FAILURE)], set(), MAX)
    assert step.survivor is not None and step.survivor.run_id == "a"
    for reason in (None, "JOB_INITIALIZATION_FAILURE", "RUN_WORKER_RESTART", "START_TIMEOUT", "UNKNOWN"):
        system = judge([run("a", "FAILURE", 1.0, reason)], set(), MAX)
        assert system.survivor is None and system.relaunch, reason
        assert system.system_failures == 1


def test_a_batch_whose_runs_failed_for_the_system_too_often_is_dead_lettered_with_the_reason() -> None:
    runs = [run(f"r{i}", "FAILURE", float(i), "RUN_WORKER_RESTART") for i in range(MAX)]
    verdict = judge(runs, set(), MAX)
    assert not verdict.relaunch and verdict.dead_letter is not None and verdict.dead_letter.run_id == f"r{MAX - 1}"
    assert f"{MAX} runs failed" in verdict.reason and "RUN_WORKER_RESTART" in verdict.reason


def test_a_batch_left_without_a_live_run_by_the_duplicate_rule_is_launched_again() -> None:
    runs = [run("a", "CANCELED", 1.0), run("b", "CANCELED", 2.0)]
    verdict = judge(runs, {"a", "b"}, MAX)
    assert verdict.survivor is None and verdict.relaunch and verdict.system_failures == 0


def test_a_run_an_operator_cancelled_puts_the_batch_in_the_dlq() -> None:
    runs = [run("a", "CANCELED", 1.0), run("b", "CANCELED", 2.0)]
    verdict = judge(runs, {"b"}, MAX)  # the duplicate rule cancelled b; someone else cancelled a
    assert not verdict.relaunch and verdict.dead_letter is not None and verdict.dead_letter.run_id == "a"
    assert "was canceled" in verdict.reason


def test_of_two_started_runs_the_one_that_started_first_is_kept() -> None:
    """The daemon may start a later-created run first (the older one waited for its code location)."""
    runs = [run("a", "STARTED", 1.0, started=20.0), run("b", "SUCCESS", 2.0, started=10.0),
            run("c", "STARTING", 0.5)]
    verdict = judge(runs, set(), MAX)
    assert verdict.survivor is not None and verdict.survivor.run_id == "b" and verdict.duplicates == ()


def test_a_run_that_starts_after_its_batch_was_run_stands_down() -> None:
    """The duplicate no worker could cancel in time: dequeued once the original finished."""
    original = run("a", "SUCCESS", 1.0, started=10.0)
    duplicate = run("b", "STARTED", 2.0, started=30.0)
    assert stands_down("b", [original, duplicate]) == original
    assert stands_down("a", [original, duplicate]) is None
    failed_step = run("a", "FAILURE", 1.0, STEP_FAILURE, started=10.0)  # its records go to the DLQ: not again
    assert stands_down("b", [failed_step, duplicate]) == failed_step


def test_a_run_after_dead_runs_or_alone_processes_its_batch() -> None:
    relaunched = run("c", "STARTED", 3.0, started=40.0)
    dead = [run("a", "CANCELED", 1.0, started=10.0), run("b", "FAILURE", 2.0, "RUN_WORKER_RESTART", started=20.0)]
    assert stands_down("c", [*dead, relaunched]) is None
    assert stands_down("c", [relaunched]) is None
    assert stands_down("c", []) is None  # not a run of this instance (a test context): nothing to compare


def test_two_runs_started_side_by_side_agree_on_which_one_stands_down() -> None:
    """Without the coordinator's one-run-per-batch limit both may run at once: exactly one goes on."""
    a, b = run("a", "STARTED", 2.0, started=10.0), run("b", "STARTED", 1.0, started=10.5)
    assert stands_down("a", [a, b]) is None and stands_down("b", [a, b]) == a
    still_starting = run("b", "STARTING", 1.0)
    assert stands_down("a", [a, still_starting]) is None


def test_a_re_execution_an_operator_asked_for_always_runs() -> None:
    original = run("a", "SUCCESS", 1.0, started=10.0)
    again = RunInfo("r", "STARTED", "job", {"kafka/batch_id": "b", PARENT_RUN_TAG: "a"}, 5.0, 50.0)
    assert stands_down("r", [original, again]) is None


STATUSES = ["QUEUED", "STARTING", "STARTED", "SUCCESS", "FAILURE", "CANCELING", "CANCELED"]


@given(st.lists(st.tuples(st.sampled_from(STATUSES), st.sampled_from([None, STEP_FAILURE])), min_size=1, max_size=5))
def test_every_view_of_a_batch_picks_the_same_survivor_or_one_that_started_since(
        states: list[tuple[str, str | None]]) -> None:
    """Views differ by runs created later: the survivor of a shorter view is that of the longer one, unless the
    longer one holds a started run (a started run is never cancelled, so both keep a run that executes)."""
    runs = [run(f"r{i}", status, float(i), reason) for i, (status, reason) in enumerate(states)]
    full = survivor(runs)
    for prefix in itertools.accumulate([[r] for r in runs]):
        partial = survivor(prefix)
        if partial is None or full is None or partial.run_id == full.run_id:
            continue
        assert full.status not in ("QUEUED", "NOT_STARTED"), (partial, full)
    if full is not None:
        assert full.status not in ("CANCELING", "CANCELED")
