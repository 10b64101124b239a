"""The supervisor's decisions, under a fake clock and without processes: fast.

The real-process tests (test_resilience.py, test_reload.py, test_worker.py)
show the same policy end to end; these pin down its arithmetic.
"""

from __future__ import annotations

import signal

import pytest

from edged.child import Child, RestartPolicy, describe_exit
from edged.config import parse_config
from edged.errors import EX_CONFIG, EXIT_PROCESSOR_FAILING
from edged.states import RestartReason, Role
from edged.supervisor import plan_reload

POLICY = RestartPolicy(initial=1.0, maximum=30.0, reset_after=60.0, crash_loop=5, window=300.0)


class FakeProcess:
    """Stands in for a started process: the policy never looks inside it."""


def _run(child: Child, now: float) -> None:
    assert child.is_due(now)
    child.started_process(FakeProcess(), now)  # type: ignore[arg-type]


def test_a_new_child_is_due_at_once_and_not_while_it_runs():
    child = Child(Role.READER, POLICY)
    assert child.is_due(0.0)
    _run(child, 0.0)
    assert not child.is_due(1000.0)


def test_backoff_grows_with_jitter_and_resets_after_a_stable_run():
    child = Child(Role.READER, RestartPolicy(1.0, 30.0, 60.0, crash_loop=100))
    now = 0.0
    _run(child, now)
    delays = []
    for _ in range(6):
        now += 1.0  # each run short: the backoff grows
        exit_ = child.exited(1, now)
        delays.append(exit_.delay)
        assert child.due == now + exit_.delay and not child.is_due(now)
        now = child.due
        _run(child, now)
    # full jitter in [base/2, base], base doubling from 1 s up to the 30 s cap
    for attempt, delay in enumerate(delays):
        base = min(30.0, 2.0**attempt)
        assert base / 2 <= delay <= base
    now += 61.0  # a run longer than reset_after: back to the first delay
    assert child.exited(1, now).delay <= 1.0


def test_five_restarts_in_the_window_are_a_crash_loop_reported_once():
    child = Child(Role.WORKER, POLICY)
    now = 0.0
    began = []
    for _ in range(7):
        _run(child, now)
        now += 0.5
        exit_ = child.exited(1, now)
        began.append(exit_.crash_loop_began)
        # from the 5th on: slowed to the maximum, and failed while none runs
        assert (exit_.delay == POLICY.maximum) == child.failed == (exit_.recent >= 5)
        now = child.due  # type: ignore[assignment]
    assert began == [False, False, False, False, True, False, False]
    assert child.restarts == 7


def test_a_crash_loop_ends_after_a_stable_run_and_is_a_query_until_then():
    child = Child(Role.WORKER, POLICY)
    now = 0.0
    for _ in range(5):
        _run(child, now)
        now += 0.1
        child.exited(1, now)
        now = child.due  # type: ignore[assignment]
    _run(child, now)
    assert child.crash_loop and not child.failed  # running again: not failed meanwhile
    child.settle(now + 59.0)
    assert child.crash_loop
    child.settle(now + 61.0)
    assert not child.crash_loop and child.recent == []


def test_restarts_outside_the_window_do_not_count():
    child = Child(Role.READER, POLICY)
    now = 0.0
    for _ in range(10):
        _run(child, now)
        now += 100.0  # one restart every ~100 s: at most 3 in 300 s
        assert not child.exited(1, now).crash_loop_began
        now = child.due  # type: ignore[assignment]
    assert not child.crash_loop


@pytest.mark.parametrize(
    ("code", "hung", "reason"),
    [
        (1, False, RestartReason.CRASH),
        (-signal.SIGKILL, False, RestartReason.KILLED),
        (-signal.SIGKILL, True, RestartReason.HUNG),
        (EX_CONFIG, False, RestartReason.SETUP),
        (EXIT_PROCESSOR_FAILING, False, RestartReason.PROCESSOR),
    ],
)
def test_an_exit_says_why(code, hung, reason):
    child = Child(Role.WORKER, POLICY)
    _run(child, 0.0)
    if hung:
        child.killed_as_hung()
    exit_ = child.exited(code, 2.0)
    assert exit_.reason == reason and exit_.ran == 2.0
    assert not child.hung  # the next process starts with a clean slate
    assert child.last_exit == describe_exit(code)


