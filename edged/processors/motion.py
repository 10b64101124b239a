"""The ``motion`` processor: background subtraction with start/end hysteresis.

Each frame arrives grey (``pixel_format = "gray"``: for RTSP, URL and file
sources the decoder's luma plane, with no colour conversion in the reader),
is shrunk to ``scale_width`` pixels wide and blurred, then compared with a
running-average background. Changed pixels are thresholded, dilated so the
pieces of one object merge, and grouped into contours; contours smaller than
``min_area`` are ignored. A run of ``start_frames`` frames with motion starts
an episode (``motion.start``), and ``end_after`` seconds with none ends it
(``motion.end``): one object crossing the view gives one pair of events, not
one event per frame.

Times come from the frames (``Frame.monotonic``), never from the clock, so the
events depend on what the camera saw and not on how fast this worker ran.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edged.processor import Event, Frame, Processor
from edged.regions import Box
from edged.units import Duration

MAX_BOXES = 10
"""At most this many boxes in a ``motion.start`` event, largest first."""
_KERNEL = np.ones((3, 3), np.uint8)


class MotionProcessor(Processor):
    """Reports ``motion.start`` when something moves and ``motion.end`` when it stops.

    ``motion.start`` data: ``area`` (pixels at full resolution, summed over
    the moving blobs of at least ``min_area``), ``boxes`` (``[x, y, w, h]`` at
    full resolution, largest first, at most 10) and ``score`` (fraction of all
    pixels that changed). ``motion.end`` data: ``duration_s`` (first to last
    frame with motion), ``max_area`` and ``frames`` (frames with motion in the
    episode).
    """

    event_types = ("motion.start", "motion.end")
    pixel_format = "gray"

    class Options(BaseModel):
        """The ``[cameras.NAME.processor]`` table of ``type = "motion"``."""

        model_config = ConfigDict(extra="forbid")

        min_area: int = Field(
            500,
            gt=0,
            description="Smallest moving blob that counts, in pixels at full frame resolution.",
        )
        threshold: int = Field(
            25,
            ge=1,
            le=255,
            description="Grey-level difference from the background (1-255) at which a "
            "pixel counts as changed.",
        )
        start_frames: int = Field(
            2,
            ge=1,
            le=1000,
            description="Consecutive frames with motion needed before motion.start; "
            "1 reacts fastest, more ignores brief flickers.",
        )
        end_after: Duration = Field(
            2.0,
            ge=0,
            description="Time with no motion after which motion.end is reported "
            "(e.g. '2s', '500ms').",
        )
        cooldown: Duration = Field(
            0.0,
            ge=0,
            description="Minimum time after a motion.end before the next motion.start.",
        )
        scale_width: int = Field(
            320,
            ge=32,
            le=3840,
            description="Width in pixels the frame is shrunk to before comparison "
            "(aspect kept; never enlarged). Smaller is cheaper and less sensitive to noise.",
        )
        learning_rate: float = Field(
            0.05,
            gt=0,
            le=1,
            description="Weight of each processed frame in the running-average background: "
            "higher absorbs lighting changes and objects that stop sooner.",
        )

    def __init__(self, options: BaseModel | None = None, camera: str = "") -> None:
        if options is None:
            options = self.Options()
        if not isinstance(options, self.Options):
            raise TypeError(f"MotionProcessor needs MotionProcessor.Options, not {type(options)}")
        super().__init__(options, camera)
        self.opts: MotionProcessor.Options = options
        # Geometry of the current frame size; set by _reset_geometry.
        self._full_size: tuple[int, int] | None = None
        self._resize_steps: list[tuple[int, int]] = []
        self._px_area = 1.0
        self._fx = 1.0
        self._fy = 1.0
        self._background: np.ndarray | None = None
        # Run of consecutive frames with motion, before an episode starts.
        self._run = 0
        self._run_start = 0.0
        self._run_area = 0
        # The current episode.
        self._active = False
        self._start = 0.0
        self._last_motion = 0.0
        self._frames = 0
        self._max_area = 0
        self._quiet_until = float("-inf")
        self._boxes: list[Box] = []

    def process(self, frame: Frame) -> Iterable[Event]:
        now = frame.monotonic
        events: list[Event] = []
        # Checked before looking at this frame, so that after a long gap
        # between frames (a stalled camera) the old episode ends and any
        # motion now starts a new one instead of stretching the old.
        if self._active and now - self._last_motion >= self.opts.end_after:
            events.append(self._end(now))

        image = frame.image
        h, w = image.shape[:2]
        if self._full_size != (h, w):
            # A camera that reconnects at another resolution: the old
            # background means nothing, so relearn it from this frame. A
            # running episode is left to end by itself after end_after.
            self._reset_geometry(w, h)
        grey = self._grey(image)
        if self._background is None:
            self._background = grey.astype(np.float32)
            return events
        area, boxes, score = self._detect(grey, self._background)
        cv2.accumulateWeighted(grey, self._background, self.opts.learning_rate)
        # For the live view: [x, y, w, h] in full-resolution pixels -> relative corners.
        self._boxes = [
            Box(x / w, y / h, (x + bw) / w, (y + bh) / h, "motion") for x, y, bw, bh in boxes
        ]

        if area == 0:
            self._run = 0
            return events
        if self._run == 0:
            self._run_start = now
            self._run_area = 0
        self._run += 1
        self._run_area = max(self._run_area, area)
        if self._active:
            self._last_motion = now
            self._frames += 1
            self._max_area = max(self._max_area, area)
        elif self._run >= self.opts.start_frames and now >= self._quiet_until:
            self._active = True
            self._start = self._run_start
            self._last_motion = now
            self._frames = self._run
            self._max_area = self._run_area
            events.append(
                Event("motion.start", {"area": area, "boxes": boxes, "score": round(score, 5)})
            )
        return events

    def boxes(self, camera: str) -> Sequence[Box]:
        """The moving blobs of the newest frame (the live view draws them)."""
        return self._boxes

    def _end(self, now: float) -> Event:
        self._active = False
        self._run = 0
        self._quiet_until = now + self.opts.cooldown
        data: dict[str, Any] = {
            "duration_s": round(self._last_motion - self._start, 3),
            "max_area": self._max_area,
            "frames": self._frames,
        }
        return Event("motion.end", data)

    def _reset_geometry(self, w: int, h: int) -> None:
        self._full_size = (h, w)
        sw = min(w, self.opts.scale_width)
        sh = max(1, round(h * sw / w))
        self._fx = w / sw
        self._fy = h / sh
        self._px_area = self._fx * self._fy
        steps: list[tuple[int, int]] = []
        cw, ch = w, h
        while cw // 2 >= sw and ch // 2 >= 1:
            cw, ch = cw // 2, ch // 2
            steps.append((cw, ch))
        if (cw, ch) != (sw, sh):
            steps.append((sw, sh))
        self._resize_steps = steps
        self._background = None
        self._run = 0

    def _grey(self, image: np.ndarray) -> np.ndarray:
        # INTER_AREA averages, which also smooths sensor noise (INTER_LINEAR
        # at 4:1 samples a quarter of the pixels and aliases). OpenCV has a
        # fast path for exact halving only, so halve first and finish with
        # one small resize: 1280x720 -> 320x180 costs 0.13 ms, not 0.7 ms.
        # None of this writes to the source, which is shared memory.
        small = image
        for size in self._resize_steps:
            small = cv2.resize(small, size, interpolation=cv2.INTER_AREA)
        # Grey from the worker; BGR when someone calls process() directly.
        grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
        return cv2.GaussianBlur(grey, (5, 5), 0)

    def _detect(
        self, grey: np.ndarray, background: np.ndarray
    ) -> tuple[int, list[list[int]], float]:
        """Area of the blobs big enough, their boxes, and the fraction of pixels changed."""
        # A running average (accumulateWeighted) rather than MOG2: it costs a
        # few passes over a 320-pixel-wide image, has one knob whose effect is
        # obvious, and absorbs slow light changes and objects that stop. MOG2
        # copes better with swaying trees but costs several times more per
        # pixel and counts its history in frames, which here vary with load.
        diff = cv2.absdiff(grey, cv2.convertScaleAbs(background))
        _, mask = cv2.threshold(diff, self.opts.threshold - 1, 255, cv2.THRESH_BINARY)
        changed = cv2.countNonZero(mask)
        if changed == 0:
            return 0, [], 0.0
        score = changed / mask.size
        # Dilation joins the pieces of one object (its uniform middle can
        # match the background) into one blob; areas below are of dilated
        # blobs, a little larger than the object.
        mask = cv2.dilate(mask, _KERNEL, iterations=2)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        blobs: list[tuple[float, tuple[int, int, int, int]]] = []
        for contour in contours:
            a = cv2.contourArea(contour) * self._px_area
            if a >= self.opts.min_area:
                x, y, bw, bh = cv2.boundingRect(contour)
                blobs.append((a, (x, y, bw, bh)))
        if not blobs:
            return 0, [], score
        blobs.sort(key=lambda b: b[0], reverse=True)
        full_h, full_w = self._full_size or (0, 0)
        boxes: list[list[int]] = []
        for _, (x, y, bw, bh) in blobs[:MAX_BOXES]:
            x0 = min(full_w, round(x * self._fx))
            y0 = min(full_h, round(y * self._fy))
            x1 = min(full_w, round((x + bw) * self._fx))
            y1 = min(full_h, round((y + bh) * self._fy))
            boxes.append([x0, y0, x1 - x0, y1 - y0])
        return max(1, round(sum(a for a, _ in blobs))), boxes, score
