"""edged: an edge daemon for cameras whose slow algorithms always see the newest frame."""

from __future__ import annotations

__version__ = "0.1.0"

from edged.capture import LatestFrameCapture
from edged.config import CameraConfig, Config, load_config
from edged.processor import Event, Frame, Processor
from edged.sources import Source

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
