"""The pictures of the web page: each camera's newest frame as a JPEG, on request.

A frame is copied out of the camera's slot (``SlotOwner.copy_latest``) and
encoded only when a browser asks, and at most ``[web] max_fps`` times a second
per camera and width: requests in between get the last JPEG. Nobody looking
costs nothing. Encoding runs in the HTTP server's threads, never the
supervisor's, and at most ``ENCODERS`` at once: a page open on many phones
queues for a CPU rather than taking every core from the readers.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

ENCODERS = 2  # JPEG encodes at once, over every camera and client
WAIT = 2.0  # seconds a request waits for an encoder before it is told to come back
MIN_WIDTH, MAX_WIDTH = 16, 4096
_CACHED = 64  # (camera, width) pairs kept

FrameSource = Callable[[str], "tuple[np.ndarray, int, float] | None"]
"""``camera -> (image, seq, wall-clock time)`` of its newest frame, a copy; None if none."""


@dataclasses.dataclass(frozen=True)
class Picture:
    jpeg: bytes
    seq: int  # the frame's sequence number
    taken: float  # wall-clock time the frame was grabbed
    made: float  # time.monotonic() when it was encoded
    encode_s: float  # seconds the copy, scaling and encoding took


class Busy(Exception):
    """Every encoder was busy for ``WAIT`` seconds."""


class Pictures:
    """Encodes and caches the cameras' pictures; see the module docstring."""

    def __init__(self, frames: FrameSource, max_fps: float, quality: int) -> None:
        self.frames = frames
        self.interval = 1.0 / max_fps
        self.quality = quality
        self._encoders = threading.BoundedSemaphore(ENCODERS)
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, int], Picture] = OrderedDict()
        self._key_locks: dict[tuple[str, int], threading.Lock] = {}

    def get(self, camera: str, width: int = 0) -> Picture | None:
        """The camera's newest picture, ``width`` pixels wide (0: as the frame; never
        wider than the frame), or None when it has no frame. Raises :class:`Busy`."""
        # In steps of 16 pixels: at most 256 widths a camera to cache and lock for,
        # whatever numbers clients send.
        width = 0 if width <= 0 else min(max(width, MIN_WIDTH), MAX_WIDTH) // 16 * 16
        key = (camera, width)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        # One encode per key at a time: the others wait for it and share it.
        with key_lock:
            with self._lock:
                cached = self._cache.get(key)
            if cached is not None and time.monotonic() - cached.made < self.interval:
                return cached
            if not self._encoders.acquire(timeout=WAIT):
                raise Busy
            try:
                picture = self._make(camera, width)
            finally:
                self._encoders.release()
            if picture is not None:
                with self._lock:
                    self._cache[key] = picture
                    self._cache.move_to_end(key)
                    while len(self._cache) > _CACHED:
                        old, _ = self._cache.popitem(last=False)
                        self._key_locks.pop(old, None)
            return picture

    def forget(self, camera: str) -> None:
        """Drop a camera's pictures (it left the configuration, or stopped)."""
        with self._lock:
            for key in [k for k in self._cache if k[0] == camera]:
                del self._cache[key]

    def _make(self, camera: str, width: int) -> Picture | None:
        import cv2  # loaded on the first picture: a daemon nobody looks at never needs it

        start = time.monotonic()
        got = self.frames(camera)
        if got is None:
            return None
        image, seq, taken = got
        h, w = image.shape[:2]
        if width and width < w:
            height = max(1, round(h * width / w))
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            return None
        now = time.monotonic()
        return Picture(bytes(buf), seq, taken, now, now - start)
