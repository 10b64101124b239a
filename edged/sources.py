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
import stat
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from edged.errors import PluginError, SourceError
from edged.nativelog import AUTH_FAILED, FORBIDDEN, NOT_FOUND, classify
from edged.redact import scrub
from edged.source import Source, _into, resolve_source

if TYPE_CHECKING:
    from edged.config import CameraConfig

log = logging.getLogger(__name__)


def ffmpeg_options(cam: CameraConfig) -> dict[str, str]:
    """The FFmpeg demuxer options a camera's reader opens its source with."""
    opts: dict[str, str] = {}
    if cam.source_kind == "rtsp":
        opts["rtsp_transport"] = cam.transport
        # The SDP already describes an RTSP stream: without probing, the
        # first frame arrives ~0.35 s after open and ~70 ms old, instead
        # of ~1.4 s and ~1.1 s old (measured on the test server). A camera
        # whose SDP lacks its parameters needs the defaults back:
        # ffmpeg_options = { probesize = "5000000", analyzeduration = "5000000" }
        opts["probesize"] = "32"
        opts["analyzeduration"] = "0"
    opts.update(cam.ffmpeg_options)
    return opts


class _Pacer:
    """Paces a file like a camera: one frame per interval, no catching up in bursts
    after a stall."""

    def __init__(self) -> None:
        self.next_due = time.monotonic()

    def wait(self, fps: float) -> None:
        now = time.monotonic()
        if self.next_due > now:
            time.sleep(self.next_due - now)
        self.next_due = max(self.next_due + 1.0 / fps, time.monotonic() - 0.5)


_V4L2_MAJOR = 81  # Linux's device number for video4linux (Documentation/admin-guide/devices.txt)


class OpenCVSource(Source):
    """``cv2.VideoCapture``: RTSP and other FFmpeg URLs, files and V4L2 devices."""

    def __init__(self, cam: CameraConfig) -> None:
        super().__init__(camera=cam.name)
        self.cam = cam
        self.kind = cam.source_kind
        self.live = self.kind != "file"
        self._cap: Any = None
        self._fps: float | None = None
        self._pacer = _Pacer()

    def _ffmpeg_options(self) -> str:
        return "|".join(f"{k};{v}" for k, v in ffmpeg_options(self.cam).items())

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
            started = time.monotonic()
            cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
        else:  # v4l2
            dev = cam.source
            target = int(dev) if dev.isdigit() else dev
            if isinstance(target, str):
                # Said plainly rather than OpenCV's bare failure: unplugged, or not a camera.
                try:
                    st = os.stat(dev)
                except FileNotFoundError:
                    raise SourceError(f"cannot open {dev}: no such device (unplugged?)") from None
                if not stat.S_ISCHR(st.st_mode) or os.major(st.st_rdev) != _V4L2_MAJOR:
                    raise SourceError(f"cannot open {dev}: not a video device")
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
            if self.kind == "url":
                self._diagnose(started)
            raise SourceError(f"cannot open {cam.display_source}")
        self._cap = cap
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._fps = cam.fps or (fps if 0 < fps <= 240 else None)
        self._pacer = _Pacer()

    def _diagnose(self, started: float) -> None:
        """Raise PyAV's account of why a URL did not open, when there is time left.

        OpenCV keeps FFmpeg's error code to itself, and FFmpeg says an HTTP
        error (401, 403, 404) only at warning level, which OpenCV does not
        print: without this, a wrong password on an HTTP camera is a bare
        "cannot open". Within the open timeout, so a reader is never taken for hung.
        """
        left = self.cam.open_timeout - (time.monotonic() - started)
        if left < 1.0:
            return  # it timed out: the reader says so from FFmpeg's lines
        probe = PyAVSource(self.cam.model_copy(update={"open_timeout": left}))
        try:
            probe.open()
        except SourceError as exc:
            if exc.cause is not None:
                raise
        finally:
            probe.close()

    def grab(self) -> bool:
        if self._cap is None:
            raise SourceError("source is not open")
        if self.kind == "file" and self.cam.realtime and self._fps:
            self._pacer.wait(self._fps)
        started = time.monotonic()
        if self._cap.grab():
            return True
        if self.kind == "file":
            if not self.cam.loop:
                return False
            if self._rewind() and self._cap.grab():
                return True
            # MPEG-TS, raw H.264, MJPEG: the seek "succeeds" and no frame
            # follows. Start the file again from scratch.
            self.close()
            self.open()
            return bool(self._cap.grab())
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


