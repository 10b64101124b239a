"""Processors for benchmarks; the daemon loads them with ``bench/`` and ``tests/`` on PYTHONPATH.

``BusyProcessor`` (``bench/freshness.py --work busy``) burns CPU, holding the GIL:
``tests/plugins.py``'s ``SlowProcessor`` sleeps, which releases the GIL, the best
case for a reader thread in the same process; this one keeps a core busy in
Python for ``delay`` seconds instead, like a real pure-Python algorithm.

``AgeProbe`` (``bench/scale.py``) is a light processor that reports the true
frame age once a second.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from plugins import SlowOptions
from pydantic import BaseModel, ConfigDict, Field

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
    pixel_format = "any"

    def process(self, frame: Frame) -> Iterator[Event]:
        data: dict[str, object] = {"shape": list(frame.image.shape)}
        if self.options.timestamps:  # type: ignore[attr-defined]
            from components.rtsp import decode_timestamp

            made = decode_timestamp(frame.image)
            data["true_age_ms"] = None if made is None else (time.time() - made) * 1000
        busy(self.options.delay)  # type: ignore[attr-defined]
        yield Event("frame", data)


class ProbeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    every: float = Field(1.0, gt=0, description="seconds between two age probes")


class AgeProbe(Processor):
    """A light processor for ``bench/scale.py``: nothing per frame, an age probe per second.

    Every frame wakes the worker (as with ``null``); once every ``every`` seconds
    it reads the RTSP test server's timestamp strip (about 0.2 ms at 720p) and
    reports the frame's true age and sequence number as one event. The events
    show whether the reader keeps up with the stream (the age stays flat) at
    about one event per second per camera, so the event sinks cost next to nothing.
    """

    Options = ProbeOptions
    pixel_format = "any"  # scale.py's edged_gray hands it grey frames

    def setup(self) -> None:
        self._next = 0.0

    def process(self, frame: Frame) -> Iterator[Event]:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.options.every  # type: ignore[attr-defined]
        from components.rtsp import decode_timestamp

        made = decode_timestamp(frame.image)
        age = None if made is None else (time.time() - made) * 1000
        yield Event("probe", {"true_age_ms": age})


class BallastOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mib: int = Field(200, ge=0, le=8192, description="MiB that setup() allocates and touches")


class Ballast(Processor):
    """A stand-in for a model's weights (``bench/memory.py``): ``setup()`` allocates
    ``mib`` MiB and writes every page, so they count in PSS; frames cost nothing."""

    Options = BallastOptions
    pixel_format = "any"

    def setup(self) -> None:
        import numpy as np

        self.weights = np.ones(self.options.mib * 2**20, dtype=np.uint8)  # type: ignore[attr-defined]

    def process(self, frame: Frame) -> Iterator[Event]:
        return iter(())
