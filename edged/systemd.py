"""sd_notify for the supervisor: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

The supervisor creates one :class:`Notifier` before it spawns any child. It
reads ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` and removes
them from the environment, so readers and workers never inherit them (with
``NotifyAccess=main`` systemd would ignore their messages anyway, but a child
pinging the watchdog would hide a hung supervisor). Outside systemd every
method is a no-op.

The transport is sdnotify's :class:`~sdnotify.SystemdNotifier`; this module
is edged's part around it. Where sdnotify 0.3.2 falls short, the wrapper
works around it (each one has a test in tests/test_systemd.py):

- it reads ``NOTIFY_SOCKET`` only in its constructor and never removes it, so
  the wrapper creates it while the variable is set and removes it after;
- with ``debug=False`` it swallows every error and with ``debug=True`` raises
  from the constructor: the wrapper uses ``debug=True`` and turns each error
  into one log line;
- when the connect fails it drops its socket unclosed (a ResourceWarning from
  the garbage collector, which then closes it): the wrapper silences that one
  warning around the constructor;
- its socket blocks, and a datagram send blocks while systemd's queue is
  full: the wrapper gives it a timeout, so the main loop never hangs on it;
- it has no close(): the wrapper closes the socket itself;
- it encodes as Latin-1: the wrapper sends only printable ASCII
  (:func:`sanitize_status`).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

from sdnotify import SystemdNotifier

if TYPE_CHECKING:
    from edged.camera import CameraSnapshot

__all__ = ["STATUS_MAX", "Notifier", "format_status", "sanitize_status"]

log = logging.getLogger(__name__)

STATUS_MAX = 200  # characters of STATUS text; `systemctl status` shows one line
SEND_TIMEOUT = 2.0  # seconds a send may wait on systemd's full queue


def sanitize_status(text: str, limit: int = STATUS_MAX) -> str:
    """``text`` as one line of printable ASCII, at most ``limit`` characters.

    sdnotify encodes as Latin-1 and silently drops a message it cannot encode,
    and a newline would start a new ``KEY=value`` assignment in the datagram.
    """
    out = "".join(ch if " " <= ch <= "~" else ("?" if ord(ch) > 127 else " ") for ch in text)
    out = " ".join(out.split())
    if len(out) > limit:
        out = out[: max(0, limit - 3)].rstrip() + "..."
    return out


class Notifier:
    """The supervisor's line to systemd; every method is a no-op outside systemd."""

    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET")
        self._sd: SystemdNotifier | None = _connect(address) if address else None
        os.environ.pop("NOTIFY_SOCKET", None)
        usec = os.environ.pop("WATCHDOG_USEC", None)
        pid = os.environ.pop("WATCHDOG_PID", None)
        self._status: str | None = None
        self._last_ping = -math.inf
        self._failed = False
        self._timeout: float | None = None
        if self._sd is not None and usec and (not pid or pid == str(os.getpid())):
            try:
                value = int(usec)
            except ValueError:
                value = 0
            if value > 0:
                self._timeout = value / 1_000_000

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notify socket we could connect to."""
        return self._sd is not None

    @property
    def watchdog_timeout(self) -> float | None:
        """``WatchdogSec=`` in seconds, or None when the watchdog is off for us."""
        return self._timeout

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of ``WatchdogSec=``), or None when it is off."""
        return None if self._timeout is None else self._timeout / 2

    def ready(self, status: str) -> None:
        """READY=1 with a STATUS: the config is loaded and the children are spawned."""
        self._status = sanitize_status(status)
        self._send(f"READY=1\nSTATUS={self._status}")

    def status(self, text: str) -> None:
        """STATUS=text (sanitised, shortened), sent only when it changed."""
        clean = sanitize_status(text)
        if clean != self._status:
            self._status = clean
            self._send(f"STATUS={clean}")

    def reloading(self) -> None:
        """RELOADING=1 before a reload; call :meth:`ready` when it is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        """STOPPING=1: only when actually stopping (systemd starts the stop timeout)."""
        self._send("STOPPING=1")

    def watchdog_due(self, now: float | None = None) -> bool:
        """True when a WATCHDOG=1 ping is due (``now``: ``time.monotonic()``)."""
        interval = self.watchdog_interval
        if interval is None:
            return False
        now = time.monotonic() if now is None else now
        return now - self._last_ping >= interval

    def ping(self, now: float | None = None) -> bool:
        """Send WATCHDOG=1 if one is due; True if it was sent.

        Call it from the main loop only, after the loop has serviced the
        children and the event writer: a supervisor stuck anywhere stops
        pinging and systemd kills it.
        """
        now = time.monotonic() if now is None else now
        if not self.watchdog_due(now):
            return False
        self._last_ping = now
        self._send("WATCHDOG=1")
        return True

    def close(self) -> None:
        """Close the socket; later calls are no-ops."""
        if self._sd is not None:
            self._sd.socket.close()
            self._sd = None
            self._timeout = None

    def _send(self, message: str) -> None:
        if self._sd is None:
            return
        try:
            self._sd.notify(message)
        except OSError as exc:
            # Log once: the socket is gone (systemd re-executing?) or its queue is full.
            if not self._failed:
                log.warning("cannot notify systemd: %s", exc)
                self._failed = True
            return
        if self._failed:
            log.info("notifying systemd works again")
            self._failed = False


def _connect(address: str) -> SystemdNotifier | None:
    """sdnotify's notifier for ``address`` (read from the environment by sdnotify)."""
    try:
        # sdnotify drops its socket unclosed when connect() fails; the garbage
        # collector closes it at once, with a ResourceWarning we do not want.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            notifier = SystemdNotifier(debug=True)
    except OSError as exc:
        log.warning("cannot connect to systemd's notify socket %s: %s", address, exc)
        return None
    sock: socket.socket = notifier.socket
    # A full queue blocks a datagram send: wait a little, never hang the main loop.
    sock.settimeout(SEND_TIMEOUT)
    return notifier


def _age(seconds: float) -> str:
    if not math.isfinite(seconds):
        return ""
    if seconds < 10:
        return f" age {seconds * 1000:.0f}ms"
    return f" age {seconds:.0f}s"


def _camera(snap: CameraSnapshot) -> str:
    if snap.state == "streaming":
        return f"{snap.name} streaming {snap.fps:.1f}fps{_age(snap.frame_age)}"
    reason = sanitize_status(snap.reason, 40) if snap.reason else ""
    return f"{snap.name} {snap.state}" + (f" ({reason})" if reason else "")


def format_status(snapshots: Mapping[str, CameraSnapshot], limit: int = STATUS_MAX) -> str:
    """The STATUS text: ``cam1 streaming 25.0fps age 40ms; cam2 reconnecting``.

    With too many cameras for ``limit`` characters it summarises: counts per
    state, then the cameras that are not streaming.
    """
    if not snapshots:
        return "no cameras"
    text = "; ".join(_camera(s) for s in snapshots.values())
    if len(text) <= limit:
        return sanitize_status(text, limit)
    counts: dict[str, int] = {}
    for snap in snapshots.values():
        counts[snap.state] = counts.get(snap.state, 0) + 1
    head = f"{len(snapshots)} cameras: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    down = [s.name for s in snapshots.values() if s.state != "streaming"]
    if down:
        head += "; not streaming: " + " ".join(down)
    return sanitize_status(head, limit)
