"""A lock in shared memory that a process killed while holding it cannot wedge.

The latest-frame slot's handshake takes a lock twice per frame, once in the
reader and once in the worker. An ``flock`` gives the right guarantee (the
kernel drops it when its holder dies) but costs two system calls per taking,
and a system call on a lock the other process just touched. This is a POSIX
mutex instead, ``PTHREAD_PROCESS_SHARED`` and ``PTHREAD_MUTEX_ROBUST``, in the
slot's control segment:

* uncontended, taking and dropping it are one atomic instruction each in
  glibc, no system call; contended, the waiter sleeps on a futex;
* when its holder dies, the kernel marks it (the robust futex list that glibc
  registers for every thread), and the next taker gets ``EOWNERDEAD``: it marks
  the mutex consistent and goes on. The slot keeps its fields valid at every
  instant (each publish writes the buffer's fields before the index that makes
  them current), so there is nothing to repair;
* ``PTHREAD_MUTEX_ERRORCHECK``: a thread that takes it again gets ``EDEADLK``
  instead of sleeping forever. That happens only if an exception (a signal
  handler's) left a critical section between taking and the ``try`` that drops
  it; the lock is ours already, so taking it again just goes on.

glibc and musl implement all of this; it is called through ``ctypes``
(about 0.2 us a call), which needs no compiler on the box.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from collections.abc import Callable

# Room for a pthread_mutex_t: 40 bytes on x86-64 glibc, 48 on aarch64, 24 on
# 32-bit platforms.
SIZE = 64
_PTHREAD_PROCESS_SHARED = 1
_PTHREAD_MUTEX_ERRORCHECK = 2
_PTHREAD_MUTEX_ROBUST = 1


def _function(libc: ctypes.CDLL, name: str) -> Callable[[ctypes.c_void_p], int]:
    # No argtypes: a c_void_p argument then goes through ctypes' fastest path.
    fn = getattr(libc, name)
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


# dlopen(NULL): the process's own symbols. pthread_* are in libc since
# glibc 2.34, in libpthread (which Python links) before.
_libc = ctypes.CDLL(None)  # pthread_* return their error, errno is not needed
_lock = _function(_libc, "pthread_mutex_lock")
_unlock = _function(_libc, "pthread_mutex_unlock")
_consistent = _function(_libc, "pthread_mutex_consistent")


def _check(rc: int, what: str) -> None:
    if rc:
        raise OSError(rc, f"{what}: {os.strerror(rc)}")


class SharedLock:
    """A robust process-shared mutex at ``offset`` in ``mm``.

    One process initialises it (:meth:`create`), before any other maps the
    memory; every process then makes its own ``SharedLock`` on the same bytes.
    """

    def __init__(self, mm: mmap.mmap, offset: int) -> None:
        if offset % 8 or offset + SIZE > len(mm):
            raise ValueError(f"no room for a lock at offset {offset} of {len(mm)} bytes")
        # Holding the ctypes object keeps the mmap exported (it cannot close
        # under us); close() lets go.
        self._cell: ctypes.Array[ctypes.c_char] | None = (ctypes.c_char * SIZE).from_buffer(
            mm, offset
        )
        self._addr = ctypes.c_void_p(ctypes.addressof(self._cell))

    @classmethod
    def create(cls, mm: mmap.mmap, offset: int) -> SharedLock:
        lock = cls(mm, offset)
        attr = ctypes.create_string_buffer(64)  # pthread_mutexattr_t: 4 bytes on Linux
        fn = _libc.pthread_mutexattr_init
        _check(fn(attr), "pthread_mutexattr_init")
        try:
            _check(
                _libc.pthread_mutexattr_setpshared(attr, _PTHREAD_PROCESS_SHARED),
                "pthread_mutexattr_setpshared",
            )
            _check(
                _libc.pthread_mutexattr_setrobust(attr, _PTHREAD_MUTEX_ROBUST),
                "pthread_mutexattr_setrobust",
            )
            _check(
                _libc.pthread_mutexattr_settype(attr, _PTHREAD_MUTEX_ERRORCHECK),
                "pthread_mutexattr_settype",
            )
            _check(_libc.pthread_mutex_init(lock._addr, attr), "pthread_mutex_init")
        finally:
            _libc.pthread_mutexattr_destroy(attr)
        return lock

    def acquire(self) -> None:
        rc = _lock(self._addr)
        if rc:
            self._settle(rc)

    def _settle(self, rc: int) -> None:
        if rc == errno.EOWNERDEAD:  # its holder died; the fields it guards are valid
            _check(_consistent(self._addr), "pthread_mutex_consistent")
        elif rc != errno.EDEADLK:
            _check(rc, "pthread_mutex_lock")

    def release(self) -> None:
        _unlock(self._addr)

    def close(self) -> None:
        """Let go of the memory (the mutex itself stays for the other processes)."""
        self._cell = None
