"""Plain read loops with edged's capture settings, for ``scale.py``.

    python bench/plain_reader.py URL grab|bgr|pyav_gray

It opens ``URL`` with the FFmpeg options and decoder threads edged's reader
uses for it by default (taken from edged: for RTSP, TCP, no stream probing, one
decoder thread) and then, for every frame:

* ``grab``: OpenCV's ``grab()`` only: the decode, as edged's reader pays it for
  a frame nobody will process;
* ``bgr``: ``grab()`` and ``retrieve()`` into one preallocated BGR array: decode
  and conversion, as edged's reader pays it for a frame its processor takes;
* ``pyav_gray``: PyAV decodes, and the frame's Y plane is copied into one
  preallocated array: what edged's grey reader (``pixel_format = "gray"``)
  pays, without edged around it.

No processes, shared memory or processor around it: the difference between
``bgr`` and edged is edged's own cost, the difference between ``grab`` and
``bgr`` OpenCV's conversion.

It reports on stdout in the format of ``ffmpeg -progress``, twice a second
(``frame=``, ``out_time_us=``, ``progress=continue``), so ``scale.py`` reads it
as it reads FFmpeg. ``out_time`` is the stream time reached, from the frames'
timestamps.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np

MODES = ("grab", "bgr", "pyav_gray")


def edged_settings(url: str) -> tuple[dict[str, str], int]:
    """FFmpeg options and decoder threads as edged's reader opens ``url`` with its defaults."""
    from edged.config import camera_from_dict
    from edged.sources import ffmpeg_options

    cam = camera_from_dict("bench", {"source": url})
    return ffmpeg_options(cam), cam.decoder_threads


def opencv_frames(url: str, convert: bool) -> Iterator[float]:
    """Stream time in ms of every frame, after decoding (and converting) it."""
    options, threads = edged_settings(url)
    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "|".join(f"{k};{v}" for k, v in options.items())
    import cv2

    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, threads])
    ok, first = cap.read()
    if not ok:
        raise SystemExit(f"cannot read {url}")
    buf = np.empty_like(first)
    while cap.grab():
        if convert:
            cap.retrieve(buf)
        yield float(cap.get(cv2.CAP_PROP_POS_MSEC))


def pyav_gray_frames(url: str) -> Iterator[float]:
    import av

    options, threads = edged_settings(url)
    container = av.open(url, container_options=options)
    stream = container.streams.video[0]
    stream.thread_count = threads
    buf: np.ndarray | None = None
    for frame in container.decode(stream):
        plane = frame.planes[0]
        # Rows are line_size bytes apart (padded); the image is the first width.
        y = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        if buf is None:
            buf = np.empty((plane.height, plane.width), np.uint8)
        np.copyto(buf, y[:, : plane.width])
        yield float(frame.time or 0.0) * 1000


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in MODES:
        print(__doc__, file=sys.stderr)
        return 2
    url, mode = argv
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    frames: Callable[[], Iterator[float]] = {
        "grab": lambda: opencv_frames(url, False),
        "bgr": lambda: opencv_frames(url, True),
        "pyav_gray": lambda: pyav_gray_frames(url),
    }[mode]
    start_ms: float | None = None
    report_at = time.monotonic()
    for count, pos in enumerate(frames(), 1):
        now = time.monotonic()
        if now >= report_at:
            report_at = now + 0.5
            if start_ms is None:
                start_ms = pos
            sys.stdout.write(
                f"frame={count}\nout_time_us={int((pos - start_ms) * 1000)}\nprogress=continue\n"
            )
            sys.stdout.flush()
    print("the stream ended", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
