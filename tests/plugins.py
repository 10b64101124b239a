"""Processors and sources used by the end-to-end tests (loaded by the daemon as plugins).

The daemon under test runs with ``tests/`` on PYTHONPATH, so a camera names
these as ``type = "plugins:SlowProcessor"`` or ``source = "plugins:SolidSource"``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edged import Event, Frame, Processor, Source


class SlowOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delay: float = Field(0.3, ge=0, description="seconds each frame takes")
    timestamps: bool = Field(False, description="decode the RTSP test server's timestamp strip")
    pad: int = Field(0, ge=0, le=60_000, description="bytes of padding in each event's data")


class SlowProcessor(Processor):
    """Takes ``delay`` seconds per frame and reports every frame it saw (BGR or grey)."""

    Options = SlowOptions
    pixel_format = "any"

    def process(self, frame: Frame) -> Iterator[Event]:
        data: dict[str, object] = {"shape": list(frame.image.shape)}
        if self.options.timestamps:  # type: ignore[attr-defined]
            from components.rtsp import decode_timestamp

            made = decode_timestamp(frame.image)
            # true age: from the moment the server made the frame
            data["true_age_ms"] = None if made is None else (time.time() - made) * 1000
        if self.options.pad:  # type: ignore[attr-defined]
            data["pad"] = "x" * self.options.pad  # type: ignore[attr-defined]
        time.sleep(self.options.delay)  # type: ignore[attr-defined]
        yield Event("frame", data)


class SolidSource(Source):
    """Frames that are each one uniform value (index % 256), as fast as it can."""

    def __init__(self, options: dict[str, object] | None = None, camera: str = "") -> None:
        super().__init__(options, camera)
        self.shape = (int(self.options.get("height", 480)), int(self.options.get("width", 640)), 3)
        self.index = 0

    def grab(self) -> bool:
        self.index += 1
        return True

    def retrieve(self, out: np.ndarray | None = None) -> np.ndarray:
        if out is None or out.shape != self.shape:
            out = np.empty(self.shape, np.uint8)
        # Row by row, slowly enough that a reader looking at this buffer now
        # would see two values.
        value = self.index % 256
        for row in range(0, self.shape[0], 16):
            out[row : row + 16] = value
        return out


class SolidCheck(Processor):
    """Checks every pixel of a frame has the same value; reports ``torn`` if not."""

    def process(self, frame: Frame) -> Iterator[Event]:
        img = frame.image
        first = int(img.flat[0])
        time.sleep(0.003)  # give the reader time to write elsewhere meanwhile
        if not (img == first).all():
            yield Event("torn", {"seq": frame.seq, "values": np.unique(img)[:8].tolist()})
        elif frame.seq % 20 == 0:
            yield Event("ok", {"seq": frame.seq, "value": first})


class FlakyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fail_every: int = Field(2, ge=1, description="raise on every Nth frame")


class FlakyProcessor(Processor):
    """Raises on every ``fail_every``-th frame, reports the others."""

    Options = FlakyOptions

    def __init__(self, options: BaseModel, camera: str) -> None:
        super().__init__(options, camera)
        self.n = 0

    def process(self, frame: Frame) -> list[Event]:
        self.n += 1
        if self.n % self.options.fail_every == 0:  # type: ignore[attr-defined]
            raise RuntimeError(f"boom on frame {frame.seq}")
        return [Event("ok", {"n": self.n})]


class RepeatingSource(Source):
    """Announces 5 fps but delivers 25: a camera re-sending the same frame."""

    def __init__(self, options: dict[str, object] | None = None, camera: str = "") -> None:
        super().__init__(options, camera)
        self.frame = np.full((120, 160, 3), 7, np.uint8)
        self.due = 0.0

    def read(self) -> np.ndarray:
        self.due = max(self.due + 1 / 25, time.monotonic())
        time.sleep(max(0.0, self.due - time.monotonic()))
        return self.frame

    @property
    def nominal_fps(self) -> float | None:
        return 5.0


class StuckOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    after: int = Field(1, ge=0, description="frames processed normally before process() hangs")


class StuckProcessor(Processor):
    """Processes ``after`` frames, then never returns from process() (a wedged model)."""

    Options = StuckOptions

    def __init__(self, options: BaseModel, camera: str) -> None:
        super().__init__(options, camera)
        self.seen = 0

    def process(self, frame: Frame) -> list[Event]:
        self.seen += 1
        if self.seen > self.options.after:  # type: ignore[attr-defined]
            time.sleep(3600)
        return [Event("frame", {})]


class BrokenSetupProcessor(Processor):
    """A processor whose setup() fails (a model file that is not there)."""

    def setup(self) -> None:
        raise RuntimeError("model file /nonexistent/model.onnx is missing")

    def process(self, frame: Frame) -> list[Event]:
        return []


class CountingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    log: str = Field(description="file to which each process() call appends 'PID N start|end'")
    delay: float = Field(0.0, ge=0, description="seconds each frame takes")


class CountingProcessor(Processor):
    """Numbers its frames and notes each call in a file, so a test can tell
    every event a worker produced from the events that reached the sinks."""

    Options = CountingOptions

    def __init__(self, options: BaseModel, camera: str) -> None:
        super().__init__(options, camera)
        self.n = 0

    def _note(self, what: str) -> None:
        with open(self.options.log, "a") as f:  # type: ignore[attr-defined]
            f.write(f"{os.getpid()} {self.n} {what}\n")

    def process(self, frame: Frame) -> list[Event]:
        self.n += 1
        self._note("start")
        time.sleep(self.options.delay)  # type: ignore[attr-defined]
        self._note("end")
        return [Event("count", {"pid": os.getpid(), "n": self.n})]


class BrokenSource(Source):
    """A source plugin whose constructor fails (a vendor SDK that is not installed)."""

    def __init__(self, options: dict[str, object] | None = None, camera: str = "") -> None:
        raise RuntimeError("vendor SDK libcam.so not found")


class BadFrameSource(Source):
    """Opens fine, then fails each frame: ``mode`` "raise" (a vendor SDK error),
    "rgba" (four channels) or "empty" (a zero-size frame)."""

    def read(self) -> np.ndarray:
        time.sleep(0.01)
        mode = self.options.get("mode", "raise")
        if mode == "raise":
            raise ConnectionRefusedError(111, "vendor SDK: camera refused the stream")
        if mode == "rgba":
            return np.zeros((48, 64, 4), np.uint8)
        return np.zeros((0, 0, 3), np.uint8)


class VanishingSource(Source):
    """A live camera whose read() returns None after ``frames`` frames of each connection."""

    def open(self) -> None:
        self.left = int(self.options.get("frames", 10))  # type: ignore[call-overload]

    def read(self) -> np.ndarray | None:
        time.sleep(0.02)
        self.left -= 1
        return np.zeros((48, 64, 3), np.uint8) if self.left >= 0 else None


class DroppingSource(Source):
    """A camera that refuses its first connection, then streams 10 frames per
    connection and drops: each loss comes after a good stretch of frames."""

    opens = 0

    def open(self) -> None:
        DroppingSource.opens += 1
        if DroppingSource.opens == 1:
            raise ConnectionRefusedError(111, "camera still booting")
        self.left = 10

    def read(self) -> np.ndarray:
        time.sleep(0.02)
        self.left -= 1
        if self.left < 0:
            raise TimeoutError("camera stopped sending")
        return np.zeros((48, 64, 3), np.uint8)


class PairedSource(Source):
    """25 frames a second on average, in pairs 0.1 ms apart: a bursty network or VM."""

    def __init__(self, options: dict[str, object] | None = None, camera: str = "") -> None:
        super().__init__(options, camera)
        self.frame = np.full((120, 160, 3), 7, np.uint8)
        self.due = 0.0
        self.n = 0

    def read(self) -> np.ndarray:
        self.n += 1
        if self.n % 2:
            self.due = max(self.due + 2 / 25, time.monotonic())
            time.sleep(max(0.0, self.due - time.monotonic()))
        else:
            time.sleep(0.0001)
        return self.frame

    @property
    def nominal_fps(self) -> float | None:
        return 25.0


class BatchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    per_call: float = Field(0.0, ge=0, description="seconds each call takes")
    per_frame: float = Field(0.0, ge=0, description="seconds more per frame in the call")
    hang_after: int = Field(0, ge=0, description="calls before one never returns (0: never)")


class BatchRecorder(Processor):
    """A model that takes a batch: each frame's event says the size of its batch,
    the frame's camera and this instance's pid (a shared processor's view)."""

    Options = BatchOptions
    pixel_format = "any"

    def setup(self) -> None:
        self.calls = 0

    def process(self, frame: Frame) -> list[Event]:
        return self.process_batch([frame])[0]  # type: ignore[return-value]

    def process_batch(self, frames: list[Frame]) -> list[Iterable[Event] | None]:
        opts = self.options
        self.calls += 1
        if opts.hang_after and self.calls > opts.hang_after:  # type: ignore[attr-defined]
            time.sleep(3600)
        time.sleep(opts.per_call + opts.per_frame * len(frames))  # type: ignore[attr-defined]
        data = {"size": len(frames), "pid": os.getpid()}
        return [[Event("batch", {**data, "camera": f.camera})] for f in frames]


class RegionsProcessor(Processor):
    """Reports, once per frame, the zones and masks it was given for the frame's camera,
    and the zones that contain the frame's centre."""

    pixel_format = "any"

    def process(self, frame: Frame) -> Iterator[Event]:
        regions = self.cameras[frame.camera or self.camera]
        yield Event(
            "regions",
            {
                "zones": {z.name: [list(p) for p in z.points] for z in regions.zones},
                "masks": [m.name for m in regions.masks],
                "centre_in": regions.zones_at(0.5, 0.5),
            },
        )


class MovingSquareSource(Source):
    """A dark scene that a bright square crosses from left to right (for detect).

    Options: ``width``, ``height`` (160x120), ``fps`` (20), ``size`` (the square's
    side, relative to the height: 0.25), ``y`` (its top, relative: 0.4), ``delay``
    (seconds of dark before it enters: 1), ``cross`` (seconds it takes: 3),
    ``pause`` (dark seconds between crossings: 3), ``crossings`` (0: forever)."""

    def __init__(self, options: dict[str, object] | None = None, camera: str = "") -> None:
        super().__init__(options, camera)
        get = self.options.get
        self.height, self.width = int(get("height", 120)), int(get("width", 160))  # type: ignore[call-overload]
        self.interval = 1 / float(get("fps", 20))  # type: ignore[arg-type]
        self.side = round(float(get("size", 0.25)) * self.height)  # type: ignore[arg-type]
        self.top = round(float(get("y", 0.4)) * self.height)  # type: ignore[arg-type]
        self.delay = float(get("delay", 1.0))  # type: ignore[arg-type]
        self.cross = float(get("cross", 3.0))  # type: ignore[arg-type]
        self.pause = float(get("pause", 3.0))  # type: ignore[arg-type]
        self.crossings = int(get("crossings", 0))  # type: ignore[call-overload]
        self.start = 0.0
        self.due = 0.0

    def open(self) -> None:
        self.start = self.due = time.monotonic()

    def read(self) -> np.ndarray:
        self.due = max(self.due + self.interval, time.monotonic())
        time.sleep(max(0.0, self.due - time.monotonic()))
        frame = np.zeros((self.height, self.width, 3), np.uint8)
        t = time.monotonic() - self.start - self.delay
        period = self.cross + self.pause
        n = int(t // period) if t >= 0 else -1
        into = t - n * period
        if n >= 0 and (not self.crossings or n < self.crossings) and into < self.cross:
            left = round(-self.side + (self.width + self.side) * into / self.cross)
            frame[self.top : self.top + self.side, max(0, left) : max(0, left + self.side)] = 255
        return frame

    @property
    def nominal_fps(self) -> float | None:
        return 1 / self.interval


class MarkedSnapshots(Processor):
    """Two events per frame: ``marked`` with an all-white image of its own as its
    snapshot, ``plain`` with none (its snapshot is the frame)."""

    pixel_format = "bgr"

    def process(self, frame: Frame) -> Iterator[Event]:
        yield Event("marked", {}, snapshot=np.full_like(frame.image, 255))
        yield Event("plain", {})


class CountOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    classes: list[str] = Field(default_factory=lambda: ["person", "traffic light"])


class ObjectCounter(Processor):
    """Counts the labels in its ``classes`` (Home Assistant gets a sensor for each);
    the tests submit its ``object.*`` events themselves."""

    Options = CountOptions
    pixel_format = "any"
    event_types = ("object.start", "object.update", "object.end")

    @classmethod
    def counted_labels(cls, options: BaseModel) -> tuple[str, ...]:
        return tuple(options.classes)  # type: ignore[attr-defined]

    def process(self, frame: Frame) -> Iterator[Event]:
        return iter(())
