"""Video sources: RTSP and other FFmpeg URLs, files, V4L2 devices, synthetic, plugins.

A source is opened, grabbed and retrieved inside a reader process. The split
between :meth:`Source.grab` (read and decode) and :meth:`Source.retrieve`
(convert into a caller's buffer) lets the reader stamp the capture time the
moment a frame exists and decode straight into shared memory.

To read from something else (a vendor SDK, a GStreamer pipeline), subclass
:class:`Source`, implement :meth:`Source.read`, and name the class as the
camera's ``source`` (``"mypackage.cams:VendorSource"``); the camera's
``[cameras.NAME.source_options]`` table is passed to it.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from edged.errors import PluginError, SourceError

if TYPE_CHECKING:
    from edged.config import CameraConfig

log = logging.getLogger(__name__)


class Source:
    """Base class for video sources: implement :meth:`read` (and optionally ``open``/``close``).

    ``live`` tells whether frames keep coming whether or not anyone reads them
    (a camera) or wait for the reader (a file).
    """

    live: bool = True

    def __init__(self, options: dict[str, Any] | None = None, camera: str = "") -> None:
        self.options = dict(options or {})
        self.camera = camera
        self._pending: np.ndarray | None = None

    def open(self) -> None:
        """Connect to the source; raise :class:`~edged.errors.SourceError` if it fails."""

    def read(self) -> np.ndarray | None:
        """Return the next frame as an HxWx3 BGR uint8 array, or None at the end of the stream.

        Block until a frame exists; raise :class:`~edged.errors.SourceError`
        when the source is lost (the reader reconnects).
        """
        raise NotImplementedError

    def grab(self) -> bool:
        """Read the next frame; False at the end of the stream."""
        self._pending = self.read()
        return self._pending is not None

    def retrieve(self, out: np.ndarray | None = None) -> np.ndarray:
        """The frame from the last :meth:`grab`, written into ``out`` when its shape fits."""
        frame = self._pending
        if frame is None:
            raise SourceError("retrieve() without a grabbed frame")
        if out is not None and out.shape == frame.shape and out.dtype == frame.dtype:
            np.copyto(out, frame)
            return out
        return frame

    def close(self) -> None:
        """Release the source; called once, also after a failed open."""

    @property
    def nominal_fps(self) -> float | None:
        """The frame rate the source announces, if any."""
        return None


class OpenCVSource(Source):
    """``cv2.VideoCapture``: RTSP and other FFmpeg URLs, files and V4L2 devices."""

    def __init__(self, cam: CameraConfig) -> None:
        super().__init__(camera=cam.name)
        self.cam = cam
        self.kind = cam.source_kind
        self.live = self.kind != "file"
        self._cap: Any = None
        self._fps: float | None = None
        self._next_due = 0.0

    def _ffmpeg_options(self) -> str:
        opts: dict[str, str] = {}
        if self.kind == "rtsp":
            opts["rtsp_transport"] = self.cam.transport
            # The SDP already describes an RTSP stream: without probing, the
            # first frame arrives ~0.35 s after open and ~70 ms old, instead
            # of ~1.4 s and ~1.1 s old (measured on the test server). A camera
            # whose SDP lacks its parameters needs the defaults back:
            # ffmpeg_options = { probesize = "5000000", analyzeduration = "5000000" }
            opts["probesize"] = "32"
            opts["analyzeduration"] = "0"
        opts.update(self.cam.ffmpeg_options)
        return "|".join(f"{k};{v}" for k, v in opts.items())

    def open(self) -> None:
        import cv2

        cam = self.cam
        params: list[int] = []
        if self.kind in ("rtsp", "url", "file"):
            # Process-wide, read at every open: fine, a reader owns its process.
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = self._ffmpeg_options()
            if self.kind != "file":
                params += [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(cam.open_timeout * 1000)]
                params += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(cam.read_timeout * 1000)]
            if cam.decoder_threads:
                params += [cv2.CAP_PROP_N_THREADS, cam.decoder_threads]
            target: str | int = cam.source_url(with_credentials=True)
            if self.kind == "file":
                target = cam.source
            cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
        else:  # v4l2
            dev = cam.source
            target = int(dev) if dev.isdigit() else dev
            cap = cv2.VideoCapture(target, cv2.CAP_V4L2)
            if cap.isOpened():
                if cam.width and cam.height:
                    cap.set(cv2.CAP_PROP_FRAME_WIDTH, cam.width)
                    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cam.height)
                if cam.fps:
                    cap.set(cv2.CAP_PROP_FPS, cam.fps)
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # V4L2 honours it; newest frame first
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {cam.display_source}")
        self._cap = cap
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._fps = cam.fps or (fps if 0 < fps <= 240 else None)
        self._next_due = time.monotonic()

    def grab(self) -> bool:
        if self._cap is None:
            raise SourceError("source is not open")
        if self.kind == "file" and self.cam.realtime and self._fps:
            # Pace a file like a camera: one frame per interval, no catching up
            # in bursts after a stall.
            now = time.monotonic()
            if self._next_due > now:
                time.sleep(self._next_due - now)
            self._next_due = max(self._next_due + 1.0 / self._fps, time.monotonic() - 0.5)
        started = time.monotonic()
        if self._cap.grab():
            return True
        if self.kind == "file":
            if self.cam.loop and self._rewind():
                return bool(self._cap.grab())
            return False
        if time.monotonic() - started < self.cam.read_timeout * 0.9:
            raise SourceError(f"lost {self.cam.display_source}: the stream ended")
        raise SourceError(f"lost {self.cam.display_source}: no frame within read timeout")

    def _rewind(self) -> bool:
        import cv2

        return bool(self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0))

    def retrieve(self, out: np.ndarray | None = None) -> np.ndarray:
        ok, frame = self._cap.retrieve(out) if out is not None else self._cap.retrieve()
        if not ok or frame is None:
            raise SourceError(f"cannot decode a frame from {self.cam.display_source}")
        return frame  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    @property
    def nominal_fps(self) -> float | None:
        return self._fps


class SyntheticSource(Source):
    """Moving objects on a textured background, in real time: edged with no camera."""

    def __init__(self, cam: CameraConfig) -> None:
        super().__init__(camera=cam.name)
        self.width = cam.width or 640
        self.height = cam.height or 360
        self.fps = cam.fps or 15.0
        self._start = 0.0
        self._index = -1

    def open(self) -> None:
        from edged.synthetic import SyntheticScene

        self._scene = SyntheticScene(self.width, self.height, self.fps)
        self._start = time.monotonic()
        self._index = -1

    def grab(self) -> bool:
        # Like a camera, the scene runs on the clock: a late reader sees the
        # frame that is due now, not every frame it missed.
        index = self._index + 1
        due = self._start + index / self.fps
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        else:
            index = max(index, int((now - self._start) * self.fps))
        self._index = index
        return True

    def retrieve(self, out: np.ndarray | None = None) -> np.ndarray:
        if out is not None and out.shape != (self.height, self.width, 3):
            out = None
        return self._scene.render(self._index, out)

    @property
    def nominal_fps(self) -> float | None:
        return self.fps


def open_source(cam: CameraConfig) -> Source:
    """Build (not yet open) the source a camera's config names."""
    kind = cam.source_kind
    if kind == "synthetic":
        return SyntheticSource(cam)
    if kind == "plugin":
        from edged.processor import _import_class

        cls = _import_class(cam.source)
        if not issubclass(cls, Source):
            raise PluginError(f"{cam.source!r} is not a subclass of edged.Source")
        try:
            src: Source = cls(options=cam.source_options, camera=cam.name)
        except Exception as exc:
            raise PluginError(f"{cam.source}: cannot create the source: {exc}") from exc
        return src
    return OpenCVSource(cam)
