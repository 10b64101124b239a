"""A plain OpenCV read loop with edged's capture settings, for ``scale.py``.

    python bench/plain_reader.py URL grab|bgr

It opens ``URL`` the way edged's reader does (TCP, no stream probing, one
decoder thread) and then, for every frame, only ``grab()``s it (``grab``: the
decode, as edged's reader pays it for a frame nobody will process) or also
``retrieve()``s it into one preallocated BGR array (``bgr``: decode and
conversion, as edged's reader pays it for a frame its processor takes). No
processes, shared memory or processor around it: the difference between
``bgr`` and edged is edged's own cost, the difference between ``grab`` and
``bgr`` OpenCV's conversion.

It reports on stdout in the format of ``ffmpeg -progress``, twice a second
(``frame=``, ``out_time_us=``, ``progress=continue``), so ``scale.py`` reads it
as it reads FFmpeg. ``out_time`` is the stream time reached, from the frames'
timestamps (``CAP_PROP_POS_MSEC``).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in ("grab", "bgr"):
        print(__doc__, file=sys.stderr)
        return 2
    url, mode = argv
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # As edged's OpenCVSource sets them for an RTSP camera with its defaults.
    options = "rtsp_transport;tcp|probesize;32|analyzeduration;0"
    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = options
    import cv2

    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    ok, first = cap.read()
    if not ok:
        print(f"cannot read {url}", file=sys.stderr)
        return 1
    buf = np.empty_like(first)
    frames = 1
    start_ms: float | None = None
    report_at = time.monotonic()
    convert = mode == "bgr"
    while cap.grab():
        if convert:
            cap.retrieve(buf)
        frames += 1
        now = time.monotonic()
        if now >= report_at:
            report_at = now + 0.5
            pos = float(cap.get(cv2.CAP_PROP_POS_MSEC))
            if start_ms is None:
                start_ms = pos
            sys.stdout.write(
                f"frame={frames}\nout_time_us={int((pos - start_ms) * 1000)}\nprogress=continue\n"
            )
            sys.stdout.flush()
    print("the stream ended", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
