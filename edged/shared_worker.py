"""A shared processor's worker: one process, several cameras, the newest frame of each.

A ``[processors.NAME]`` table is loaded once per instance; each instance maps
the slots of the cameras assigned to it (zero-copy, as a camera's own worker
does) and sleeps on all their doorbells at once (select()). Each round it
scans the cameras from where the last round stopped (round-robin, so no
camera starves however fast the others publish), takes the newest frame of
each that has a new one (honouring its ``process_fps``), up to
``batch_size``, waits at most ``batch_wait`` for more when the batch is not
full, and hands them to :meth:`Processor.process_batch` (``process()`` when
``batch_size`` is 1).

Every camera keeps its own status record (the WORKER record of its slot),
so per-camera states and metrics are as with a worker of its own. Messages
to the supervisor are per camera, as a camera's own worker sends them plus
the camera's name::

    {"camera": "front", "timings": [[age, took], ...], "events": [record, ...]}

While the batch is processed, the cameras not in it stay armed (their
readers publish and ring): a shared worker takes each camera's newest frame,
so with ``freshness = "next"`` only the cameras it just processed wait for
their next frame.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Iterable
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
from edged.processor import Event, Frame, Processor, resolve_processor
from edged.reader import prepare_child
from edged.redact import scrub
from edged.snapshots import SnapshotWriter
from edged.source import bgr_to_gray
from edged.worker import (
    BATCH_INTERVAL,
    IDLE_TIMEOUT,
    FailureLog,
    ProcessorFailing,
    tell_setup_error,
)

if TYPE_CHECKING:
    from edged.config import CameraConfig
    from edged.config.processors import SharedProcessorConfig

log = logging.getLogger(__name__)

BROKEN_RETRY = 0.05  # seconds before looking again at a frame whose segment was replaced


@dataclasses.dataclass
class Taken:
    """A frame a lane holds until its batch is done."""

    frame: Frame
    image: np.ndarray  # as published (BGR for a colour snapshot of a grey processor)
    wall: float


class Lane:
    """One camera as its shared worker sees it: its slot, its schedule, its counters."""

    def __init__(self, cam: CameraConfig, slot: SlotReader, snapshots: SnapshotWriter | None):
        self.cam = cam
        self.slot = slot
        self.status = slot.status
        self.snapshots = snapshots
        # Only frames published from now on (see Worker.run).
        self.last_seq = slot.latest_seq
        self.next_due = 0.0
        self.interval = 1.0 / cam.process_fps if cam.process_fps else 0.0
        self.wait_for_next = cam.freshness == "next"
        self.to_gray = False
        self.gray: np.ndarray | None = None
        self.timings: list[list[float]] = []
        self.boxes = BoxesReport(cam.name)
        self.oldest = 0.0
        self.consecutive_errors = 0

    @property
    def name(self) -> str:
        return self.cam.name

    def resting(self, now: float) -> bool:
        """process_fps: not due yet. Disarmed meanwhile, so with freshness = "next"
        the reader converts none of these frames."""
        if self.next_due <= now:
            return False
        self.slot.disarm()
        if self.wait_for_next:
            self.last_seq = max(self.last_seq, self.slot.latest_seq)
        return True

    def take(self) -> Taken | None:
        got = self.slot.try_acquire(self.last_seq)
        if got is None:
            return None
        self.slot.disarm()
        image, seq, wall, mono = got
        if self.last_seq:
            self.status.add("skipped", max(0, seq - self.last_seq - 1))
        self.last_seq = seq
        pixels = image
        if self.to_gray and image.ndim == 3:
            pixels = self.gray = bgr_to_gray(image, self.gray)
        frame = Frame(image=pixels, seq=seq, timestamp=wall, monotonic=mono, camera=self.name)
        return Taken(frame, image, wall)

    def scheduled(self, start: float) -> None:
        if self.interval:
            # As Worker.run: on the schedule, never sooner than half an interval.
            self.next_due = max(self.next_due + self.interval, start + self.interval / 2)


class SharedWorker:
    def __init__(
        self,
        name: str,
        settings: SharedProcessorConfig,
        processor: Processor,
        lanes: list[Lane],
        out: Connection,
        stop: threading.Event,
        node: str = "",
    ) -> None:
        self.name = name
        self.settings = settings
        self.processor = processor
        self.lanes = lanes
        self.out = out
        self.stop = stop
        self.node = node
        self.failures = FailureLog()
        self.start = 0  # where the next round's scan begins
        for lane in lanes:
            lane.to_gray = processor.pixel_format == "gray" and lane.cam.frame_format == "bgr"

    def run(self) -> None:
        pid = os.getpid()
        for lane in self.lanes:
            lane.status["pid"] = pid
        while not self.stop.is_set():
            now = time.monotonic()
            for lane in self.lanes:
                lane.status["heartbeat"] = now
            batch = self._collect(now)
            if not batch:
                self._sleep(now)
                self._flush_due()
                continue
            if len(batch) < self.settings.batch_size and self.settings.batch_wait > 0:
                self._fill(batch, now + self.settings.batch_wait)
            self._run_batch(batch)
        for lane in self.lanes:
            if lane.timings:
                self._send(lane, [])

    # -- choosing frames -------------------------------------------------------

    def _scan_order(self) -> list[Lane]:
        return self.lanes[self.start :] + self.lanes[: self.start]

    def _collect(self, now: float) -> list[tuple[Lane, Taken]]:
        """The newest frame of each camera that has a new one, round-robin from
        where the last round stopped, up to batch_size."""
        batch: list[tuple[Lane, Taken]] = []
        for lane in self._scan_order():
            if len(batch) >= self.settings.batch_size:
                break
            if lane.resting(now):
                continue
            taken = lane.take()
            if taken is not None:
                batch.append((lane, taken))
        if batch:
            # The next round begins after the last camera served: with more
            # cameras ready than fit a batch, each waits at most a few rounds.
            self.start = (self.lanes.index(batch[-1][0]) + 1) % len(self.lanes)
        return batch

    def _arm(self, lanes: list[Lane], timeout: float) -> tuple[list[int], float]:
        """Arm these lanes' doorbells: the fds to wait on, and the timeout, cut
        to nothing when a frame came meanwhile (or shortly, for a broken one)."""
        fds = []
        for lane in lanes:
            if lane.slot.arm(lane.last_seq):
                fds.append(lane.slot.fileno)
            elif lane.slot.broken:
                timeout = min(timeout, BROKEN_RETRY)
            else:
                timeout = 0.0
        return fds, timeout

    def _sleep(self, now: float) -> None:
        """Wait until a camera publishes, one is due, or timings are due."""
        timeout = IDLE_TIMEOUT
        waiting = []
        for lane in self.lanes:
            if lane.timings:
                timeout = min(timeout, lane.oldest + BATCH_INTERVAL - now)
            if lane.resting(now):
                timeout = min(timeout, lane.next_due - now)
            else:
                waiting.append(lane)
        fds, timeout = self._arm(waiting, max(0.0, timeout))
        if timeout > 0:
            self._wait(fds, timeout)

    def _wait(self, fds: list[int], timeout: float) -> None:
        if fds:
            select.select(fds, [], [], timeout)
        else:
            self.stop.wait(timeout)

    def _fill(self, batch: list[tuple[Lane, Taken]], deadline: float) -> None:
        """Wait up to ``deadline`` for frames of the cameras not in the batch yet."""
        while len(batch) < self.settings.batch_size and not self.stop.is_set():
            now = time.monotonic()
            held = {lane.name for lane, _ in batch}
            others = [
                lane
                for lane in self._scan_order()
                if lane.name not in held and not lane.resting(now)
            ]
            for lane in others:
                if len(batch) >= self.settings.batch_size:
                    return
                taken = lane.take()
                if taken is not None:
                    batch.append((lane, taken))
            if len(batch) >= self.settings.batch_size or now >= deadline:
                return
            held = {lane.name for lane, _ in batch}
            fds, timeout = self._arm([o for o in others if o.name not in held], deadline - now)
            if not fds and timeout > 0:
                return  # no camera left to wait for
            self._wait(fds, timeout)

    # -- processing ------------------------------------------------------------

    def _call(self, frames: list[Frame]) -> list[Iterable[Event] | None]:
        if self.settings.batch_size == 1:
            return [self.processor.process(frames[0])]
        results = self.processor.process_batch(frames)
        if not isinstance(results, list) or len(results) != len(frames):
            raise TypeError(
                f"process_batch() returned {type(results).__name__} "
                f"{'of ' + str(len(results)) if isinstance(results, list) else ''}"
                f"for {len(frames)} frames: give a list with one result per frame"
            )
        return results

    def _run_batch(self, batch: list[tuple[Lane, Taken]]) -> None:
        start = time.monotonic()
        for lane, _ in batch:
            lane.status["busy_since"] = start
            lane.scheduled(start)
        frames = [taken.frame for _, taken in batch]
        results: list[object]
        try:
            results = list(self._call(frames))
        except Exception as exc:
            # One call for every frame: its failure is every camera's.
            names = ", ".join(lane.name for lane, _ in batch)
            what = f"processor {self.name} ({self.settings.type}) failed on cameras {names}"
            self.failures.report(exc, what)
            results = [exc] * len(batch)
        took = time.monotonic() - start
        failing = []
        for (lane, taken), result in zip(batch, results, strict=True):
            records = self._records(lane, taken.frame, result, start, took)
            if records is not None:
                lane.consecutive_errors = 0
            elif self._failed(lane):
                failing.append(lane.name)
            self._finish(lane, taken, records or [], start, took)
        if failing:
            # Maybe its state is corrupt: a fresh process is the only reset we have.
            log.error(
                "processor %s (%s) failed max_processor_failures frames in a row of "
                "camera(s) %s; restarting the worker",
                self.name,
                self.settings.type,
                ", ".join(failing),
            )
            raise ProcessorFailing

    def _records(
        self, lane: Lane, frame: Frame, result: object, start: float, took: float
    ) -> list[dict[str, Any]] | None:
        """The event records of one camera's result; None if it failed."""
        if isinstance(result, Exception):
            return None
        age = start - frame.monotonic
        try:
            events = list(result) if result is not None else []  # type: ignore[call-overload]
            return [
                make_event(lane.name, self.settings.type, e, frame, age, took, self.node)
                for e in events
            ]
        except Exception as exc:
            what = f"camera {lane.name}: processor {self.name} failed on frame {frame.seq}"
            self.failures.report(exc, what)
            return None

    def _failed(self, lane: Lane) -> bool:
        """Count a failed frame of this camera; True when it reached its limit."""
        lane.status.add("errors")
        lane.consecutive_errors += 1
        limit = lane.cam.max_processor_failures
        return bool(limit and lane.consecutive_errors >= limit)

    def _finish(
        self, lane: Lane, taken: Taken, records: list[dict[str, Any]], start: float, took: float
    ) -> None:
        status, slot, shots = lane.status, lane.slot, lane.snapshots
        lane.boxes.observe(self.processor, taken.frame.seq)
        # Encoded before the release (the image is shared memory), written after it.
        jpegs = shots.encode_all(taken.image, records) if shots and records else []
        slot.release()
        if shots:
            shots.save_all(jpegs, taken.wall, taken.frame.seq)
        if lane.wait_for_next:
            lane.last_seq = max(lane.last_seq, slot.latest_seq)
        # The heartbeat before busy_since is cleared: see Worker.run.
        status["heartbeat"] = time.monotonic()
        status["busy_since"] = 0.0
        age = start - taken.frame.monotonic
        status["last_age"] = age
        status["last_processing"] = took
        status.add("frames")
        status.add("events", len(records))
        lane.timings.append([age, took])
        if len(lane.timings) == 1:
            lane.oldest = time.monotonic()
        if records or time.monotonic() - lane.oldest >= BATCH_INTERVAL:
            self._send(lane, records)

    def _flush_due(self) -> None:
        now = time.monotonic()
        for lane in self.lanes:
            if lane.timings and now - lane.oldest >= BATCH_INTERVAL:
                self._send(lane, [])

    def _send(self, lane: Lane, records: list[dict[str, Any]]) -> None:
        msg: dict[str, Any] = {"camera": lane.name, "timings": lane.timings, "events": records}
        if (boxes := lane.boxes.take()) is not None:
            msg["boxes"] = boxes
        self.out.send(msg)
        lane.timings = []


