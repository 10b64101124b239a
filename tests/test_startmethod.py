"""Readers and workers are forked from a preloaded server (edged/startmethod.py), for real."""

from __future__ import annotations

import signal
from pathlib import Path

import psutil
import pytest
from daemon import Daemon, shm_segments, start_daemon, wait_for

pytestmark = pytest.mark.slow

TOML = """
[events]
path = "events.jsonl"
[daemon]
stop_timeout = "5s"
[cameras.cam1]
source = "synthetic"
width = 640
height = 360
[cameras.cam1.processor]
type = "null"
[cameras.cam2]
source = "synthetic"
width = 640
height = 360
[cameras.cam2.processor]
type = "null"
"""


def _mapped_at(pid: int, fragment: str) -> str:
    """Start address of the first mapping of a file whose path contains ``fragment``."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        if fragment in line:
            return line.split("-", 1)[0]
    return ""


def _server(d: Daemon) -> psutil.Process:
    (server,) = {kid.parent() for kid in d.children()}
    return server


def test_children_are_forked_from_a_server_that_preloaded_their_modules(tmp_path, daemons):
    d = start_daemon(daemons, tmp_path, TOML)
    wait_for("two readers and two workers", lambda: len(d.children()) == 4)
    d.wait_log("camera cam2: streaming")
    server = _server(d)
    assert server.ppid() == d.pid
    assert "multiprocessing.forkserver" in " ".join(server.cmdline())
    for kid in d.children():
        # A forked child maps the server's libraries at the server's addresses;
        # a child that imported them itself would have its own (ASLR).
        for lib in ("cv2/cv2.abi3.so", "numpy/_core/_multiarray_umath", "av/_core.abi3.so"):
            there = _mapped_at(server.pid, lib)
            assert there, f"the server has not loaded {lib}"
            assert _mapped_at(kid.pid, lib) == there, f"{kid.name()} loaded {lib} itself"
    # The supervisor itself has no use for OpenCV (it forks nothing either).
    assert _mapped_at(d.pid, "cv2/cv2.abi3.so") == ""
    # One thread when it forks: OpenBLAS parks its pools around fork(), and
    # nothing else in the server starts one.
    assert server.num_threads() == 1
    assert d.stop() == 0
    assert not server.is_running(), "the server outlived a clean stop"


def test_supervisor_sigkill_takes_the_server_and_every_child_down(tmp_path, daemons):
    d = start_daemon(daemons, tmp_path, TOML)
    wait_for("two readers and two workers", lambda: len(d.children()) == 4)
    wait_for("shared memory", lambda: shm_segments(d.pid))
    tree = psutil.Process(d.pid).children(recursive=True)  # server and resource tracker too
    assert d.proc is not None
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    left = psutil.wait_procs(tree, timeout=10)[1]
    assert left == [], f"outlived the supervisor: {[p.info for p in left]}"
    wait_for("shared memory cleaned up", lambda: shm_segments(d.pid) == [], timeout=10)


def test_spawn_is_still_there_when_asked_for(tmp_path, daemons):
    d = Daemon(tmp_path, TOML, env={"EDGED_START_METHOD": "spawn"}).start()
    daemons.append(d)
    wait_for("two readers and two workers", lambda: len(d.children()) == 4)
    assert {kid.ppid() for kid in d.children()} == {d.pid}
    d.wait_log("camera cam2: streaming")
    assert d.stop() == 0
