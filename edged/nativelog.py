"""What FFmpeg and OpenCV print, captured in a reader process.

Native code writes straight to file descriptor 2, past Python's logging: it
would flood the journal with one line per retry and could print a URL with
its password. A reader therefore points fd 2 at a pipe; a thread reads it,
scrubs credentials, keeps the last lines (the reader names the cause of a
failure from them: wrong password, no such stream, refused, timed out) and
passes them to logging at debug level.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import sys
import threading
from collections.abc import Callable

from edged.redact import scrub

log = logging.getLogger("edged.ffmpeg")

# Lines OpenCV prints on every open that say nothing about the camera.
_NOISE = re.compile(r"backend is generally available but can't be used to capture by name")

AUTH_FAILED = "authentication failed (check user and password)"
FORBIDDEN = "access forbidden by the camera"
NOT_FOUND = "stream not found (check the URL path)"
UNREADABLE = "unreadable stream"
NOT_PLAYABLE = "not a playable video file (empty, truncated or corrupt)"
TLS_FAILED = "TLS handshake failed (does the server speak TLS? rtsps:// and https:// need it)"

# First match wins: the most specific cause first.
_CAUSES: list[tuple[re.Pattern[str], str]] = [
    # An MP4 without its index (cut short while being written, or empty): before
    # NOT_FOUND, which its "moov atom not found" would match.
    (re.compile(r"moov atom not found", re.I), NOT_PLAYABLE),
    (re.compile(r"^\[tls @|SSL routines|TLS packet", re.I), TLS_FAILED),
    (re.compile(r"\b401\b|Unauthorized", re.I), AUTH_FAILED),
    (re.compile(r"\b403\b|Forbidden", re.I), FORBIDDEN),
    (re.compile(r"\b404\b|Not Found|No such file", re.I), NOT_FOUND),
    (re.compile(r"Connection refused", re.I), "connection refused"),
    (re.compile(r"No route to host|Network is unreachable", re.I), "network unreachable"),
    (
        re.compile(r"Name or service not known|Temporary failure in name resolution|resolve", re.I),
        "host name not resolved",
    ),
    (re.compile(r"timed? ?out|timeout", re.I), "timed out"),
    (re.compile(r"Invalid data found|could not find codec|unsupported", re.I), UNREADABLE),
]


def classify(lines: list[str], file: bool = False) -> str | None:
    """The likely cause of a failed open or read, from FFmpeg's last lines;
    ``file``: the source is a local file, whose unreadable data is the file's fault."""
    for pattern, cause in _CAUSES:
        if any(pattern.search(line) for line in lines):
            return for_file(cause) if file else cause
    return None


def for_file(cause: str | None) -> str | None:
    """A cause as it applies to a local file: unreadable data is a damaged file."""
    return NOT_PLAYABLE if cause == UNREADABLE else cause


class NativeStderr:
    """Capture this process's fd 2; Python's own ``sys.stderr`` keeps the real one."""

    def __init__(self, keep: int = 20, on_line: Callable[[list[str]], None] | None = None) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()
        self.on_line = on_line
        self._marks: dict[str, threading.Event] = {}
        self._seq = 0
        real = os.dup(2)
        os.set_inheritable(real, False)
        # Python's logging keeps writing to where stderr went before.
        sys.stderr = open(real, "w", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
        r, w = os.pipe()
        os.dup2(w, 2)
        os.close(w)
        self._thread = threading.Thread(target=self._pump, args=(r,), daemon=True, name="stderr")
        self._thread.start()

    def _pump(self, fd: int) -> None:
        with open(fd, "rb") as pipe:
            for raw in pipe:
                line = raw.decode("utf-8", "replace").rstrip()
                if line in self._marks:
                    self._marks.pop(line).set()
                    continue
                if not line or _NOISE.search(line):
                    continue
                line = scrub(line)
                with self._lock:
                    self._lines.append(line)
                    recent = list(self._lines)
                log.debug("%s", line)
                if self.on_line is not None:
                    self.on_line(recent)

    def recent(self, n: int = 5, wait: float = 0.5) -> list[str]:
        """The last ``n`` lines, after whatever native code wrote so far has been read."""
        self._seq += 1
        mark = f"\x01edged-mark-{self._seq}"
        done = self._marks[mark] = threading.Event()
        os.write(2, (mark + "\n").encode())
        done.wait(wait)
        with self._lock:
            return list(self._lines)[-n:]

    def clear(self) -> None:
        with self._lock:
            self._lines.clear()
