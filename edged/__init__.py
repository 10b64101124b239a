"""edged: an edge daemon for cameras whose slow algorithms always see the newest frame."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from edged.capture import LatestFrameCapture
    from edged.config import CameraConfig, Config, load_config
    from edged.processor import Event, Frame, Processor
    from edged.source import Source

__all__ = [
    "CameraConfig",
    "Config",
    "Event",
    "Frame",
    "LatestFrameCapture",
    "Processor",
    "Source",
    "__version__",
    "load_config",
]

# Imported on first use, not with the package: every `edged` command imports
# this package first, and `edged run` must catch its signals before numpy,
# OpenCV and pydantic take half a second to load (see edged.cli).
_LAZY = {
    "CameraConfig": "edged.config",
    "Config": "edged.config",
    "load_config": "edged.config",
    "Event": "edged.processor",
    "Frame": "edged.processor",
    "Processor": "edged.processor",
    "LatestFrameCapture": "edged.capture",
    "Source": "edged.source",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edged' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