def test_a_setup_failure_is_retried_slowly():
    child = Child(Role.WORKER, POLICY)
    _run(child, 0.0)
    assert child.exited(EX_CONFIG, 1.0).delay == POLICY.maximum


def test_a_child_that_cannot_set_up_is_failed_at_once_with_its_reason():
    child = Child(Role.WORKER, POLICY)
    _run(child, 0.0)
    child.setup_failed("cannot load model /m.onnx: file not found")
    child.exited(EX_CONFIG, 1.0)
    assert child.failed and not child.crash_loop  # failed at the first exit, not the fifth
    assert child.failure() == "cannot set up: cannot load model /m.onnx: file not found"
    now = child.due
    assert now is not None
    _run(child, now)
    assert not child.failed  # trying again
    assert child.setup_error == ""
    child.exited(EX_CONFIG, now + 1)
    assert child.failure() == "cannot set up: failed to set up (exit 78)"  # it said nothing
    now = child.due
    assert now is not None
    _run(child, now)
    child.exited(1, now + 1)
    assert not child.failed  # a crash is restarted as before


def test_exit_descriptions():
    assert describe_exit(None) == "vanished"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(-99) == "killed by signal 99"
    assert describe_exit(EX_CONFIG) == "failed to set up (exit 78)"
    assert describe_exit(1) == "exited with code 1"


def test_an_ended_or_stopped_child_is_not_restarted():
    child = Child(Role.READER, POLICY)
    _run(child, 0.0)
    child.ended()
    assert not child.is_due(1e9) and child.restarts == 0
    child = Child(Role.READER, POLICY)
    _run(child, 0.0)
    child.stopped()
    assert child.process is None and child.restarts == 0


# --- reload decisions -------------------------------------------------------------------

RELOAD_TOML = """
[events]
path = "events.jsonl"
[cameras.cam1]
source = "synthetic"
[cameras.cam2]
source = "synthetic"
fps = {cam2_fps}
[cameras.cam3]
source = "synthetic"
"""


def _config(tmp_path, cam2_fps: int = 10, drop: str = "", add: str = ""):
    text = RELOAD_TOML.format(cam2_fps=cam2_fps)
    if drop:
        text = text.replace(f'[cameras.{drop}]\nsource = "synthetic"\n', "")
    if add:
        text += f'[cameras.{add}]\nsource = "synthetic"\n'
    return parse_config(text, tmp_path / "edged.toml")


def test_a_reload_keeps_unchanged_cameras_and_restarts_changed_ones(tmp_path):
    old = _config(tmp_path)
    running = dict(old.cameras)
    plan = plan_reload(running, None, _config(tmp_path, cam2_fps=5, drop="cam3", add="cam4"))
    assert plan.wanted == ["cam1", "cam2", "cam4"]
    assert (plan.removed, plan.changed, plan.added) == (["cam3"], ["cam2"], ["cam4"])
    assert plan.vanished == []
    # the same config again: nothing to do
    same = plan_reload(running, None, _config(tmp_path))
    assert (same.removed, same.changed, same.added) == ([], [], [])


def test_a_unit_for_one_camera_follows_only_that_camera(tmp_path):
    running = {"cam2": _config(tmp_path).cameras["cam2"]}
    plan = plan_reload(running, ["cam2"], _config(tmp_path, add="cam4"))
    assert (plan.wanted, plan.removed, plan.changed, plan.added) == (["cam2"], [], [], [])
    gone = plan_reload(running, ["cam2"], _config(tmp_path, drop="cam2"))
    assert (gone.wanted, gone.removed, gone.vanished) == ([], ["cam2"], ["cam2"])
