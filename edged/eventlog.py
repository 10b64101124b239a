"""Reading the JSONL event file: ``edged events`` and :func:`iter_events`.

The file is written by :class:`edged.sinks.jsonl.JsonlWriter`: one JSON
object per line, rotated to ``PATH.1`` ... ``PATH.N`` (``.N`` oldest). Lines
are split on ``\\n`` bytes only: the writer emits U+2028 and friends raw, and
``str.splitlines`` would break lines on them.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from edged.sinks.jsonl import rotation_lock

TAIL_EVENTS = 10  # matching events shown when --follow starts, like tail
_GRACE = 2.0  # seconds to keep reading a file after it was rotated away
_LOCK_WAIT = 1.0  # seconds to wait for a rotation in progress before listing anyway
_MAX_MISSES = 100  # listings that miss a file still there before giving up on it
_CHUNK = 1 << 20
_MAX_LINE = 16 << 20  # a "line" longer than this is garbage; drop it rather than buffer it
_MAX_REPORTS = 20


def backup_paths(path: Path) -> list[Path]:
    """The rotated backups of ``path`` that exist, oldest (``.N``) first."""
    pattern = re.compile(re.escape(path.name) + r"\.(\d+)")
    found: list[tuple[int, Path]] = []
    try:
        with os.scandir(path.parent) as it:
            for entry in it:
                m = pattern.fullmatch(entry.name)
                if m:
                    found.append((int(m.group(1)), Path(entry.path)))
    except FileNotFoundError:
        return []
    return [p for _, p in sorted(found, reverse=True)]


def parse_line(raw: bytes) -> dict[str, Any] | None:
    """The event on one line (without its newline), or None if it is not one."""
    try:
        event = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError; RecursionError: nested too deeply
        return None
    return event if isinstance(event, dict) else None


def iter_events(path: Path) -> Iterator[dict[str, Any]]:
    """Every event in the backups of ``path`` (oldest first), then in ``path``.

    Lines that are not events are skipped silently. Raises FileNotFoundError if
    neither ``path`` nor any backup exists. Not a snapshot: a rotation while
    iterating can make it miss or repeat events.
    """
    files = [*backup_paths(path), path]
    if not any(f.exists() for f in files):
        raise FileNotFoundError(2, "No such file or directory", str(path))
    for f in files:
        try:
            fh = open(f, "rb")  # noqa: SIM115
        except FileNotFoundError:
            continue  # rotated away since we listed it
        with fh:
            for raw in fh:
                event = parse_line(raw.rstrip(b"\n"))
                if event is not None:
                    yield event


def format_event(event: dict[str, Any]) -> str:
    """One event as a human-readable line, with the time in UTC.

    ``2026-11-25 02:41:03.123Z cam1 motion.start seq=123 age=12ms proc=4ms {"area": 1234}``
    """
    parts = [
        _format_time(event.get("time")),
        str(event.get("camera", "-")),
        str(event.get("type", "-")),
    ]
    if "seq" in event:
        parts.append(f"seq={event['seq']}")
    for key, label in (("frame_age_ms", "age"), ("processing_ms", "proc")):
        value = event.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{label}={value:.0f}ms")
    data = event.get("data")
    if data:
        parts.append(json.dumps(data, ensure_ascii=False))
    return " ".join(parts)


def _format_time(value: Any) -> str:
    if not isinstance(value, str):
        return "-"
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return value
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def run_events_command(
    path: Path,
    *,
    follow: bool,
    camera: str | None,
    type_: str | None,
    as_json: bool,
    out: TextIO | None = None,
    poll_interval: float = 0.25,
    stop: threading.Event | None = None,
    err: TextIO | None = None,
) -> int:
    """Print the events in ``path``; the ``edged events`` command. Returns the exit code.

    Without ``follow``: the backups (oldest first), then the file itself.
    With ``follow``: like ``tail -F``, the last 10 matching events, then new
    ones as they are written, across rotations and while the file does not
    exist yet, until ``stop`` is set or Ctrl-C.

    ``camera`` matches exactly; ``type_`` matches exactly or as a dotted
    prefix (``motion`` matches ``motion.start``). Human format shows times in
    UTC (``...Z``); ``as_json`` prints the lines unchanged. Lines that are not
    events are reported to ``err`` with file and line number and skipped; in
    follow mode an unfinished last line waits until its newline arrives.
    ``out``/``err`` default to ``sys.stdout``/``sys.stderr`` at call time.
    """
    printer = _Printer(
        out if out is not None else sys.stdout,
        err if err is not None else sys.stderr,
        camera=camera,
        type_=type_,
        as_json=as_json,
    )
    try:
        if follow:
            return _Follower(path, printer, poll_interval, stop or threading.Event()).run()
        return _print_all(path, printer)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `edged events | head`
        return 0


class _Printer:
    """Filters, formats and prints events; reports lines that are not events."""

    def __init__(
        self, out: TextIO, err: TextIO, *, camera: str | None, type_: str | None, as_json: bool
    ) -> None:
        self.out = out
        self.err = err
        self.camera = camera
        self.type_ = type_.rstrip(".") if type_ else None
        self.as_json = as_json
        self._reports = 0

    def matches(self, event: dict[str, Any]) -> bool:
        if self.camera is not None and event.get("camera") != self.camera:
            return False
        if self.type_ is not None:
            t = event.get("type")
            if not isinstance(t, str):
                return False
            return t == self.type_ or t.startswith(self.type_ + ".")
        return True

    def emit(self, raw: bytes, event: dict[str, Any]) -> None:
        # parse_line succeeded, so raw is valid UTF-8.
        self.out.write((raw.decode("utf-8") if self.as_json else format_event(event)) + "\n")

    def line(self, raw: bytes, where: Callable[[], str]) -> None:
        event = parse_line(raw)
        if event is None:
            self.garbage(where)
        elif self.matches(event):
            self.emit(raw, event)

    def garbage(self, where: Callable[[], str], what: str = "not a JSON event") -> None:
        self._reports += 1
        if self._reports <= _MAX_REPORTS:
            self.note(f"{where()}: skipping a line that is {what}")
        elif self._reports == _MAX_REPORTS + 1:
            self.note("further invalid lines are skipped without a report")

    def note(self, message: str) -> None:
        self.err.write(f"edged events: {message}\n")
        self.err.flush()

    def flush(self) -> None:
        self.out.flush()


def _print_all(path: Path, printer: _Printer) -> int:
    files = [*backup_paths(path), path]
    if not any(f.exists() for f in files):
        printer.note(f"{path}: no such file (no events written there yet?)")
        return 1
    rc = 0
    for f in files:
        try:
            fh = open(f, "rb")  # noqa: SIM115
        except FileNotFoundError:
            continue  # rotated away since we listed it
        except OSError as e:
            printer.note(f"cannot read {f}: {e.strerror}")
            rc = 1
            continue
        with fh:
            for lineno, raw in enumerate(fh, 1):
                if raw.endswith(b"\n"):
                    printer.line(raw[:-1], _at(f, lineno))
                elif (event := parse_line(raw)) is not None and printer.matches(event):
                    printer.emit(raw, event)  # complete, but its newline is not written yet
                # else: an unfinished last line, being written or cut off by a crash
    printer.flush()
    return rc


def _at(path: Path, lineno: int) -> Callable[[], str]:
    return lambda: f"{path}:{lineno}"


class _Tail:
    """One open file being followed: read position and unfinished last line."""

    def __init__(self, path: Path, fd: int, pos: int, printer: _Printer) -> None:
        self.path = path
        self.fd = fd
        st = os.fstat(fd)
        self.ident = (st.st_dev, st.st_ino)
        self.pos = pos  # next byte to read
        self.buf = b""  # bytes read after the last newline, starting at buf_at
        self.buf_at = pos
        self.skipping = False
        self.printer = printer

    def where(self, offset: int) -> Callable[[], str]:
        def where() -> str:
            # Line numbers only when reporting: count the newlines before the line.
            n, at = 1, 0
            while at < offset:
                chunk = os.pread(self.fd, min(_CHUNK, offset - at), at)
                if not chunk:
                    break
                n += chunk.count(b"\n")
                at += len(chunk)
            return f"{self.path}:{n}"

        return where

    def drain(self) -> None:
        """Print every complete line written since the last call."""
        size = os.fstat(self.fd).st_size
        if size < self.buf_at:
            self.printer.note(f"{self.path}: file truncated; reading from its start")
            self.pos = self.buf_at = 0
            self.buf = b""
            self.skipping = False
        elif size < self.pos:
            # Only the unfinished last line was taken back (the writer undoes
            # a write that the disk could not finish): every line printed is
            # still there, so go on from where that line started.
            self.pos = size
            self.buf = self.buf[: size - self.buf_at]
        while True:
            chunk = os.pread(self.fd, _CHUNK, self.pos)
            if not chunk:
                break
            self.pos += len(chunk)
            lines = (self.buf + chunk).split(b"\n")
            self.buf = lines.pop()
            at = self.buf_at
            for raw in lines:
                if self.skipping:
                    self.skipping = False
                else:
                    self.printer.line(raw, self.where(at))
                at += len(raw) + 1
            self.buf_at = at
            if len(self.buf) > _MAX_LINE:
                self.printer.garbage(self.where(self.buf_at), "too long")
                self.buf_at += len(self.buf)
                self.buf = b""
                self.skipping = True
        self.printer.flush()

    def close(self) -> None:
        """Stop following; a last line that never got its newline is printed if complete."""
        self.drain()
        if self.buf and not self.skipping:
            self.printer.line(self.buf, self.where(self.buf_at))
            self.printer.flush()
        os.close(self.fd)

    def print_tail(self, count: int) -> None:
        """Print the last ``count`` matching events before ``pos`` (scanning backwards)."""
        found: list[tuple[bytes, dict[str, Any]]] = []
        end, carry = self.pos, b""
        while end > 0 and len(found) < count:
            start = max(0, end - _CHUNK)
            data = os.pread(self.fd, end - start, start) + carry
            pieces = data.split(b"\n")
            if end == self.pos:
                pieces.pop()  # the empty piece after the last newline
            # The first piece may begin in the chunk before this one.
            carry = pieces.pop(0) if start > 0 else b""
            at = start + len(carry) + 1 if start > 0 else 0
            starts = []
            for raw in pieces:
                starts.append(at)
                at += len(raw) + 1
            for raw, line_at in zip(reversed(pieces), reversed(starts), strict=True):
                event = parse_line(raw)
                if event is None:
                    self.printer.garbage(self.where(line_at))
                elif self.printer.matches(event):
                    found.append((raw, event))
                    if len(found) == count:
                        break
            end = start
        for raw, event in reversed(found):
            self.printer.emit(raw, event)
        self.printer.flush()


class _Follower:
    """``tail -F`` for the event file: survives rotation and a file that is not there yet.

    On a rotation it finishes the old file, then reads any backups newer than
    it (several rotations between two polls), then the new file from its start.
    """

    def __init__(
        self, path: Path, printer: _Printer, poll_interval: float, stop: threading.Event
    ) -> None:
        self.path = path
        self.printer = printer
        self.poll_interval = poll_interval
        self.stop = stop
        self.current: _Tail | None = None
        self.last: tuple[int, int] | None = None  # identity of the newest file read
        self.last_fd: int | None = None  # open on that file: tells whether it still exists
        self.misses = 0  # listings in a row that missed the file last read
        self.retiring: list[tuple[_Tail, float]] = []
        self.problem: str | None = None  # last reported reason the path cannot be read

    def run(self) -> int:
        try:
            self.current = self._open(self.path, at_end=True)
            while True:
                stopping = self.stop.is_set()
                self._poll(stopping)
                if stopping:
                    return 0
                self.stop.wait(self.poll_interval)
        finally:
            for tail in [t for t, _ in self.retiring] + ([self.current] if self.current else []):
                os.close(tail.fd)
            self.retiring.clear()
            self.current = None
            if self.last_fd is not None:
                os.close(self.last_fd)
                self.last_fd = None

    def _poll(self, stopping: bool) -> None:
        now = time.monotonic()
        # An old file first: its lines are older. Writers that have not noticed
        # the rename yet (logrotate moved the file) may still add to it a while.
        for tail, deadline in list(self.retiring):
            if stopping or now >= deadline:
                self.retiring.remove((tail, deadline))
                tail.close()
            else:
                tail.drain()
        if self.current is not None:
            self.current.drain()
            if _ident(self.path) == self.current.ident:
                return
            self.current.drain()  # what was written just before the rename
            self.retiring.append((self.current, now + _GRACE))
            self.current = None
        self._catch_up()

    def _catch_up(self) -> None:
        """Read the backups newer than the last file read, then open the new file."""
        for _ in range(10):  # retry if the files are renamed under us meanwhile
            chain, snapshot = self._chain()
            idents = [i for i, _ in chain]
            if self.last in idents:
                pending = chain[idents.index(self.last) + 1 :]
            elif self.last_fd is not None and (last := os.fstat(self.last_fd)).st_nlink == 0:
                # Deleted: rotated past the last backup (every file left is
                # newer), or removed by hand (the backups are older). Newer
                # files were written after it was, and ties go to reading.
                pending = [c for c in chain if _mtime_ns(c[1]) >= last.st_mtime_ns]
            elif self.last_fd is not None and not snapshot and self.misses < _MAX_MISSES:
                # It still exists, so this listing (taken while a rotation
                # renamed files) missed it: starting at the newest file would
                # skip the backups in between. Look again, now or next poll.
                self.misses += 1
                continue
            else:
                # Nothing read yet, or the file last read left the folder.
                pending = [c for c in chain[-1:] if c[1] == self.path]
            self.misses = 0
            if not pending:
                # Right after a rotation the path may be briefly missing: not news.
                self._report(self.path, "No such file or directory", quiet=bool(self.retiring))
                return
            for ident, path in pending:
                tail = self._open(path, at_end=False, expect=ident)
                if tail is None:
                    break
                if path == self.path:
                    self.current = tail
                    tail.drain()
                    return
                tail.close()  # a complete backup
            else:
                return

    def _chain(self) -> tuple[list[tuple[tuple[int, int], Path]], bool]:
        """The backups and the file, oldest first, and whether that is a true snapshot.

        A listing taken while the writer shifts ``.1`` to ``.2`` ... can miss
        a file that moved to a name already looked at: edged's writer does
        not rotate while we hold the rotation lock. Without it (another
        rotator, or edged's writer busy), two identical listings in a row are
        taken instead, which is nearly as good.
        """
        with rotation_lock(self.path.parent, shared=True, wait=_LOCK_WAIT) as locked:
            previous = None
            for _ in range(10):
                chain = [(i, p) for p in [*backup_paths(self.path), self.path] if (i := _ident(p))]
                if locked or chain == previous:
                    break
                previous = chain
        return chain, locked

    def _open(
        self, path: Path, *, at_end: bool, expect: tuple[int, int] | None = None
    ) -> _Tail | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            if path == self.path:
                self._report(path, e.strerror or str(e), quiet=bool(self.retiring))
            return None
        st = os.fstat(fd)
        if expect is not None and (st.st_dev, st.st_ino) != expect:
            os.close(fd)  # renamed since we looked: look again
            return None
        self.last = (st.st_dev, st.st_ino)
        if self.last_fd is not None:
            os.close(self.last_fd)
        self.last_fd = os.dup(fd)
        if path == self.path and self.problem is not None:
            self.printer.note(f"{path}: has appeared; following it")
            self.problem = None
        if not at_end:
            return _Tail(path, fd, 0, self.printer)
        # Start after the last newline: an unfinished line is read once complete.
        pos = st.st_size
        while pos > 0:
            start = max(0, pos - _CHUNK)
            nl = os.pread(fd, pos - start, start).rfind(b"\n")
            if nl >= 0:
                pos = start + nl + 1
                break
            pos = start
        tail = _Tail(path, fd, pos, self.printer)
        tail.print_tail(TAIL_EVENTS)
        return tail

    def _report(self, path: Path, reason: str, *, quiet: bool) -> None:
        if reason != self.problem and not quiet:
            self.printer.note(f"{path}: {reason}; waiting for it")
            self.problem = reason


def _mtime_ns(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0  # gone meanwhile: opening it fails too, and the listing is taken again


def _ident(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)