def shared_worker_main(
    name: str,
    index: int,
    settings: SharedProcessorConfig,
    cams: list[CameraConfig],
    slots: list[tuple[str, Connection]],
    out: Connection,
    log_settings: LogSettings,
    state_dir: Path | None = None,
    node: str = "",
) -> None:
    """Entry point of a shared processor's instance ``index`` (1-based), serving
    ``cams`` through ``slots`` (each a slot name and its doorbell's read end)."""
    prepare_child("worker", f"{name}{index}")
    os.set_inheritable(out.fileno(), False)  # see worker_main
    setup_logging(log_settings)
    stop = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    label = f"processor {name} (instance {index})"
    try:
        cls = resolve_processor(settings.type)
        # camera "": one instance serves several; frame.camera names each frame's.
        processor = cls(settings.build_options(), "")
        processor.cameras = {cam.name: cam.regions for cam in cams}
        processor.setup()
    except (EdgedError, Exception) as exc:
        reason = scrub(str(exc)) if isinstance(exc, EdgedError) else error_text(exc)
        log.error("%s: cannot set up %s: %s", label, settings.type, reason)
        tell_setup_error(out, reason)
        os._exit(EX_CONFIG)
    lanes = []
    for cam, (slot_name, doorbell) in zip(cams, slots, strict=True):
        slot = SlotReader(slot_name, doorbell.fileno())
        shots = None
        if state_dir is not None and cam.snapshots.enabled:
            shots = SnapshotWriter(cam.name, cam.snapshots, state_dir, slot.status)
        lanes.append(Lane(cam, slot, shots))
    code = 0
    try:
        SharedWorker(name, settings, processor, lanes, out, stop, node).run()
    except ProcessorFailing:
        code = EXIT_PROCESSOR_FAILING
    except Exception:
        log.exception("%s: worker crashed", label)
        code = 1
    finally:
        try:
            processor.close()
        except Exception:
            log.exception("%s: close() failed", label)
        for lane in lanes:
            lane.slot.close()
    os._exit(code)
