"""The source plugin API: :class:`Source`, and :func:`resolve_source` for a camera's
``source = "package.module:ClassName"``.

Built-in sources (PyAV for FFmpeg URLs and files, OpenCV for V4L2, synthetic)
live in :mod:`edged.sources`; this module is what a plugin author and the
config check need, and imports neither OpenCV nor the config.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edged.errors import PluginError, SourceError
from edged.plugin import import_class

__all__ = ["Source", "bgr_to_gray", "resolve_source"]


def resolve_source(spec: str) -> type[Source]:
    """The :class:`Source` subclass ``spec`` names; :class:`PluginError` if none."""
    cls = import_class(spec)
    if not issubclass(cls, Source):
        raise PluginError(f"{spec!r} is not a subclass of edged.Source")
    return cls


def _into(out: np.ndarray | None, frame: np.ndarray) -> np.ndarray:
    """``frame`` copied into ``out`` when its shape and dtype fit; else ``frame`` itself."""
    if out is not None and out.shape == frame.shape and out.dtype == frame.dtype:
        np.copyto(out, frame)
        return out
    return frame


def bgr_to_gray(bgr: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """HxWx3 BGR as HxW grey, written into ``out`` when it fits, else a new array."""
    import cv2

    if out is not None and out.shape == bgr.shape[:2] and out.dtype == bgr.dtype:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY, dst=out)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)


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
        self._bgr: np.ndarray | None = None  # retrieve_gray()'s BGR buffer

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
        return _into(out, frame)

    def retrieve_gray(self, out: np.ndarray | None = None) -> np.ndarray:
        """The frame from the last :meth:`grab` as HxW grey, written into ``out`` when it fits.

        This default converts what :meth:`retrieve` gives (BGR) to grey; a source
        that has the luma plane at hand overrides it and skips the conversion.
        """
        frame = self.retrieve(getattr(self, "_bgr", None))
        if frame.ndim == 2:
            return _into(out, frame)
        self._bgr = frame  # decode into the same buffer next time
        return bgr_to_gray(frame, out)

    def close(self) -> None:
        """Release the source; called once, also after a failed open."""

    @property
    def nominal_fps(self) -> float | None:
        """The frame rate the source announces, if any."""
        return None
