"""Hang detection: children that stopped making progress are killed, once.

A reader blocked inside FFmpeg or a V4L2 driver cannot be interrupted from
Python, and a processor stuck in ``process()`` never returns: both would hold
their camera forever. Each child beats in shared memory (``edged.frames``);
the supervisor reads the beats every tick and SIGKILLs a child whose beats
stopped for longer than its own timeouts allow. ``Child.killed_as_hung`` holds
off the next check until the child is reaped, and makes its restart count as
a hang, with the line logged here as its reason.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from edged.reader import ReaderState

if TYPE_CHECKING:
    from edged.camera import CameraRuntime
    from edged.child import Child

log = logging.getLogger("edged.supervisor")  # the supervisor's lines, as journal filters expect

HANG_MARGIN = 3.0  # seconds beyond a reader's own timeouts before it counts as hung
# A worker beats at least every 0.5 s outside process() (edged/worker.py):
# silent this long there, it is stuck (process() itself has process_timeout).
WORKER_SILENCE = 10.0


def check_reader(cam: CameraRuntime, now: float) -> None:
    """Kill the camera's reader if it has been silent longer than its timeouts allow."""
    rs = cam.slot.reader
    proc = cam.reader.process
    if proc is None or not rs["pid"] or cam.reader.hung:
        # Once killed, not again every tick: a process in uninterruptible
        # sleep (a V4L2 driver) outlives SIGKILL until the kernel lets go.
        return
    # The reader beats between native calls; FFmpeg's own timeouts
    # should end any call well inside these. Past them, it is stuck.
    if int(rs["state"]) == ReaderState.STREAMING:
        allowance = max(cam.cfg.stale_after, cam.cfg.read_timeout) + HANG_MARGIN
    else:
        allowance = cam.cfg.open_timeout + HANG_MARGIN
    silent = now - rs["heartbeat"]
    if silent > allowance:
        _kill(
            cam,
            cam.reader,
            "reader (pid %d) silent for %.0fs, stuck in a native call; killing it",
            int(rs["pid"]),
            silent,
        )


def check_worker(cam: CameraRuntime, now: float, loop_late: bool) -> None:
    """Kill the camera's worker if its processor is stuck in ``process()`` past
    ``process_timeout``, or it is silent outside it. ``loop_late``: the caller's
    own loop was held up, so the worker may not have had the CPU to beat."""
    ws = cam.slot.worker
    if cam.worker.process is None or not ws["pid"] or cam.worker.hung:
        return  # not started, still setting up its processor, or being killed
    if loop_late:
        # This loop was held up itself (a slow disk, a long reload): a
        # worker blocked meanwhile on its full events pipe, just drained,
        # has not had the CPU to beat yet. Judge it next tick.
        return
    busy = ws["busy_since"]  # before the heartbeat: see edged/worker.py
    if busy:
        if now - busy > cam.cfg.process_timeout:
            _kill(
                cam,
                cam.worker,
                "processor %s stuck in process() for %.0fs (process_timeout %gs): "
                "killing the worker (pid %d)",
                cam.cfg.processor.type,
                now - busy,
                cam.cfg.process_timeout,
                int(ws["pid"]),
            )
    elif now - ws["heartbeat"] > WORKER_SILENCE:
        _kill(
            cam,
            cam.worker,
            "worker (pid %d) silent for %.0fs outside process(): killing it",
            int(ws["pid"]),
            now - ws["heartbeat"],
        )


def _kill(cam: CameraRuntime, child: Child, why: str, *args: object) -> None:
    log.error("camera %s: " + why, cam.name, *args)
    child.killed_as_hung()
    assert child.process is not None
    child.process.kill()
