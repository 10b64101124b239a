"""The reader process: decode one camera continuously into its latest-frame slot.

A reader never waits for anyone: it grabs, stamps the capture time, decodes
straight into a free buffer of the slot and publishes it. When the source is
lost it reconnects with exponential backoff and jitter; a network camera is
probed meanwhile (:mod:`edged.probe`) and opened as soon as it is back. It is a process, not a
thread, because FFmpeg can block inside native code where Python cannot
interrupt it; the supervisor then kills it (its heartbeat stops) and starts
another.
"""

from __future__ import annotations

import enum
import logging
import os
import random
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

import numpy as np

from edged.child import Backoff
from edged.errors import EX_CONFIG, EXIT_END_OF_STREAM, EdgedError, PluginError, SourceError
from edged.frames import SlotWriter
from edged.logs import LogSettings, setup_logging
from edged.nativelog import AUTH_FAILED, FORBIDDEN, NOT_FOUND, NativeStderr, classify
from edged.probe import PROBE_INTERVAL, Probe
from edged.rate import FrameRate
from edged.redact import scrub
from edged.source import Source
from edged.sources import open_source
from edged.startmethod import detach_child, orphaned

if TYPE_CHECKING:
    from edged.config import CameraConfig

log = logging.getLogger(__name__)

SLOW_RETRY_CAUSES = {AUTH_FAILED, FORBIDDEN, NOT_FOUND}
# After a probe sees a camera come back, failed opens are retried every
# COMEBACK_RETRY seconds for COMEBACK_WINDOW seconds, each open bounded to
# COMEBACK_OPEN_TIMEOUT: a camera starting up may take connections before it
# serves media (404, 503, or no answer at all).
COMEBACK_WINDOW = 10.0
COMEBACK_RETRY = 0.5
COMEBACK_OPEN_TIMEOUT = 2.0
TOO_FAST = 1.5  # delivered fps above this times the nominal rate: the camera repeats frames


class ReaderState(enum.IntEnum):
    STARTING = 0
    CONNECTING = 1
    STREAMING = 2
    RECONNECTING = 3
    ENDED = 4


def prepare_child(role: str, camera: str) -> None:
    """First thing in a reader or worker: die with the supervisor, take a name."""
    import ctypes

    pr_set_name, pr_set_pdeathsig = 15, 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # No reader or worker outlives a SIGKILLed supervisor (Linux): our
        # parent is the supervisor, or the fork server that exits with it
        # once we dropped our end of its "alive" pipe (edged/startmethod.py).
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
        # `ps`/`top` show "reader:cam1" instead of a bare "python3".
        libc.prctl(pr_set_name, f"{role}:{camera}"[:15].encode())
    except (OSError, AttributeError):
        pass
    detach_child()
    # A supervisor SIGKILLed between fork and prctl leaves us orphaned already.
    if orphaned():
        os._exit(1)


