"""A processor for ``bench/freshness.py --work busy``: burns CPU (holding the GIL).

``tests/plugins.py``'s ``SlowProcessor`` sleeps, which releases the GIL: the best
case for a reader thread in the same process. This one keeps a core busy in
Python for ``delay`` seconds instead, like a real pure-Python algorithm. The
daemon loads it with ``bench/`` and ``tests/`` on PYTHONPATH.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from plugins import SlowOptions

from edged import Event, Frame, Processor


def busy(seconds: float) -> None:
    """Spin in Python (holding the GIL between switch intervals) for ``seconds``."""
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        for i in range(200):
            x += i * i


class BusyProcessor(Processor):
    """Like ``SlowProcessor``, but the ``delay`` is spent computing, not sleeping."""

    Options = SlowOptions

    def process(self, frame: Frame) -> Iterator[Event]:
        data: dict[str, object] = {"shape": list(frame.image.shape)}
        if self.options.timestamps:  # type: ignore[attr-defined]
            from components.rtsp import decode_timestamp

            made = decode_timestamp(frame.image)
            data["true_age_ms"] = None if made is None else (time.time() - made) * 1000
        busy(self.options.delay)  # type: ignore[attr-defined]
        yield Event("frame", data)
