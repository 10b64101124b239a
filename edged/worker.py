"""The worker process: run one camera's processor on the newest frame, again and again.

The worker sleeps until the reader publishes a frame newer than the last one it
saw, processes it in place in shared memory, and sends the resulting events
(small dicts, never frames) to the supervisor over a pipe. Frames published
while the processor was busy are counted as skipped; none is queued.

Messages to the supervisor are dicts of plain lists and floats::

    {"timings": [[age, took], ...], "events": [record, ...]}

``timings`` holds (frame age, processing time) in seconds for every frame
processed since the last message, oldest first; ``events`` the event records of
the newest of those frames (possibly none). A frame with events is sent at once,
with whatever timings are pending; timings alone wait up to BATCH_INTERVAL, so
a busy camera costs a few messages a second rather than one per frame.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edged.errors import EX_CONFIG, EXIT_PROCESSOR_FAILING, EdgedError
from edged.event import make_event
from edged.frames import SlotReader
from edged.logs import LogSettings, setup_logging
from edged.overlay import BoxesReport
from edged.plugin import error_text
from edged.processor import Frame, Processor, resolve_processor
from edged.reader import prepare_child
from edged.redact import scrub
from edged.snapshots import SnapshotWriter
from edged.source import bgr_to_gray

if TYPE_CHECKING:
    from edged.config import CameraConfig

log = logging.getLogger(__name__)


class ProcessorFailing(Exception):
    pass


TRACEBACK_INTERVAL = 60.0
BATCH_INTERVAL = 0.25  # seconds the oldest unsent timing may wait for more
IDLE_TIMEOUT = 0.5  # seconds between heartbeats while no frame comes
MAX_REASON = 500  # characters of a setup error sent to the supervisor


class FailureLog:
    """Logs a processor's exceptions: a traceback at most once a minute; in between
    only counted, then summarised with the next traceback: a processor failing on
    every frame must not flood the journal."""

    def __init__(self) -> None:
        self._last_traceback = -TRACEBACK_INTERVAL
        self._suppressed = 0

    def report(self, exc: Exception, what: str) -> None:
        """``what``: "camera front: processor motion failed on frame 42", say."""
        now = time.monotonic()
        if now - self._last_traceback < TRACEBACK_INTERVAL:
            self._suppressed += 1
            return
        since = (
            f" ({self._suppressed} more failures since the last report)" if self._suppressed else ""
        )
        log.error("%s%s:\n%s", what, since, "".join(traceback.format_exception(exc)).rstrip())
        self._last_traceback = now
        self._suppressed = 0


class Worker:
    def __init__(
        self,
        cam: CameraConfig,
        processor: Processor,
        slot: SlotReader,
        out: Connection,
        stop: threading.Event,
        snapshots: SnapshotWriter | None = None,
        node: str = "",
    ) -> None:
        self.cam = cam
        self.node = node
        self.snapshots = snapshots
        self.processor = processor
        self.slot = slot
        self.status = slot.status
        self.out = out
        self.stop = stop
        self.consecutive_errors = 0
        self.failures = FailureLog()
        self._timings: list[list[float]] = []
        self._boxes = BoxesReport(cam.name)
        self._oldest = 0.0  # time.monotonic() when the oldest of _timings was taken
        self._interval = 1.0 / cam.process_fps if cam.process_fps else 0.0
        # A processor that asks for grey gets grey, also when the reader
        # delivers BGR (for colour snapshots, or pixel_format = "bgr").
        self._to_gray = processor.pixel_format == "gray" and cam.frame_format == "bgr"
        self._gray: np.ndarray | None = None
        self._next_due = 0.0  # with process_fps: no frame is taken before this

    def run(self) -> None:
        status, slot, cam = self.status, self.slot, self.cam
        status["pid"] = os.getpid()
        # Only frames published from now on: the slot may hold one from long
        # ago (with freshness = "next" the reader's first frame, converted
        # before anyone waited), or the very frame a crashed predecessor was
        # processing. The next frame is at most a frame interval away.
        last_seq = slot.latest_seq
        wait_for_next = cam.freshness == "next"
        while not self.stop.is_set():
            now = time.monotonic()
            status["heartbeat"] = now
            timeout = IDLE_TIMEOUT
            if self._timings:
                # Wake up in time to send the pending timings if no frame comes.
                timeout = max(0.0, min(timeout, self._oldest + BATCH_INTERVAL - now))
            if self._next_due > now:
                # process_fps: rest. Nobody waits on the slot meanwhile, so with
                # freshness = "next" the reader converts none of these frames,
                # and the one taken afterwards is the next, not an old one.
                self.stop.wait(min(self._next_due - now, timeout))
                self._flush_if_due()
                if wait_for_next:
                    last_seq = max(last_seq, slot.latest_seq)
                continue
            got = slot.acquire(last_seq, timeout=timeout)
            if got is None:
                self._flush_if_due()
                continue
            image, seq, wall, mono = got
            if last_seq:
                status.add("skipped", max(0, seq - last_seq - 1))
            last_seq = seq
            start = time.monotonic()
            status["busy_since"] = start
            pixels = image
            if self._to_gray and image.ndim == 3:
                # Into the same buffer each time; a new one only when the size changes.
                pixels = self._gray = bgr_to_gray(image, self._gray)
            frame = Frame(image=pixels, seq=seq, timestamp=wall, monotonic=mono, camera=cam.name)
            if self._interval:
                # On the schedule, not start + interval: waiting for the next
                # frame (0 to one frame interval) would otherwise slow the rate;
                # but never sooner than half an interval from now, so a camera
                # back from a stall does not get a burst to catch up.
                self._next_due = max(self._next_due + self._interval, start + self._interval / 2)
            records = self._process(frame, start - mono, start)
            self._boxes.observe(self.processor, seq)
            took = time.monotonic() - start
            shots = self.snapshots
            # Encoded before the release (the image is shared memory), written after it.
            jpegs = shots.encode_all(image, records) if shots and records else []
            slot.release()
            if shots:
                shots.save_all(jpegs, wall, seq)
            if wait_for_next:
                # Frames published while we were busy are already old: wait
                # for the next one (the reader did not convert the others).
                last_seq = max(last_seq, slot.latest_seq)
            # A heartbeat before busy_since is cleared: the supervisor, which
            # reads busy_since first, never sees an idle worker with the
            # heartbeat of before this frame.
            status["heartbeat"] = time.monotonic()
            status["busy_since"] = 0.0
            status["last_age"] = start - mono
            status["last_processing"] = took
            status.add("frames")
            status.add("events", len(records))
            self._timings.append([start - mono, took])
            if len(self._timings) == 1:
                self._oldest = time.monotonic()
            # Events never wait for the batch: sinks and MQTT see them at once.
            if records or time.monotonic() - self._oldest >= BATCH_INTERVAL:
                self._send(records)
        if self._timings:
            self._send([])

    def _flush_if_due(self) -> None:
        """Send the pending timings once the oldest has waited BATCH_INTERVAL."""
        if self._timings and time.monotonic() - self._oldest >= BATCH_INTERVAL:
            self._send([])

    def _send(self, records: list[dict[str, Any]]) -> None:
        # See the module docstring for the message; supervisor.collect_events
        # reads it. A blocking send is the kernel pipe filling up, which only
        # happens when the supervisor is stuck.
        msg: dict[str, Any] = {"timings": self._timings, "events": records}
        if (boxes := self._boxes.take()) is not None:
            msg["boxes"] = boxes
        self.out.send(msg)
        self._timings = []

    def _process(self, frame: Frame, age: float, start: float) -> list[dict[str, Any]]:
        cam = self.cam
        try:
            result = self.processor.process(frame)
            events = list(result) if result is not None else []
            took = time.monotonic() - start
            records: list[dict[str, Any]] = [
                make_event(cam.name, cam.processor.type, e, frame, age, took, self.node)
                for e in events
            ]
        except Exception as exc:
            self.status.add("errors")
            self.consecutive_errors += 1
            self.failures.report(
                exc,
                f"camera {cam.name}: processor {cam.processor.type} failed on frame {frame.seq}",
            )
            limit = cam.max_processor_failures
            if limit and self.consecutive_errors >= limit:
                # Maybe its state is corrupt: a fresh process with a fresh
                # processor is the only reset we can offer.
                log.error(
                    "camera %s: processor %s failed %d frames in a row (last: %s); "
                    "restarting the worker",
                    cam.name,
                    cam.processor.type,
                    self.consecutive_errors,
                    exc,
                )
                raise ProcessorFailing from exc
            return []  # counted in the status record's "errors"
        if self.consecutive_errors:
            log.debug(
                "camera %s: processor %s recovered after %d failed frames",
                cam.name,
                cam.processor.type,
                self.consecutive_errors,
            )
            self.consecutive_errors = 0
        return records


def tell_setup_error(out: Connection, reason: str) -> None:
    """Send the supervisor why the processor cannot set up (the camera's failed
    state shows it); best effort, the exit code says the rest."""
    with contextlib.suppress(OSError, ValueError):
        out.send({"setup_error": reason[:MAX_REASON]})


def worker_main(
    cam: CameraConfig,
    slot_name: str,
    doorbell: Connection,
    out: Connection,
    log_settings: LogSettings,
    state_dir: Path | None = None,
    node: str = "",
) -> None:
    """Entry point of a worker process (started with the ``spawn`` method).

    ``state_dir``: where snapshots go, if the camera takes them; ``node``: this
    box's name, in every event."""
    prepare_child("worker", cam.name)
    # The processor's own subprocesses must not keep the events pipe open: the
    # supervisor learns this worker is gone (and a message torn by its death)
    # from EOF, which comes only when every copy of the write end is closed.
    os.set_inheritable(out.fileno(), False)
    setup_logging(log_settings)
    stop = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cls = resolve_processor(cam.processor.type)
        processor = cls(cam.processor.build_options(), cam.name)
        processor.cameras = {cam.name: cam.regions}
        processor.setup()
    except (EdgedError, Exception) as exc:
        # error_text: a pydantic error's input may be one of the plugin's secrets.
        reason = scrub(str(exc)) if isinstance(exc, EdgedError) else error_text(exc)
        log.error("camera %s: cannot set up processor %s: %s", cam.name, cam.processor.type, reason)
        tell_setup_error(out, reason)
        os._exit(EX_CONFIG)
    slot = SlotReader(slot_name, doorbell.fileno())
    snapshots = None
    if state_dir is not None and cam.snapshots.enabled:
        snapshots = SnapshotWriter(cam.name, cam.snapshots, state_dir, slot.status)
    code = 0
    try:
        Worker(cam, processor, slot, out, stop, snapshots, node).run()
    except ProcessorFailing:
        code = EXIT_PROCESSOR_FAILING
    except Exception:
        log.exception("camera %s: worker crashed", cam.name)
        code = 1
    finally:
        try:
            processor.close()
        except Exception:
            log.exception("camera %s: processor %s close() failed", cam.name, cam.processor.type)
        slot.close()
    os._exit(code)
