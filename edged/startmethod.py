"""How the supervisor starts readers and workers: forked from a preloaded server.

A spawned child is a fresh interpreter that imports numpy, OpenCV and PyAV
itself: about 34 MiB of private memory each, on every camera, twice. Instead
the supervisor starts multiprocessing's ``forkserver`` once, before any thread
of its own exists; that server imports what children need (:data:`PRELOAD`)
and forks each reader and worker from itself, so their modules are pages
shared with the server until written.

The server is exec'd (not forked) by the supervisor, so it is a clean process
whatever threads the supervisor runs later. Preloading starts OpenBLAS worker
pools (numpy's and OpenCV's bundled one); OpenBLAS parks and joins them in its
``pthread_atfork`` handler, so the server holds one thread when it forks
(tests/test_startmethod.py checks it).

How a child dies with the supervisor: its parent is the server, so its
parent-death signal (``PR_SET_PDEATHSIG``, :func:`edged.reader.prepare_child`)
fires when the server exits, and the server exits when the supervisor's end
of its "alive" pipe closes, on any death of the supervisor. Every forked child
inherits a copy of that pipe's write end (multiprocessing's design: the server
outlives its last client), which would keep the server, and so every child,
alive after a SIGKILLed supervisor: :func:`detach_child` closes it first.

``EDGED_START_METHOD=spawn`` starts children the old way (for bench/memory.py,
which compares the two; not a user setting).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from multiprocessing import forkserver
from multiprocessing.context import ForkServerContext, SpawnContext
from typing import Any

from edged.errors import StartupError

log = logging.getLogger(__name__)

__all__ = [
    "PRELOAD",
    "START_METHOD_VAR",
    "ChildContext",
    "child_context",
    "detach_child",
    "orphaned",
    "start_server",
    "stop_server",
]

START_METHOD_VAR = "EDGED_START_METHOD"
METHODS = ("forkserver", "spawn")

# What readers and workers import, heaviest first. A module missing here is
# not an error: the child imports it itself (a plugin, say), privately.
PRELOAD = (
    "numpy",
    "cv2",
    "av",
    "av.logging",
    "av.video.reformatter",
    "pydantic",
    "edged.config",  # unpickling a child's CameraConfig needs it
    "edged.reader",
    "edged.worker",
    "edged.shared_worker",
    "edged.synthetic",
    "edged.snapshots",
    "edged.processors.null",
    "edged.processors.motion",
    "edged.startmethod",  # see _IMPORTED_BY
)

# The process that first imported this module. In a child forked from the
# server that is the server (edged.reader imports this module, and the server
# preloads edged.reader); in a spawned child it is the child itself.
_IMPORTED_BY = os.getpid()


def start_method() -> str:
    """``forkserver``, unless ``EDGED_START_METHOD`` asks for ``spawn``."""
    wanted = os.environ.get(START_METHOD_VAR, "").strip() or "forkserver"
    if wanted not in METHODS:
        log.warning(
            "%s=%r is not one of %s: using forkserver", START_METHOD_VAR, wanted, ", ".join(METHODS)
        )
        return "forkserver"
    return wanted


ChildContext = ForkServerContext | SpawnContext


def child_context() -> ChildContext:
    """The context readers and workers are started with (see :func:`start_server`)."""
    if start_method() == "spawn":
        return multiprocessing.get_context("spawn")
    return multiprocessing.get_context("forkserver")


def start_server(ctx: ChildContext) -> None:
    """Start ``ctx``'s fork server now, if it has one.

    Call it before this process starts a thread (the server is exec'd, so it
    would not matter to the server, but its start must not race a fork
    elsewhere), and after ``NOTIFY_SOCKET`` left the environment: the server
    keeps the environment it started with and hands it to every child.
    """
    if not isinstance(ctx, ForkServerContext):
        return
    ctx.set_forkserver_preload(list(PRELOAD))
    try:
        forkserver.ensure_running()
    except OSError as exc:
        raise StartupError(f"cannot start the process server for cameras: {exc}", exc) from None


def stop_server() -> None:
    """Stop the fork server, if this process started one; call after every child is gone."""
    # Private API (hence the guard): without it the server lives until this
    # process exits, and under KillMode=mixed systemd SIGKILLs what is left.
    with contextlib.suppress(Exception):
        forkserver._forkserver._stop()  # type: ignore[attr-defined]


def detach_child() -> None:
    """In a child forked by the server: drop its copy of the server's "alive" pipe.

    Without this the server outlives a SIGKILLed supervisor for as long as any
    child runs, and the children (whose parent is the server) never get their
    parent-death signal. A no-op in a spawned child.
    """
    server: Any = forkserver._forkserver
    fd = server._forkserver_alive_fd
    if fd is not None and server._forkserver_pid is None:  # not the server's own client end
        server._forkserver_alive_fd = None
        with contextlib.suppress(OSError):
            os.close(fd)


def orphaned() -> bool:
    """In a child, after its parent-death signal is set: has it missed its parent's death?

    True when the supervisor is gone (its end of the pipe the child was started
    through is closed) or when the process that forked this one (the server, or
    under ``spawn`` the supervisor) is no longer its parent.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return False
    if not parent.is_alive():
        return True
    forker = _IMPORTED_BY if os.getpid() != _IMPORTED_BY else parent.pid
    return os.getppid() != forker
