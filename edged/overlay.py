"""What a processor sees in its newest frame, for the live view: its boxes.

After each processed frame the worker asks the processor for
:meth:`edged.Processor.boxes` of that camera; :class:`BoxesReport` keeps what
changed and the worker sends it with its next message to the supervisor (at
most ``BATCH_INTERVAL`` later: boxes never make a message of their own). They
are not events: never written to the event file nor sent to MQTT. The
supervisor keeps the newest per camera in :class:`Overlays`, which the web page
reads.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edged.processor import Processor

log = logging.getLogger(__name__)

MAX_BOXES = 100  # a processor that reports more shows its first 100


class BoxesReport:
    """One camera's boxes on the worker's side: what to send, when it changed."""

    def __init__(self, camera: str) -> None:
        self.camera = camera
        self._last: list[dict[str, Any]] = []
        self._pending: dict[str, Any] | None = None
        self._failed = False

    def observe(self, processor: Processor, seq: int) -> None:
        """After the processor saw frame ``seq`` of this camera."""
        try:
            boxes = [box.as_dict() for box in list(processor.boxes(self.camera))[:MAX_BOXES]]
        except Exception as exc:
            if not self._failed:  # once: a live view is not worth a log line a frame
                log.warning("camera %s: the processor's boxes() failed: %r", self.camera, exc)
            self._failed = True
            boxes = []
        if boxes != self._last:
            self._last = boxes
            self._pending = {"seq": seq, "boxes": boxes}

    def take(self) -> dict[str, Any] | None:
        """What changed since the last message (for its ``boxes`` key), if anything."""
        pending, self._pending = self._pending, None
        return pending


@dataclasses.dataclass(frozen=True)
class Overlay:
    """A camera's newest boxes, as the web page draws them."""

    seq: int  # the frame they were seen in
    received: float  # time.time() when they reached the supervisor
    boxes: list[dict[str, Any]]  # Box.as_dict() each: relative corners, label, score


class Overlays:
    """The newest boxes of every camera (the supervisor writes, the web server reads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_camera: dict[str, Overlay] = {}

    def update(self, camera: str, report: object) -> None:
        """A worker's ``boxes`` report; anything malformed is dropped."""
        if not isinstance(report, dict) or not isinstance(report.get("boxes"), list):
            return
        overlay = Overlay(int(report.get("seq", 0)), time.time(), report["boxes"][:MAX_BOXES])
        with self._lock:
            self._by_camera[camera] = overlay

    def get(self, camera: str) -> Overlay | None:
        with self._lock:
            return self._by_camera.get(camera)
