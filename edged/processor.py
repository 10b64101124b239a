"""The processor plugin API and loader.

A processor turns frames into events. Subclass :class:`Processor`, implement
:meth:`Processor.process`, and name the class in the config::

    [cameras.front.processor]
    type = "mypackage.detect:PeopleCounter"   # or a registered or built-in name
    threshold = 0.6                           # validated by PeopleCounter.Options
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from edged.errors import PluginError
from edged.plugin import import_class
from edged.regions import Box, CameraRegions

ENTRY_POINT_GROUP = "edged.processors"
PixelFormat = Literal["bgr", "gray"]
PIXEL_FORMATS: tuple[str, ...] = ("bgr", "gray", "any")
BUILTINS: dict[str, str] = {
    "detect": "edged.processors.detect.processor:DetectProcessor",
    "motion": "edged.processors.motion:MotionProcessor",
    "null": "edged.processors.null:NullProcessor",
}
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclasses.dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame, as a processor sees it.

    ``image`` is a view of shared memory, valid only during :meth:`Processor.process`:
    copy it (``frame.image.copy()``) to keep it longer. Treat it as read-only.
    """

    image: np.ndarray
    """HxWx3 BGR uint8 pixels; HxW grey for a processor whose
    :attr:`Processor.pixel_format` is ``"gray"``."""
    seq: int
    """Sequence number from the reader, 1 for the first frame; gaps are frames skipped."""
    timestamp: float
    """Wall-clock time (seconds since the epoch) at which the grab returned."""
    monotonic: float
    """``time.monotonic()`` at the same instant; comparable across processes."""
    camera: str = ""
    """The camera's name: what tells a shared processor's cameras apart."""


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """What a processor reports. ``type`` is a short dotted name like ``motion.start``."""

    type: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    snapshot: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    """An image to save as this event's snapshot instead of the frame (HxWx3 BGR or
    HxW grey uint8; a box drawn on a copy of the frame, an earlier and better frame):
    used when the camera takes snapshots of this event type, ignored otherwise. It
    stays in the worker process: only the saved file's path reaches the event."""


class NoOptions(BaseModel):
    """Options of a processor that takes none."""

    model_config = ConfigDict(extra="forbid")


class Processor:
    """Base class for processors: implement :meth:`process`.

    Declare options as a pydantic model in a nested ``Options`` class; the
    config's ``[cameras.NAME.processor]`` table (less its ``type`` key) is
    validated against it and the result is ``self.options``.

    Each camera's processor runs in its own worker process, unless the config
    names it in ``[processors.NAME]``: then one instance (per ``instances``)
    serves several cameras, ``frame.camera`` says whose frame it is, and
    :meth:`process_batch` gets up to ``batch_size`` frames, one per camera.
    ``process`` is called with the newest frame only; frames that arrived while
    it was busy are skipped, never queued. An exception is logged and counted,
    and the next frame is processed as usual.
    """

    Options: ClassVar[type[BaseModel]] = NoOptions
    event_types: ClassVar[tuple[str, ...]] = ()
    """The event types ``process`` may report, if known (Home Assistant's event entity
    lists them; a ``motion.start`` among them also gets a motion binary sensor)."""
    pixel_format: ClassVar[Literal["bgr", "gray", "any"]] = "bgr"
    """What ``frame.image`` holds: ``"bgr"`` (HxWx3) or ``"gray"`` (HxW). Declare
    ``"gray"`` when the algorithm works on grey anyway: for RTSP, URL and file
    sources the reader then hands over the decoder's luma plane (the Y of YUV,
    in the range the camera encoded, usually 16-235) and skips the colour
    conversion, the largest cost of a reader after decoding. Where the reader
    delivers BGR (other sources, a camera taking colour snapshots, or
    ``pixel_format = "bgr"``) the frame is converted to grey for you. ``"any"``:
    the processor takes either (the camera's ``pixel_format`` decides, BGR by
    default)."""

    cameras: Mapping[str, CameraRegions] = {}
    """The cameras this processor serves, by name, with their zones and masks
    (``[cameras.NAME.zones]``, ``[cameras.NAME.masks]``, relative coordinates); set
    by the worker before :meth:`setup`. Look up ``self.cameras[frame.camera]``."""

    def __init__(self, options: BaseModel, camera: str) -> None:
        self.options = options
        self.camera = camera

    @classmethod
    def counted_labels(cls, options: BaseModel) -> tuple[str, ...]:
        """The labels whose counts this processor reports with these options: its
        ``object.*`` events carry ``data["label"]`` and ``data["count"]`` (the objects
        with that label the camera has now), and Home Assistant gets a count sensor
        per camera for each. The default: none."""
        return ()

    def setup(self) -> None:
        """Called once in the worker process before the first frame (load models here)."""

    def process(self, frame: Frame) -> Iterable[Event]:
        """Look at one frame and return (or yield) the events it shows."""
        raise NotImplementedError

    def process_batch(self, frames: list[Frame]) -> list[Iterable[Event] | None]:
        """Look at several frames (each of another camera) in one call: one result
        per frame, in order. Called by a shared processor whose ``batch_size`` is
        over 1. Override it when the model takes a batch; the default calls
        :meth:`process` on each frame. An exception counts as a failure of every
        frame in the batch."""
        return [self.process(frame) for frame in frames]

    def boxes(self, camera: str) -> Sequence[Box]:
        """What this processor sees in its newest frame of ``camera``, as boxes in
        relative coordinates, for the live view; called after each processed frame.
        The default: none."""
        return ()

    def close(self) -> None:
        """Called once when the worker stops."""


def _registered() -> dict[str, str]:
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return {**found, **BUILTINS}


def processor_names() -> list[str]:
    """Names usable as ``type``: built-ins and the ``edged.processors`` entry points."""
    return sorted(_registered())


def resolve_processor(type_name: str) -> type[Processor]:
    """Find the processor class that ``type`` names, or raise :class:`PluginError`."""
    registered = _registered()
    if type_name in registered:
        spec = registered[type_name]
    elif _IMPORT_PATH.match(type_name):
        spec = type_name
    else:
        hint = difflib.get_close_matches(type_name, registered, n=1)
        did = f" (did you mean {hint[0]!r}?)" if hint else ""
        known = ", ".join(sorted(registered))
        raise PluginError(
            f"unknown processor {type_name!r}{did}; use one of: {known}, "
            "or 'package.module:ClassName'"
        )
    cls = import_class(spec)
    if not issubclass(cls, Processor):
        raise PluginError(f"{spec!r} is not a subclass of edged.Processor")
    if not (isinstance(cls.Options, type) and issubclass(cls.Options, BaseModel)):
        raise PluginError(f"{spec!r}: its Options is not a pydantic model (a BaseModel subclass)")
    if cls.pixel_format not in PIXEL_FORMATS:
        raise PluginError(
            f"{spec!r}: pixel_format {cls.pixel_format!r} is not one of: {', '.join(PIXEL_FORMATS)}"
        )
    return cls