class Reader:
    def __init__(
        self,
        cam: CameraConfig,
        writer: SlotWriter,
        stop: threading.Event,
        native: NativeStderr | None = None,
    ) -> None:
        self.cam = cam
        self.gray = cam.frame_format == "gray"
        self.native = native
        self.writer = writer
        self.status = writer.status
        self.stop = stop
        self.backoff = Backoff(cam.restart_delay, cam.restart_max_delay, cam.restart_reset_after)
        # Failed attempts since the last frame: a source that opens and then
        # fails at once is still down (one line per cause, not two per retry).
        self.failures = 0
        # While a network camera is away: a TCP connect every PROBE_INTERVAL
        # notices its return (None: a source that is not probed).
        self.probe = Probe.for_camera(cam)
        # Until then (monotonic), failed opens are retried quickly: the camera
        # was seen coming back and may still be starting up.
        self.comeback_until = 0.0
        self._accepted_at = -PROBE_INTERVAL  # monotonic time of the last probe that got in

    def set_state(self, state: ReaderState) -> None:
        if int(self.status["state"]) != state:
            self.status["state"] = state
            self.status["state_since"] = time.monotonic()

    def beat(self) -> None:
        self.status["heartbeat"] = time.monotonic()

    def run(self) -> int:
        self.status["pid"] = os.getpid()
        self.beat()
        last_cause: str | None = None
        while not self.stop.is_set():
            self.set_state(
                ReaderState.CONNECTING if self.failures == 0 else ReaderState.RECONNECTING
            )
            cam = self.cam
            quick = time.monotonic() < self.comeback_until
            if quick and cam.open_timeout > COMEBACK_OPEN_TIMEOUT:
                # A camera that just came back and does not answer at once is
                # still starting: try again soon rather than wait open_timeout.
                cam = cam.model_copy(update={"open_timeout": COMEBACK_OPEN_TIMEOUT})
            port_closed = self._probe_before_open()
            source = open_source(cam)
            started = time.monotonic()
            if self.native is not None:
                self.native.clear()
            try:
                self.beat()
                source.open()
                self.status.add("opens")
                self._trust_probe(port_closed)
                ended = self.stream(source)
                if ended:
                    self.set_state(ReaderState.ENDED)
                    log.info("camera %s: end of %s", self.cam.name, self.cam.display_source)
                    return EXIT_END_OF_STREAM
            except Exception as exc:
                if not isinstance(exc, EdgedError):
                    if self.cam.source_kind != "plugin":
                        raise  # edged's own sources: a bug, with its traceback
                    # A plugin's open()/grab()/retrieve() failing is its camera
                    # failing: said and retried like any other, not a crash.
                    exc = SourceError(
                        f"source {self.cam.source} failed: {type(exc).__name__}: {scrub(str(exc))}"
                    )
                self.failures += 1
                failures = self.failures
                self.status.add("open_failures")
                self.backoff.succeeded(time.monotonic() - started)
                lines = self.native.recent() if self.native else []
                known = exc.cause if isinstance(exc, SourceError) else None
                cause = known or classify(lines, file=self.cam.source_kind == "file")
                delay = self._delay(cause, quick and time.monotonic() < self.comeback_until)
                reason = _with_cause(str(exc), cause)
                closed = self._probe_port()
                # Before the state: the supervisor shows both together, in
                # STATUS, /readyz, MQTT and `edged status`.
                self.writer.set_reason(_probing(closed) if closed else cause or str(exc))
                # One line when the camera goes away or the cause changes; then
                # a summary every 10 attempts, not a line per retry.
                if failures == 1 or cause != last_cause or failures % 10 == 0:
                    log.warning(
                        "camera %s: %s; %s (attempt %d)",
                        self.cam.name,
                        reason,
                        _plan(delay, closed),
                        failures,
                    )
                    if lines and failures == 1:
                        log.info("camera %s: FFmpeg said: %s", self.cam.name, " | ".join(lines))
                last_cause = cause
                self.set_state(ReaderState.RECONNECTING)
                self._wait(delay, closed)
            finally:
                source.close()
        return 0

    def _delay(self, cause: str | None, quick: bool) -> float:
        """Seconds until the next full open after a failed one."""
        if quick and cause not in (AUTH_FAILED, FORBIDDEN):
            # Just back: a camera still starting up answers 404 or 503, or
            # nothing, for a few seconds. Not a wrong URL; ask again soon.
            return COMEBACK_RETRY
        delay = self.backoff.next_delay()
        if cause in SLOW_RETRY_CAUSES:
            # Retrying a wrong password quickly only fills the camera's
            # log (and may lock the account): use the slow end of the schedule.
            delay = max(delay, self.cam.restart_max_delay * (0.5 + random.random() / 2))
        return delay

    def _probe_port(self) -> str | None:
        """Why the camera's port does not accept connections; None when it does
        (or when the source is not probed)."""
        if self.probe is None:
            return None
        cause = self.probe()
        self.status.add("probes")
        if cause is None:
            self._accepted_at = time.monotonic()
        return cause

    def _probe_before_open(self) -> bool:
        """Probe right before a full open (True: the port refused), to learn if probes tell."""
        if self.probe is None:
            return False
        if time.monotonic() - self._accepted_at < PROBE_INTERVAL:
            return False  # _wait() has just seen the port accept
        return self._probe_port() is not None

    def _trust_probe(self, port_closed: bool) -> None:
        """A stream that opens where the probe found no port (a proxy, a port FFmpeg
        finds otherwise): the probe says nothing about this camera. Today's backoff."""
        if port_closed and self.probe is not None:
            log.info(
                "camera %s: the stream opened where a TCP connect to its port failed; "
                "not probing it",
                self.cam.name,
            )
            self.probe = None

    def _wait(self, delay: float, closed: str | None) -> None:
        """Wait out ``delay`` before the next full open. While the camera's port
        is closed (``closed``: the probe's cause), probe it and return as soon
        as it accepts; the full opens that fall due meanwhile are skipped."""
        if self.probe is None:
            self._sleep(delay)
            return
        now = time.monotonic()
        deadline = now + delay
        # A camera going down may take connections for a moment after its
        # stream stopped: an open port is watched for a while too, then left be
        # (a camera that refuses a password is not probed twice a second).
        watch_open_until = now + COMEBACK_WINDOW
        down_since = now if closed else None
        shown = closed
        while not self.stop.wait(max(0.0, PROBE_INTERVAL - (time.monotonic() - now))):
            self.beat()
            now = time.monotonic()
            if down_since is None and (now >= deadline or now >= watch_open_until):
                self._sleep(deadline - now)
                return
            cause = self._probe_port()
            self.beat()
            if cause is None:
                if down_since is None:
                    continue
                log.info(
                    "camera %s: its port answers again after %.1fs; opening",
                    self.cam.name,
                    time.monotonic() - down_since,
                )
                self.comeback_until = time.monotonic() + COMEBACK_WINDOW
                return
            if down_since is None:
                down_since = now
            if cause != shown:
                self.writer.set_reason(_probing(cause))
                shown = cause
            if time.monotonic() >= deadline:
                # A full open now would be refused the same way: skip it; the
                # backoff's next step is the next one due.
                deadline = time.monotonic() + self.backoff.next_delay()

    def _sleep(self, delay: float) -> None:
        deadline = time.monotonic() + delay
        while not self.stop.is_set():
            self.beat()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.stop.wait(min(remaining, 0.5))

    def _publish(
        self,
        source: Source,
        shape: tuple[int, ...] | None,
        seq: int,
        wall: float,
        mono: float,
    ) -> tuple[int, ...]:
        """Decode the grabbed frame into a free slot buffer and publish it; its shape."""
        writer, status = self.writer, self.status
        retrieve = source.retrieve_gray if self.gray else source.retrieve
        if shape is None:
            frame = retrieve(None)
        else:
            buf = writer.buffer(shape)
            frame = retrieve(buf)
            if frame is not buf and not np.shares_memory(frame, buf):
                shape = None  # the size changed; OpenCV decoded into a new array
        if shape is None:
            # First frame, or a new size: one copy, then decode in place again.
            if (
                frame.dtype != np.uint8
                or frame.ndim not in (2, 3)
                or frame.size == 0
                or (frame.ndim == 3 and frame.shape[2] not in (1, 3))
            ):
                raise EdgedError(
                    f"source gave a {frame.dtype} array of shape {frame.shape}; "
                    "expected HxWx3 BGR (or HxW grey) uint8"
                )
            shape = tuple(frame.shape)
            if (status["width"], status["height"]) != (shape[1], shape[0]):
                if status["width"]:
                    log.info(
                        "camera %s: frame size changed to %dx%d",
                        self.cam.name,
                        shape[1],
                        shape[0],
                    )
                status["width"], status["height"] = shape[1], shape[0]
            buf = writer.buffer(shape)
            np.copyto(buf, frame)
            # Streaming once a frame has a place in the slot, not at the open: a
            # source that opens and then fails (no frame, no shared memory) is
            # still reconnecting, not flapping to "streaming" at every attempt.
            self.set_state(ReaderState.STREAMING)
            writer.set_reason("")  # after the state: never "reconnecting" without a cause
        writer.publish(wall, mono, shape, seq=seq)
        return shape

    def stream(self, source: Source) -> bool:
        """Publish frames until stopped (False) or the stream ends (True)."""
        writer, status = self.writer, self.status
        shape: tuple[int, ...] | None = None
        nominal = self.cam.fps or source.nominal_fps
        # With freshness = "next" the worker ignores frames published while it
        # is busy: converting them (sws_scale) and copying them would be wasted.
        # Every frame is still grabbed (decoded): H.264 needs each one.
        every_frame = self.cam.freshness == "newest"
        seq = writer.seq
        rate = FrameRate()
        warned_fast = False
        status["fps"] = 0.0
        status["last_frame"] = 0.0
        while not self.stop.is_set():
            self.beat()
            if not source.grab():
                if source.live:
                    # A camera has no end: it went away (a plugin's read()
                    # returned None). Reconnect rather than end for good.
                    raise SourceError(f"lost {self.cam.display_source}: the source ended")
                return True
            wall, mono = time.time(), time.monotonic()
            seq += 1
            if every_frame or shape is None or writer.consumer_waiting:
                shape = self._publish(source, shape, seq, wall, mono)
            if self.failures:
                log.info("camera %s: reconnected after %d attempts", self.cam.name, self.failures)
                self.failures = 0
                self.comeback_until = 0.0  # back for good: a later loss backs off again
            status.add("frames")
            rate.add(mono)
            status["fps"] = rate.fps
            status["last_frame"] = mono
            status["last_frame_wall"] = wall
            # Judged on a whole window of frames, never on the burst a stream
            # opens with or on a few frames that arrived bunched together.
            if not warned_fast and nominal and rate.full:
                fps = rate.fps
                if fps > TOO_FAST * nominal:
                    warned_fast = True
                    log.warning(
                        "camera %s: delivers %.1f frames/s, more than its nominal %.1f: "
                        "it may be repeating frames",
                        self.cam.name,
                        fps,
                        nominal,
                    )
        return False


