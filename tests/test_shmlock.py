"""The robust process-shared lock: exclusion across processes, a dead holder."""

from __future__ import annotations

import mmap
import multiprocessing
import os
import signal
import struct
import time

import pytest

from edged.shmlock import SIZE, SharedLock

CTX = multiprocessing.get_context("spawn")
_COUNTER = SIZE  # an int64 after the lock, guarded by it


@pytest.fixture
def shm(tmp_path):
    # A file in /dev/shm: spawned children map it by name.
    path = "/dev/shm/edged_test_shmlock_" + tmp_path.name
    with open(path, "w+b") as f:
        f.truncate(SIZE + 8)
    mm = _open(path)
    lock = SharedLock.create(mm, 0)
    yield path, mm, lock
    lock.close()
    mm.close()
    os.unlink(path)


def _open(path: str) -> mmap.mmap:
    with open(path, "r+b") as f:
        return mmap.mmap(f.fileno(), 0)


def _count(path: str, n: int) -> None:
    mm = _open(path)
    lock = SharedLock(mm, 0)
    for _ in range(n):
        lock.acquire()
        try:
            (v,) = struct.unpack_from("q", mm, _COUNTER)
            struct.pack_into("q", mm, _COUNTER, v + 1)
        finally:
            lock.release()
    lock.close()


def _hold(path: str, held) -> None:
    mm = _open(path)
    SharedLock(mm, 0).acquire()
    held.set()
    signal.pause()  # killed here, holding the lock


def test_excludes_across_processes(shm):
    path, mm, lock = shm
    procs = [CTX.Process(target=_count, args=(path, 20000)) for _ in range(2)]
    for p in procs:
        p.start()
    _count(path, 20000)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    # A read-modify-write without exclusion loses increments.
    assert struct.unpack_from("q", mm, _COUNTER) == (60000,)


def test_a_holder_killed_holding_it_does_not_wedge_the_others(shm):
    path, mm, lock = shm
    held = CTX.Event()
    proc = CTX.Process(target=_hold, args=(path, held))
    proc.start()
    try:
        assert held.wait(30), "the child never took the lock"
    finally:
        proc.kill()
        proc.join(10)
    assert proc.exitcode == -signal.SIGKILL
    # In a child, so that a lock left held fails the test instead of hanging it.
    taker = CTX.Process(target=_count, args=(path, 10))
    taker.start()
    taker.join(30)
    if taker.is_alive():
        taker.kill()
        taker.join()
    assert taker.exitcode == 0, "the lock stayed held after its holder was killed"
    _count(path, 10)  # and usable by anyone afterwards
    assert struct.unpack_from("q", mm, _COUNTER) == (20,)


def test_taking_it_again_in_the_same_thread_goes_on(shm):
    # What an exception between taking it and the try that drops it leaves.
    path, mm, lock = shm
    lock.acquire()
    lock.acquire()
    lock.release()
    _count(path, 1)


def test_refuses_an_offset_without_room(shm):
    path, mm, lock = shm
    with pytest.raises(ValueError, match="no room for a lock"):
        SharedLock(mm, 16)


def _wchan(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read()
    except OSError:
        return ""


def test_a_taker_asleep_on_it_wakes_when_the_holder_is_killed(shm):
    path, mm, lock = shm
    held = CTX.Event()
    holder = CTX.Process(target=_hold, args=(path, held))
    taker = CTX.Process(target=_count, args=(path, 10))
    try:
        holder.start()
        assert held.wait(30), "the child never took the lock"
        taker.start()
        deadline = time.monotonic() + 30
        while "futex" not in _wchan(taker.pid):  # asleep in the kernel on the lock
            assert time.monotonic() < deadline, "the taker never blocked on the lock"
            assert taker.is_alive(), "the taker got a lock that was held"
            time.sleep(0.01)
        holder.kill()
        taker.join(30)
        assert taker.exitcode == 0, "the taker stayed asleep after the holder was killed"
        assert struct.unpack_from("q", mm, _COUNTER) == (10,)
    finally:
        for p in (holder, taker):
            if p.is_alive():
                p.kill()
            p.join(10)
