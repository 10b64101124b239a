"""The ``null`` processor: looks at nothing, reports nothing.

It measures the pipeline itself (reader, shared-memory slot, worker loop)
with no algorithm cost on top.
"""

from __future__ import annotations

from collections.abc import Iterable

from edged.processor import Event, Frame, Processor


class NullProcessor(Processor):
    """Returns no events for any frame. Takes no options."""

    pixel_format = "any"

    def process(self, frame: Frame) -> Iterable[Event]:
        return ()