def _probing(cause: str) -> str:
    """The state's reason while the camera's port is probed for its return."""
    return f"{cause}; probing every {PROBE_INTERVAL:g}s"


def _plan(delay: float, closed: str | None) -> str:
    """What the reader does next, for its log line."""
    if closed is None:
        return f"retrying in {delay:.1f}s"
    return f"retrying in {delay:.1f}s, or once its port answers (probing every {PROBE_INTERVAL:g}s)"


def _with_cause(message: str, cause: str | None) -> str:
    """``message: cause``, unless the message says it already ("... Connection refused")."""
    if not cause or cause.lower() in message.lower():
        return message
    return f"{message}: {cause}"


def reader_main(
    cam: CameraConfig, slot_name: str, doorbell: Connection, log_settings: LogSettings
) -> None:
    """Entry point of a reader process (started with the ``spawn`` method)."""
    prepare_child("reader", cam.name)
    native = NativeStderr()
    setup_logging(log_settings)
    stop = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides
    writer = SlotWriter(slot_name, doorbell.fileno())
    native.on_line = lambda lines: writer.set_note("\n".join(lines[-5:]))
    code = 0
    try:
        code = Reader(cam, writer, stop, native).run()
    except PluginError as exc:
        # A source plugin that cannot be found or built: the config's doing,
        # said in one line; retried slowly, like a processor that cannot set up.
        log.error("camera %s: %s", cam.name, exc)
        code = EX_CONFIG
    except Exception:
        log.exception("camera %s: reader crashed", cam.name)
        code = 1
    finally:
        writer.close()
    os._exit(code)
