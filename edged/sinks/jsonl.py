"""The JSONL event file: one JSON object per line, appended, rotated by size.

The supervisor owns one :class:`JsonlWriter` and calls it from one thread.
Lines are written with a single ``os.write`` on an ``O_APPEND`` descriptor, so
a reader (``tail -F``, ``edged events --follow``) and even another process
appending to the same file never see two lines torn or interleaved.

Failure contract: :meth:`JsonlWriter.write` either appends the whole line or
raises :class:`SinkError` having left nothing unterminated behind, so the
caller can keep the event and retry later without duplicating or corrupting
anything.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from edged.errors import EdgedError, exit_code_for
from edged.event import encode_event, encode_plain

log = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "interval", "never"]
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
_FILE_MODE = 0o640
_DIR_MODE = 0o750
_STAT_EVERY = 1.0  # seconds between checks that the path still names our file
ROTATION_LOCK_WAIT = 0.5  # seconds a rotation waits for a reader listing the backups


@contextmanager
def rotation_lock(directory: Path, *, shared: bool, wait: float) -> Iterator[bool]:
    """Hold an advisory ``flock`` on the event file's folder; yield whether it was taken.

    A rotation renames every backup (``.1`` to ``.2`` ...) one by one, and a
    directory listing taken meanwhile can miss a file. Rotations take this
    lock exclusive and ``edged events --follow`` takes it shared while it
    lists, so that its listing is a snapshot. Nobody waits more than ``wait``
    for it: a stuck reader must never hold up the writer (which then rotates
    without it), and a reader without it falls back to comparing listings.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield False
        return
    try:
        taken = False
        op = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, op)
                taken = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.001)
        yield taken
    finally:
        os.close(fd)  # releases the lock


class SinkError(EdgedError):
    """An event sink could not write. The event was not written; retrying is safe."""

    def __init__(self, path: Path, what: str, err: OSError | None = None) -> None:
        self.path = path
        self.errno = err.errno if err is not None else None
        reason = os.strerror(err.errno) if err is not None and err.errno else str(err or "")
        super().__init__(f"{path}: {what}" + (f": {reason}" if reason else ""))
        self.exit_code = exit_code_for(err)  # when it stops edged from starting