# 8-bit pixel formats whose first plane is the luma, one byte per pixel.
_LUMA_FIRST = frozenset(
    [
        "gray",
        "yuv420p",
        "yuvj420p",
        "yuv422p",
        "yuvj422p",
        "yuv444p",
        "yuvj444p",
        "yuv440p",
        "yuvj440p",
        "yuv411p",
        "yuv410p",
        "yuva420p",
        "nv12",
        "nv21",
        "nv16",
        "nv24",
    ]
)
_BAD_PACKETS_IN_A_ROW = 250  # ten seconds of 25 fps that decode to nothing: the stream is junk
_log_routed = False


def _route_ffmpeg_log() -> None:
    """Let FFmpeg print its errors to fd 2 itself, as OpenCV's FFmpeg does.

    PyAV silences FFmpeg by default, or hands each message to Python's logging
    through a callback that takes the GIL from FFmpeg's threads (PyAV issues
    751 and 2276: deadlocks, lock contention). FFmpeg's own callback just writes
    to fd 2, which in a reader is the native-message pipe (:mod:`edged.nativelog`):
    the lines are scrubbed of passwords, kept for the reader's status note and
    the cause of a failure, and logged at debug level only. Errors, not
    warnings: with probing off FFmpeg warns on every RTSP open ("not enough
    frames to estimate rate"), which would read as a cause in a hung reader's note.
    """
    global _log_routed
    if not _log_routed:
        import av.logging

        av.logging.set_libav_level(av.logging.ERROR)  # FFmpeg's own threshold
        av.logging.restore_default_callback()
        _log_routed = True


