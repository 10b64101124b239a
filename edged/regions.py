"""Regions of a camera's picture: zones, masks and boxes, in relative coordinates.

Every coordinate here is relative to the frame: ``x`` from 0 (left edge) to 1
(right edge), ``y`` from 0 (top) to 1 (bottom). A zone drawn on a 1080p
stream therefore still fits when the camera is switched to 720p, and the same
numbers serve the processor (which multiplies by its frame's size) and the web
page (which multiplies by the image it shows).

- A **zone** (``[cameras.NAME.zones.ZONE]``) is a named polygon: a detection
  whose box bottom-centre (where an object stands) lies inside gets the zone's
  name in its ``zones``.
- A **mask** (``[cameras.NAME.masks.MASK]``) is a polygon whose detections are
  dropped: a tree that waves, a road outside the fence.
- A :class:`Box` is what a processor reports it sees in its newest frame, for
  the live view (:meth:`edged.Processor.boxes`).

This module is the one owner of these shapes and of the point-in-polygon rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

Point = tuple[float, float]


@dataclasses.dataclass(frozen=True, slots=True)
class Region:
    """A named polygon, relative coordinates (0-1), at least three points."""

    name: str
    points: tuple[Point, ...]

    def contains(self, x: float, y: float) -> bool:
        """Whether the relative point (x, y) lies inside (even-odd rule; a point on
        an edge may fall either way)."""
        return point_in_polygon(x, y, self.points)


@dataclasses.dataclass(frozen=True, slots=True)
class CameraRegions:
    """What a processor knows about one camera it serves, besides its frames."""

    name: str
    zones: tuple[Region, ...] = ()
    masks: tuple[Region, ...] = ()

    def zones_at(self, x: float, y: float) -> list[str]:
        """The names of the zones that contain the relative point, in config order."""
        return [zone.name for zone in self.zones if zone.contains(x, y)]

    def masked(self, x: float, y: float) -> bool:
        """Whether any mask contains the relative point."""
        return any(mask.contains(x, y) for mask in self.masks)


@dataclasses.dataclass(frozen=True, slots=True)
class Box:
    """A box a processor sees in a frame: relative corners (0-1), top-left then
    bottom-right, with an optional label and score."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str = ""
    score: float | None = None

    def as_dict(self) -> dict[str, object]:
        """The box as JSON-ready data (the web page and events use this shape)."""
        out: dict[str, object] = {"box": [self.x1, self.y1, self.x2, self.y2]}
        if self.label:
            out["label"] = self.label
        if self.score is not None:
            out["score"] = self.score
        return out


def point_in_polygon(x: float, y: float, points: Sequence[Point]) -> bool:
    """The even-odd (ray casting) test: whether (x, y) lies inside the polygon."""
    inside = False
    n = len(points)
    for i in range(n):
        x1, y1 = points[i]
        x2, y2 = points[(i + 1) % n]
        if (y1 > y) != (y2 > y):
            # x of the edge at height y; the division is safe, as y1 != y2 here.
            cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
            if x < cross:
                inside = not inside
    return inside


def regions_from(named: Iterable[tuple[str, Sequence[Sequence[float]]]]) -> tuple[Region, ...]:
    """Regions from ``(name, points)`` pairs, as the config holds them."""
    return tuple(
        Region(name, tuple((float(p[0]), float(p[1])) for p in points)) for name, points in named
    )
