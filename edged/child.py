"""One child process of a camera and its restart policy.

A :class:`Child` is a reader or a worker slot of a camera: the process now
running in it (if any), when to start the next one, and the policy that
decides it: exponential backoff with jitter (:class:`Backoff`), reset after
a stable run, and a crash-loop window that slows restarts to the maximum
delay and marks the camera failed while no process runs. A child that could
not set up (exit 78: a model file gone, a vendor SDK missing) is failed at
once, with its own words as the reason (:meth:`Child.setup_failed`), and
retried at the maximum delay: it will not fix itself soon, but it may be
fixed (the file put back) without a restart of edged. The supervisor
starts and reaps processes; everything it decides about an exit comes from
:meth:`Child.exited`, and every question it asks (is one due? is the camera
failed because of it?) is a query without side effects. Time is always
passed in (``time.monotonic()`` values), so the policy runs under a fake
clock in tests.
"""

from __future__ import annotations

import dataclasses
import random
import signal
from multiprocessing.process import BaseProcess

from edged.errors import EX_CONFIG, EXIT_PROCESSOR_FAILING
from edged.states import RestartReason, Role

__all__ = ["Backoff", "Child", "Exit", "RestartPolicy", "describe_exit"]


class Backoff:
    """Exponential backoff with full jitter, reset after a stable period."""

    def __init__(self, initial: float, maximum: float, stable_after: float = 30.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.stable_after = stable_after
        self.attempt = 0

    def next_delay(self) -> float:
        base = min(self.maximum, self.initial * 2.0**self.attempt)
        # Capped: 2.0**1024 overflows, and a camera down for a weekend (or a
        # worker that cannot set up, retried every 30 s) gets that far.
        self.attempt = min(self.attempt + 1, 64)
        # Jitter in [base/2, base]: never a hot loop, and a fleet of cameras
        # that dropped together does not reconnect in lockstep.
        return base / 2 + random.random() * base / 2

    def succeeded(self, ran_for: float) -> None:
        if ran_for >= self.stable_after:
            self.attempt = 0


@dataclasses.dataclass(frozen=True)
class RestartPolicy:
    """When to restart a child that exited: the camera's restart settings."""

    initial: float  # restart_delay
    maximum: float  # restart_max_delay
    reset_after: float  # restart_reset_after: a run this long resets the backoff
    crash_loop: int = 5  # restarts within `window` that make a crash loop
    window: float = 300.0


@dataclasses.dataclass(frozen=True)
class Exit:
    """What :meth:`Child.exited` decided about one exit."""

    code: int | None
    description: str  # "killed by SIGKILL", "exited with code 1", ...
    reason: RestartReason
    ran: float  # seconds the process ran
    delay: float  # seconds until the next one starts
    crash_loop_began: bool  # this exit made it a crash loop (log it once)
    recent: int  # restarts within the crash-loop window, this one included
    window_span: float  # seconds from the first of them to this one


def describe_exit(code: int | None) -> str:
    """A child's exit code in words: ``killed by SIGKILL``, ``exited with code 1``."""
    if code is None:
        return "vanished"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code == EX_CONFIG:
        return "failed to set up (exit 78)"
    return f"exited with code {code}"


def _reason(code: int | None, hung: bool) -> RestartReason:
    if hung:
        return RestartReason.HUNG
    if code == EX_CONFIG:
        return RestartReason.SETUP
    if code == EXIT_PROCESSOR_FAILING:
        return RestartReason.PROCESSOR
    return RestartReason.KILLED if (code or 0) < 0 else RestartReason.CRASH


class Child:
    """A reader or worker slot of a camera and its restart policy."""

    def __init__(self, role: Role, policy: RestartPolicy) -> None:
        self.role = role
        self.policy = policy
        self.backoff = Backoff(policy.initial, policy.maximum, policy.reset_after)
        self.process: BaseProcess | None = None
        self.started = 0.0
        self.due: float | None = 0.0  # monotonic time to (re)start one; None: do not
        self.restarts = 0
        self.last_exit = ""
        self.hung = False  # killed by edged for making no progress; cleared at its exit
        self.recent: list[float] = []  # restart times within the crash-loop window
        self.crash_loop = False
        self.setup_error = ""  # why its last process could not set up, in its own words
        self.cannot_set_up = False  # its last process exited 78

    # -- queries (no side effects) ---------------------------------------------------

    def is_due(self, now: float) -> bool:
        """No process runs and the next one should start now."""
        return self.process is None and self.due is not None and now >= self.due

    @property
    def failed(self) -> bool:
        """In a crash loop, or unable to set up, with no process running: the camera
        is failed."""
        return (self.crash_loop or self.cannot_set_up) and self.process is None

    def failure(self) -> str:
        """Why it is failed, for the camera's state (see :attr:`failed`)."""
        if self.cannot_set_up:
            return f"cannot set up: {self.setup_error or self.last_exit}"
        return f"crash loop, last {self.last_exit}"

    # -- transitions ---------------------------------------------------------------

    def started_process(self, process: BaseProcess, now: float) -> None:
        self.process, self.started, self.due = process, now, None
        self.setup_error = ""

    def setup_failed(self, reason: str) -> None:
        """Its process said why it cannot set up (before exiting 78); kept as the
        reason of the failed state until the next process starts."""
        self.setup_error = reason

    def killed_as_hung(self) -> None:
        """edged killed the process for making no progress: its exit counts as hung."""
        self.hung = True

    def ended(self) -> None:
        """The process ended for good (a file played to its end): no restart."""
        self.process, self.due, self.hung = None, None, False

    def stopped(self) -> None:
        """The process was stopped on purpose (shutdown, reload): no restart, no count."""
        self.process, self.hung = None, False

    def exited(self, code: int | None, now: float) -> Exit:
        """The process exited unexpectedly: count it, schedule the next, say why."""
        ran = now - self.started
        self.backoff.succeeded(ran)
        delay = self.backoff.next_delay()
        self.cannot_set_up = code == EX_CONFIG
        if self.cannot_set_up:
            # The processor or source plugin cannot be set up: retry slowly,
            # it will not fix itself soon.
            delay = max(delay, self.policy.maximum)
        self.restarts += 1
        self.recent = [t for t in self.recent if now - t < self.policy.window] + [now]
        began = False
        if len(self.recent) >= self.policy.crash_loop:
            delay = max(delay, self.policy.maximum)
            began = not self.crash_loop
            self.crash_loop = True
        reason = _reason(code, self.hung)
        self.process, self.hung = None, False
        self.due = now + delay
        self.last_exit = describe_exit(code)
        return Exit(
            code=code,
            description=self.last_exit,
            reason=reason,
            ran=ran,
            delay=delay,
            crash_loop_began=began,
            recent=len(self.recent),
            window_span=now - self.recent[0],
        )

    def settle(self, now: float) -> None:
        """A process that has run ``reset_after`` since a crash loop ends the loop."""
        if (
            self.crash_loop
            and self.process is not None
            and now - self.started > (self.policy.reset_after)
        ):
            self.crash_loop = False
            self.recent.clear()
