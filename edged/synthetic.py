"""The scene behind the built-in ``synthetic`` source, so edged runs with no camera.

A static textured background with one object at a time entering, crossing and
leaving the view, then a quiet gap: with the default ``motion`` options this
gives one ``motion.start``/``motion.end`` pair every :data:`PERIOD_S` seconds.
Everything is a function of ``(seed, index)``, so tests and benchmarks can
replay any frame.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

PERIOD_S = 6.5
"""One object enters per period."""
LEAD_IN_S = 1.0
"""Quiet start, so a detector can learn the background before the first object."""
_MAX_OFFSET_S = 0.4
_MIN_CROSS_S = 2.0
_MAX_CROSS_S = 2.8
# With these, the quiet gap between objects is 3.3 to 4.9 s (more for the
# quicker vertical crossings): longer than the default motion ``end_after``
# (2 s) plus the ghost a running-average background keeps of an object that
# has just left, so every object ends its own episode.

# BGR colours whose luma is far from the background's (55..135): bright ones
# above 175 and one near-black, so each object stands out in grey.
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 230, 255),  # yellow
    (255, 255, 0),  # cyan
    (235, 235, 235),  # white
    (80, 255, 80),  # green
    (200, 160, 255),  # pink
    (15, 15, 15),  # black
)


@dataclasses.dataclass(frozen=True, slots=True)
class Crossing:
    """One object's pass through the view, in scene time (seconds)."""

    enter_s: float
    """First instant any part of it is in view."""
    leave_s: float
    """Last instant any part of it is in view."""
    shape: str
    """``"rect"`` or ``"circle"``."""
    colour: tuple[int, int, int]
    size: int
    """Width of a circle or a square side, in pixels."""
    direction: str
    """``"ltr"``, ``"rtl"``, ``"ttb"`` or ``"btt"``."""
    across: int
    """Centre coordinate across the direction of travel, in pixels."""


class SyntheticScene:
    """Renders frame ``index`` of a deterministic scene at ``width`` x ``height``."""

    def __init__(self, width: int, height: int, fps: float, seed: int = 0) -> None:
        if width < 16 or height < 16:
            raise ValueError(f"synthetic scene needs at least 16x16 pixels, not {width}x{height}")
        if not fps > 0:
            raise ValueError(f"fps must be positive, not {fps}")
        self.width = width
        self.height = height
        self.fps = float(fps)
        self.seed = seed
        self.background = self._make_background()
        self._crossings: dict[int, Crossing] = {}

    def _make_background(self) -> np.ndarray:
        h, w = self.height, self.width
        # Diagonal gradient plus a fixed noise pattern and a few static
        # blocks: textured enough to look like a scene, never flat, and fixed
        # for the life of the scene so it never reads as motion.
        ys = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
        xs = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
        base = 60.0 + 45.0 * ys + 25.0 * xs  # luma 60..130
        tint = np.array([1.05, 1.0, 0.93], dtype=np.float32)  # slightly bluish
        img = base[:, :, None] * tint[None, None, :]
        rng = np.random.default_rng([self.seed, 0x5EED])
        img += rng.normal(0.0, 4.0, size=(h, w, 1)).astype(np.float32)
        out = np.clip(img, 0, 255).astype(np.uint8)
        for _ in range(4):
            bw = int(rng.integers(w // 12, w // 5))
            bh = int(rng.integers(h // 10, h // 4))
            x = int(rng.integers(0, w - bw))
            y = int(rng.integers(h // 2, h - bh))
            shade = int(rng.integers(70, 120))
            cv2.rectangle(out, (x, y), (x + bw, y + bh), (shade, shade, shade - 8), -1)
        return out

    def crossing(self, k: int) -> Crossing:
        """The ``k``-th object (0-based); it enters during period ``k``."""
        found = self._crossings.get(k)
        if found is not None:
            return found
        rng = np.random.default_rng([self.seed, k])
        offset = float(rng.uniform(0.0, _MAX_OFFSET_S))
        cross = float(rng.uniform(_MIN_CROSS_S, _MAX_CROSS_S))
        direction = ("ltr", "rtl", "ttb", "btt")[int(rng.integers(0, 4))]
        size = int(self.height * rng.uniform(0.12, 0.22))
        # Never so small that the default motion min_area (500 px) misses it.
        size = max(size, min(40, self.width // 2, self.height // 2))
        across_extent = self.height if direction in ("ltr", "rtl") else self.width
        across = int(rng.integers(size // 2, max(size // 2 + 1, across_extent - size // 2)))
        if direction in ("ttb", "btt"):
            # Same speed as across the width: a slow object lingers on each
            # pixel, the running-average background half-learns it, and its
            # ghost would stretch the motion episode into the quiet gap.
            cross *= (self.height + size) / (self.width + size)
        found = Crossing(
            enter_s=LEAD_IN_S + k * PERIOD_S + offset,
            leave_s=LEAD_IN_S + k * PERIOD_S + offset + cross,
            shape=("rect", "circle")[int(rng.integers(0, 2))],
            colour=_PALETTE[int(rng.integers(0, len(_PALETTE)))],
            size=size,
            direction=direction,
            across=across,
        )
        if len(self._crossings) > 64:
            self._crossings.clear()
        self._crossings[k] = found
        return found

    def crossings(self, until_s: float) -> list[Crossing]:
        """The objects that enter the view before ``until_s`` seconds."""
        out: list[Crossing] = []
        k = 0
        while True:
            c = self.crossing(k)
            if c.enter_s >= until_s:
                return out
            out.append(c)
            k += 1

    def render(self, index: int, out: np.ndarray | None = None) -> np.ndarray:
        """Frame number ``index`` (time ``index / fps``) as HxWx3 BGR uint8.

        With ``out`` (a C-contiguous HxWx3 uint8 array) the frame is drawn into
        it in place and ``out`` is returned; otherwise a new array is.
        """
        shape = (self.height, self.width, 3)
        if out is None:
            out = np.empty(shape, dtype=np.uint8)
        elif out.shape != shape or out.dtype != np.uint8:
            raise ValueError(f"out must be a {shape} uint8 array, not {out.shape} {out.dtype}")
        np.copyto(out, self.background)
        t = index / self.fps
        k = math.floor((t - LEAD_IN_S) / PERIOD_S)
        # The object of period k may still be crossing early in period k + 1.
        for j in (k - 1, k):
            if j >= 0:
                self._draw(out, self.crossing(j), t)
        return out

    def _draw(self, out: np.ndarray, c: Crossing, t: float) -> None:
        if not c.enter_s <= t <= c.leave_s:
            return
        frac = (t - c.enter_s) / (c.leave_s - c.enter_s)
        half = c.size / 2
        extent = self.width if c.direction in ("ltr", "rtl") else self.height
        # The centre runs from just outside one edge to just outside the other.
        along = -half + frac * (extent + c.size)
        if c.direction in ("rtl", "btt"):
            along = extent - along
        if c.direction in ("ltr", "rtl"):
            cx, cy = round(along), c.across
        else:
            cx, cy = c.across, round(along)
        if c.shape == "circle":
            cv2.circle(out, (cx, cy), round(half), c.colour, -1, cv2.LINE_8)
        else:
            h = round(half)
            cv2.rectangle(out, (cx - h, cy - h), (cx + h, cy + h), c.colour, -1)