class PyAVSource(Source):
    """FFmpeg through PyAV: RTSP, URL and file sources, grey or BGR.

    Grey frames are the decoder's luma plane, unconverted. OpenCV's FFmpeg
    backend only hands out BGR (its unconverted output is not the plane as it
    is in OpenCV 5), and the BGR conversion is the largest cost of a reader
    after decoding. PyAV gives the decoded picture's planes: for the usual
    8-bit YUV formats the first one is the Y (luma) plane, which is copied into
    the slot; other formats (10-bit, RGB) are converted to grey.

    BGR frames come from here too, not from OpenCV: OpenCV sizes its
    conversion from the stream's header, so a camera that changes resolution
    mid-stream (640x360 to 1280x720) went on arriving at the first size,
    scaled, with nothing saying so. Each PyAV picture carries its own size.
    The options, timeouts and file pacing are those of :class:`OpenCVSource`.
    """

    def __init__(self, cam: CameraConfig) -> None:
        super().__init__(camera=cam.name)
        self.cam = cam
        self.kind = cam.source_kind
        self.live = self.kind != "file"
        self._container: Any = None
        self._stream: Any = None
        self._frames: Iterator[Any] | None = None
        self._frame: Any = None
        self._fps: float | None = None
        self._pacer = _Pacer()
        self._reformatter: Any = None

    def open(self) -> None:
        import av
        from av.video.reformatter import VideoReformatter

        self._reformatter = VideoReformatter()

        _route_ffmpeg_log()
        cam = self.cam
        if self.kind == "file":
            target, timeout, limit = cam.source, None, 0.0
        else:
            target = cam.source_url(with_credentials=True)
            timeout, limit = (cam.open_timeout, cam.read_timeout), cam.open_timeout
        started = time.monotonic()
        try:
            container = av.open(target, container_options=ffmpeg_options(cam), timeout=timeout)
        except (av.FFmpegError, OSError) as exc:
            raise self._error("cannot open", exc, started, limit) from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"cannot open {cam.display_source}: it has no video stream")
        stream = container.streams.video[0]
        if cam.decoder_threads:
            stream.thread_count = cam.decoder_threads
        else:
            stream.thread_type = "AUTO"  # FFmpeg chooses, frame threads included
        self._container, self._stream = container, stream
        self._frames = self._decode()
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        self._fps = cam.fps or (fps if 0 < fps <= 240 else None)
        self._pacer = _Pacer()

    def _decode(self) -> Iterator[Any]:
        import av

        bad = 0
        for packet in self._container.demux(self._stream):
            try:
                frames = packet.decode()
            except av.InvalidDataError:
                # A damaged packet costs its frame, not the connection (as in
                # OpenCV); a stream of nothing but damage is an error.
                bad += 1
                if bad >= _BAD_PACKETS_IN_A_ROW:
                    raise SourceError(
                        f"lost {self.cam.display_source}: {bad} packets in a row did not decode",
                        "unreadable stream",
                    ) from None
                continue
            bad = 0
            yield from frames

    def grab(self) -> bool:
        import av

        if self._frames is None:
            raise SourceError("source is not open")
        if self.kind == "file" and self.cam.realtime and self._fps:
            self._pacer.wait(self._fps)
        # At the end of a file: seek back to the start, and where that gives
        # nothing (a raw H.264 stream cannot seek) open the file again.
        for attempt in range(3):
            started = time.monotonic()
            try:
                self._frame = next(self._frames)
                return True
            except StopIteration:
                pass
            except (av.FFmpegError, OSError) as exc:
                raise self._error("lost", exc, started, self.cam.read_timeout) from None
            if self.kind != "file":
                raise SourceError(f"lost {self.cam.display_source}: the stream ended")
            if not self.cam.loop or attempt == 2:
                return False
            if attempt == 1 or not self._rewind():
                self.close()
                self.open()
        return False

    def _rewind(self) -> bool:
        import av

        try:
            self._container.seek(0)
        except (av.FFmpegError, OSError) as exc:
            log.debug("camera %s: cannot seek back in %s: %s", self.camera, self.cam.source, exc)
            return False
        self._frames = self._decode()
        return True

    def _error(self, action: str, exc: Exception, started: float, limit: float) -> SourceError:
        """A :class:`SourceError` naming the cause; FFmpeg's text without the URL."""
        import av

        elapsed = time.monotonic() - started
        # strerror is FFmpeg's message alone; str(exc) appends the URL, password included.
        text = scrub(getattr(exc, "strerror", None) or type(exc).__name__)
        cause: str | None
        if isinstance(exc, av.HTTPUnauthorizedError):
            cause = AUTH_FAILED
        elif isinstance(exc, av.HTTPForbiddenError):
            cause = FORBIDDEN
        elif isinstance(exc, (av.HTTPNotFoundError, FileNotFoundError)):
            cause = "no such file" if self.kind == "file" else NOT_FOUND
        elif isinstance(exc, av.ExitError) or (limit and elapsed >= 0.9 * limit):
            # PyAV's timeout interrupts FFmpeg, which then reports "Immediate exit".
            cause, text = "timed out", f"nothing within {limit if limit else elapsed:.1f}s"
        else:
            cause = classify([text], file=self.kind == "file")
        return SourceError(f"{action} {self.cam.display_source}: {text}", cause)

    def _grabbed(self) -> Any:
        if self._frame is None:
            raise SourceError("retrieve() without a grabbed frame")
        return self._frame

    def retrieve_gray(self, out: np.ndarray | None = None) -> np.ndarray:
        frame = self._grabbed()
        if frame.format.name not in _LUMA_FIRST:
            frame = frame.reformat(format="gray")
        plane = frame.planes[0]
        # Rows are line_size bytes apart (padded for SIMD); the image is the first width.
        rows = np.frombuffer(plane, np.uint8)[: plane.height * plane.line_size]
        # Without a buffer that fits, the view itself: it keeps the frame alive.
        return _into(out, rows.reshape(plane.height, plane.line_size)[:, : plane.width])

    def retrieve(self, out: np.ndarray | None = None) -> np.ndarray:
        # One reformatter for the stream keeps its conversion context; it follows
        # a change of size because it reads each picture's own (OpenCV's does not).
        bgr = self._reformatter.reformat(self._grabbed(), format="bgr24")
        plane = bgr.planes[0]
        rows = np.frombuffer(plane, np.uint8)[: plane.height * plane.line_size]
        image = rows.reshape(plane.height, plane.line_size)[:, : plane.width * 3]
        return _into(out, image.reshape(plane.height, plane.width, 3))

    def close(self) -> None:
        self._frames = self._frame = None
        if self._container is not None:
            self._container.close()
            self._container = None

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
    """Build (not yet open) the source a camera's config names.

    FFmpeg sources (RTSP, URL, file) are read by :class:`PyAVSource`, grey or
    BGR; V4L2 devices by :class:`OpenCVSource`; every source other than PyAV's
    delivers BGR, converted to grey (:meth:`Source.retrieve_gray`) if asked.
    """
    kind = cam.source_kind
    if kind in ("rtsp", "url", "file"):
        return PyAVSource(cam)
    if kind == "synthetic":
        return SyntheticSource(cam)
    if kind == "plugin":
        cls = resolve_source(cam.source)
        try:
            src: Source = cls(options=cam.source_options, camera=cam.name)
        except Exception as exc:
            raise PluginError(f"{cam.source}: cannot create the source: {exc}") from exc
        return src
    return OpenCVSource(cam)
