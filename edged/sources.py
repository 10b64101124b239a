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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from edged.errors import PluginError, SourceError

if TYPE_CHECKING:
    from edged.config import CameraConfig

log = logging.getLogger(__name__)


def _to_gray(frame: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """``frame`` (BGR, or grey already) as grey, written into ``out`` when its shape fits."""
    import cv2

    fits = out is not None and out.shape == frame.shape[:2] and out.dtype == frame.dtype
    if frame.ndim == 2:
        if fits:
            np.copyto(out, frame)  # type: ignore[arg-type]
            return out  # type: ignore[return-value]
        return frame.copy()
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY, dst=out if fits else None)


def _opencv_log_level() -> tuple[Callable[[], int], Callable[[int], Any], int]:
    """OpenCV's log level getter, setter and ERROR level (``cv2.utils.logging`` from 5.0)."""
    import cv2

    api = getattr(cv2.utils, "logging", None)
    if api is not None:
        return api.getLogLevel, api.setLogLevel, api.LOG_LEVEL_ERROR
    # 4.x: cv2.getLogLevel / cv2.setLogLevel, and cv::utils::logging::LOG_LEVEL_ERROR
    return getattr(cv2, "getLogLevel"), getattr(cv2, "setLogLevel"), 2  # noqa: B009


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

    def retrieve_gray(self, out: np.ndarray | None = None) -> np.ndarray:
        """Like :meth:`retrieve`, as an HxW grey image (for a ``"gray"`` processor).

        This converts the BGR frame; a source that has grey for free overrides it.
        """
        return _to_gray(self.retrieve(None), out)

    def close(self) -> None:
        """Release the source; called once, also after a failed open."""

    @property
    def nominal_fps(self) -> float | None:
        """The frame rate the source announces, if any."""
        return None


# FFmpeg pixel formats (as OpenCV's CAP_PROP_CODEC_PIXEL_FORMAT names them) whose first
# plane is the 8-bit luma: the 4:2:0, 4:2:2 and 4:4:4 planar and semi-planar YUVs, grey.
_LUMA_FIRST = frozenset(
    {
        "I420",
        "IYUV",
        "YV12",
        "J420",
        "NV12",
        "NV21",
        "Y42B",
        "422P",
        "444P",
        "Y444",
        "Y800",
        "GREY",
        "Y8  ",
    }
)


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
        self._luma: bool | None = None  # retrieve_gray: None until the first frame tells
        self._colour: np.ndarray | None = None  # its BGR frame when converting, reused

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
        self._luma = None
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

    def retrieve_gray(self, out: np.ndarray | None = None) -> np.ndarray:
        if self._luma is None:
            return self._start_luma(out)
        if not self._luma:
            self._colour = self.retrieve(self._colour)
            return _to_gray(self._colour, out)
        return self._retrieve_luma(out)

    def _retrieve_luma(self, out: np.ndarray | None) -> np.ndarray:
        # OpenCV calls the raw-plane path unsupported and warns on every frame.
        get_level, set_level, error = _opencv_log_level()
        level = get_level()
        set_level(error)
        try:
            return self.retrieve(out)
        finally:
            set_level(level)

    def _start_luma(self, out: np.ndarray | None) -> np.ndarray:
        """The first grey frame: from the decoder's luma plane if this stream has one.

        With ``CAP_PROP_CONVERT_RGB`` off, OpenCV's FFmpeg backend passes the
        decoded picture through sws_scale unchanged (a plain copy, no colour
        conversion) and returns its first plane as HxW uint8: for planar YUV
        that is the luma, byte for byte. OpenCV does not promise this for
        multi-planar formats, so only formats whose first plane is the 8-bit
        luma are tried, and the first frame's shape is checked. The choice is
        made before any BGR frame is retrieved and never changed on an open
        capture: OpenCV keeps the first conversion context it made, and
        switching afterwards returns garbage (BGR -> raw) or raises (raw -> BGR).
        """
        import cv2

        code = int(self._cap.get(cv2.CAP_PROP_CODEC_PIXEL_FORMAT) or 0)
        fourcc = code.to_bytes(4, "little").decode("latin-1")
        self._luma = False
        if self.kind == "v4l2" or fourcc not in _LUMA_FIRST:
            log.info("camera %s: pixel format %r: grey by conversion", self.camera, fourcc)
            return self.retrieve_gray(out)
        self._cap.set(cv2.CAP_PROP_CONVERT_RGB, 0)
        frame = self._retrieve_luma(out)
        width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if frame.dtype == np.uint8 and frame.shape == (height, width):
            log.info("camera %s: grey straight from the decoder (%s luma)", self.camera, fourcc)
            self._luma = True
            return frame
        log.warning(
            "camera %s: OpenCV gave a %s %s array for the %s luma plane, not %dx%d: "
            "converting to grey instead (reopening the source)",
            self.camera,
            frame.dtype,
            frame.shape,
            fourcc,
            width,
            height,
        )
        self.close()
        self.open()
        self._luma = False
        if not self.grab():
            raise SourceError(f"lost {self.cam.display_source}: no frame after reopening")
        return self.retrieve_gray(out)

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