class JsonlWriter:
    """Appends events to a JSONL file with size-based rotation and an fsync policy.

    Rotation: before a line that would take the file past ``max_bytes``, the
    file is renamed to ``PATH.1`` (``.1`` to ``.2`` and so on, the oldest
    beyond ``backups`` overwritten) and a new file is started; with
    ``backups=0`` the old file is simply removed. A line is never split
    across files; a single line longer than ``max_bytes`` gets a file of its own.

    If someone else moves or deletes the file (logrotate), the writer notices
    within a second and reopens ``path``.

    Not thread-safe: one writer, one thread. The counters ``lines_written``,
    ``bytes_written``, ``rotations``, ``reopens``, ``coerced`` (events whose
    data had to be converted) and ``errors`` are for metrics.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        backups: int,
        fsync: FsyncPolicy,
        fsync_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        if backups < 0:
            raise ValueError(f"backups must be >= 0, not {backups}")
        if fsync not in ("always", "interval", "never"):
            raise ValueError(f"fsync must be 'always', 'interval' or 'never', not {fsync!r}")
        if fsync_interval < 0:
            raise ValueError(f"fsync_interval must be >= 0, not {fsync_interval}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self._clock = clock
        self.lines_written = 0
        self.bytes_written = 0
        self.rotations = 0
        self.reopens = 0
        self.coerced = 0
        self.errors = 0
        self._fd: int | None = None
        self._ident = (0, 0)  # (st_dev, st_ino) of the file we hold open
        self._closed = False
        self._unterminated = False  # the file ends mid-line: start the next write with "\n"
        self._unsynced = False
        self._rotate_failing = False
        self._lock_warned = False
        now = clock()
        self._last_fsync = now
        self._last_stat = now
        try:
            self.path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        except OSError as e:
            self.errors += 1
            raise SinkError(self.path.parent, "cannot create directory", e) from e
        self._open()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, event: dict[str, Any]) -> None:
        """Append ``event`` as one line, rotating and syncing as configured.

        Raises :class:`SinkError` (disk full, permission denied, ...) having
        written nothing: a short write is truncated away with ``ftruncate``.
        If even that fails, the fragment is left and the next successful write
        starts with a newline, so the fragment is one invalid line that
        readers skip and the following lines stay intact.
        """
        self.write_line(self.encode(event))

    def write_line(self, line: bytes) -> None:
        """Append one line made by :meth:`encode` (a held event, say), as :meth:`write` does."""
        if self._closed:
            raise ValueError(f"write to closed JsonlWriter for {self.path}")
        now = self._clock()
        try:
            if self._fd is None:
                self._open()
            elif now - self._last_stat >= _STAT_EVERY:
                self._last_stat = now
                self._reopen_if_moved()
            assert self._fd is not None
            size = os.fstat(self._fd).st_size
            if size > 0 and size + len(line) > self.max_bytes:
                self._rotate()
                assert self._fd is not None
                size = os.fstat(self._fd).st_size
        except SinkError:
            self.errors += 1
            raise
        except OSError as e:
            self.errors += 1
            raise SinkError(self.path, "cannot prepare write", e) from e
        assert self._fd is not None
        data = b"\n" + line if self._unterminated else line
        self._append(self._fd, data, size)
        self._unterminated = False
        self.lines_written += 1
        self.bytes_written += len(data)
        self._unsynced = True
        if self.fsync == "always" or (
            self.fsync == "interval" and now - self._last_fsync >= self.fsync_interval
        ):
            self._sync(now)

    def encode(self, event: dict[str, Any]) -> bytes:
        """``event`` as the line :meth:`write` appends (counting it in ``coerced``
        if its data had to be converted); never raises."""
        line = encode_plain(event)
        if line is not None:
            return line
        self.coerced += 1
        if self.coerced == 1:
            log.warning(
                "%s: event %r has data JSON cannot represent; converting it "
                "(further events like this are counted, not logged)",
                self.path,
                event.get("type") if isinstance(event, dict) else None,
            )
        return encode_event(event)

    def tick(self) -> bool:
        """Fsync if the ``interval`` policy is due; the supervisor calls this periodically.

        Lines written in a burst followed by a quiet period are synced here
        rather than at the next write. Returns True if it synced.
        """
        if self.fsync != "interval" or not self._unsynced or self._fd is None:
            return False
        now = self._clock()
        if now - self._last_fsync < self.fsync_interval:
            return False
        self._sync(now)
        return True

    flush_due = tick

    def close(self) -> None:
        """Fsync (unless the policy is ``never``) and close. Idempotent."""
        if self._closed:
            return
        self._closed = True
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self.fsync != "never" and self._unsynced:
                self._fsync_fd(fd)
        finally:
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self._closed

    # Internals

    def _append(self, fd: int, data: bytes, size: int) -> None:
        """One ``os.write`` for the whole line; on failure, undo any partial write."""
        done = 0
        try:
            while done < len(data):
                n = os.write(fd, data[done:] if done else data)
                if n <= 0:  # not seen on Linux for a regular file, but never loop forever
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += n
        except OSError as e:
            self.errors += 1
            if done:
                self._undo_partial(fd, size, done)
            raise SinkError(self.path, "cannot write event", e) from e

    def _undo_partial(self, fd: int, size: int, done: int) -> None:
        # With O_APPEND our bytes start at the size seen just before the write,
        # as long as nobody else appended in between (we are the only writer).
        try:
            os.ftruncate(fd, size)
        except OSError as e:
            self._unterminated = True
            log.error(
                "%s: left a partial line of %d bytes and could not remove it (%s); "
                "the next line starts on a fresh line",
                self.path,
                done,
                os.strerror(e.errno) if e.errno else e,
            )

    def _open(self) -> None:
        created = not self.path.exists()
        try:
            try:
                fd = os.open(self.path, _OPEN_FLAGS, _FILE_MODE)
            except FileNotFoundError:  # the whole directory was removed under us
                self.path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
                fd = os.open(self.path, _OPEN_FLAGS, _FILE_MODE)
        except OSError as e:
            raise SinkError(self.path, "cannot open event file", e) from e
        st = os.fstat(fd)
        self._fd = fd
        self._ident = (st.st_dev, st.st_ino)
        self._last_stat = self._clock()
        self._unterminated = st.st_size > 0 and not self._ends_with_newline()
        if created:  # a new file, or the one a rotation renames away
            self._fsync_dir()

    def _ends_with_newline(self) -> bool:
        # A crash or full disk in an earlier run may have left a partial line;
        # our descriptor is write-only, so peek through a second one.
        try:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                return f.read(1) == b"\n"
        except OSError:
            return True

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self.fsync != "never" and self._unsynced:
                self._fsync_fd(fd)
                self._unsynced = False
        finally:
            os.close(fd)

    def _reopen_if_moved(self) -> None:
        try:
            st = os.stat(self.path)
            moved = (st.st_dev, st.st_ino) != self._ident
        except FileNotFoundError:
            moved = True
        if moved:
            log.info("%s: the file was moved or deleted; reopening", self.path)
            self._close_fd()
            self._open()
            self.reopens += 1

    def _rotate(self) -> None:
        self._close_fd()
        try:
            if self.backups == 0:
                self.path.unlink(missing_ok=True)
            else:
                with rotation_lock(
                    self.path.parent, shared=False, wait=ROTATION_LOCK_WAIT
                ) as locked:
                    if not locked and not self._lock_warned:
                        self._lock_warned = True
                        log.warning(
                            "%s: rotating without the rotation lock (held by a reader "
                            "for over %.1f s): a follower may miss a backup",
                            self.path,
                            ROTATION_LOCK_WAIT,
                        )
                    for i in range(self.backups - 1, 0, -1):
                        src = self._backup(i)
                        if src.exists():
                            os.replace(src, self._backup(i + 1))
                    os.replace(self.path, self._backup(1))
        except FileNotFoundError:
            pass  # someone else moved it away already: fine, start a new file
        except OSError as e:
            # Keep appending to the oversized file rather than refusing events;
            # the next write tries again, and logs only if this is news.
            self.errors += 1
            if not self._rotate_failing:
                log.error("%s: cannot rotate, still appending: %s", self.path, e)
            self._rotate_failing = True
            self._open()
            return
        self._open()
        self._rotate_failing = False
        self.rotations += 1
        log.debug("%s: rotated (%d backups)", self.path, self.backups)

    def _backup(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")

    def _sync(self, now: float) -> None:
        assert self._fd is not None
        self._fsync_fd(self._fd)
        self._last_fsync = now
        self._unsynced = False

    def _fsync_dir(self) -> None:
        # A file's name lives in its folder: after a power loss, lines fsync'ed
        # into a file created or renamed since the folder's last sync can be
        # gone with the name. Once per new file; a rotation's renames too.
        if self.fsync == "never":
            return
        try:
            fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            self.errors += 1
            log.error(
                "%s: fsync of the folder failed: %s",
                self.path.parent,
                os.strerror(e.errno) if e.errno else e,
            )

    def _fsync_fd(self, fd: int) -> None:
        # The line is already in the file; raising would make the caller write
        # it again. Count and log instead.
        try:
            os.fsync(fd)
        except OSError as e:
            self.errors += 1
            log.error("%s: fsync failed: %s", self.path, os.strerror(e.errno) if e.errno else e)
