"""Tracked objects from per-frame detections: one start, some updates, one end each.

A detector says "a person at this box" in every frame it sees one; a user wants
"a person came, stood by the door, left". :class:`ObjectTracker` (one per
camera) turns the first into the second:

1. **Filters.** A detection is dropped when its label's ``min_score``,
   ``min_area`` or ``max_area`` (relative to the frame: 0.01 is 1 % of the
   picture) rule it out, or when its box's bottom centre (where an object
   stands) lies in one of the camera's masks.
2. **Matching.** Each tracked object's box is predicted for this frame's time
   from its velocity (constant-velocity motion, smoothed), and detections of
   the same label are matched to predictions greedily by IoU, best first, above
   ``min_iou``; then what is left by centre distance, within a diagonal of the
   predicted box and of a like size (an object seen once has no velocity yet,
   and a fast one never overlaps its next box). What is left over starts a new
   candidate object; at most
   ``max_objects`` are tracked per camera (the weakest new detections wait).
3. **Events.** A candidate seen in ``start_frames`` consecutive processed frames
   becomes an object: ``object.start``. While it is seen, ``object.update``
   goes out when it enters or leaves a zone (at once), else at most once per
   ``update_interval``. Unseen for ``end_after`` (frame time,
   ``frame.monotonic``): ``object.end``, with the duration. A candidate missed
   before it started ends silently: a one-frame false positive makes no event.
   A missed detection or two in the middle of a crossing does not end the object.

Event data, every type: ``id`` (per camera, from 1), ``label``, ``score`` (this
frame's), ``max_score``, ``box`` (``[x1, y1, x2, y2]``, relative 0-1),
``zones`` (the zones its bottom centre is in), ``count`` (objects with this
label the camera has after this event: a Home Assistant counter). An update
adds ``entered`` and ``left`` (zone names) when zones changed; an end adds
``duration`` (seconds from the first to the last frame it was seen in).

Snapshots: with ``draw_boxes``, an ``object.start`` carries a copy of the frame
with the object's box and label drawn, and an ``object.end`` the object's best
frame (its highest score) with its box (:attr:`edged.Event.snapshot`; saved
only where the camera takes snapshots). The best frame is kept downscaled to at
most ``BEST_WIDTH`` pixels wide, one per tracked object: bounded by
``max_objects``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edged.processor import Event, Frame
from edged.regions import Box, CameraRegions
from edged.units import Duration

EVENT_TYPES: tuple[str, ...] = ("object.start", "object.update", "object.end")
BEST_WIDTH = 640  # pixels: the best frame of an object is kept at most this wide

BoxT = tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True, slots=True)
class Detection:
    """One object a detector found in one frame."""

    label: str
    score: float
    box: BoxT
    """x1, y1, x2, y2 relative to the frame (0-1)."""


class LabelFilter(BaseModel):
    """``[processors.NAME.filters.LABEL]``: which detections of one label count."""

    model_config = ConfigDict(extra="forbid")
    min_score: float | None = Field(
        None, ge=0, le=1, description="Least score; default: the processor's min_score."
    )
    min_area: float | None = Field(
        None, ge=0, le=1, description="Least box area, relative to the frame (0.01: 1 %)."
    )
    max_area: float | None = Field(
        None, ge=0, le=1, description="Largest box area, relative to the frame."
    )

    @model_validator(mode="after")
    def _check(self) -> LabelFilter:
        low, high = self.min_area, self.max_area
        if low is not None and high is not None and low > high:
            raise ValueError("min_area is larger than max_area")
        return self


class TrackOptions(BaseModel):
    """How detections become tracked objects and their events."""

    model_config = ConfigDict(extra="forbid")
    filters: dict[str, LabelFilter] = Field(
        default_factory=dict, description="Per label: min_score, min_area, max_area."
    )
    start_frames: int = Field(
        2, ge=1, le=100, description="Consecutive processed frames before object.start."
    )
    update_interval: Duration = Field(
        5.0, ge=0, le=86400, description="Least time between two object.update of an object."
    )
    end_after: Duration = Field(
        2.0, gt=0, le=3600, description="Unseen this long (frame time): object.end."
    )
    min_iou: float = Field(
        0.2, gt=0, lt=1, description="Least overlap (IoU) of a detection with an object's box."
    )
    max_objects: int = Field(50, ge=1, le=1000, description="Objects tracked per camera.")
    draw_boxes: bool = Field(
        True, description="Snapshots of object events show the object's box and label."
    )


@dataclasses.dataclass(slots=True)
class _Object:
    id: int
    label: str
    box: BoxT
    score: float
    first: float  # frame.monotonic when first seen
    seen: float  # ... when last seen
    velocity: BoxT = (0.0, 0.0, 0.0, 0.0)  # box units per second
    max_score: float = 0.0
    hits: int = 1  # consecutive frames seen while a candidate
    started: bool = False
    zones: tuple[str, ...] = ()
    updated: float = 0.0  # when the last start/update went out
    best: np.ndarray | None = None  # the best frame, downscaled, box drawn
    matched: bool = True

    def predict(self, now: float) -> BoxT:
        dt = now - self.seen
        return (
            self.box[0] + self.velocity[0] * dt,
            self.box[1] + self.velocity[1] * dt,
            self.box[2] + self.velocity[2] * dt,
            self.box[3] + self.velocity[3] * dt,
        )


def iou(a: BoxT, b: BoxT) -> float:
    """Intersection over union of two boxes (x1, y1, x2, y2)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _centre(box: BoxT) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def _distance(a: BoxT, b: BoxT) -> float:
    (ax, ay), (bx, by) = _centre(a), _centre(b)
    return float(((ax - bx) ** 2 + (ay - by) ** 2) ** 0.5)


def _diagonal(box: BoxT) -> float:
    return float(((box[2] - box[0]) ** 2 + (box[3] - box[1]) ** 2) ** 0.5)


def _alike(a: BoxT, b: BoxT) -> bool:
    """Areas within 2x of each other."""
    area_a = max(1e-9, (a[2] - a[0]) * (a[3] - a[1]))
    area_b = max(1e-9, (b[2] - b[0]) * (b[3] - b[1]))
    return 0.5 <= area_a / area_b <= 2.0


def _foot(box: BoxT) -> tuple[float, float]:
    """Where an object stands: its box's bottom centre."""
    return ((box[0] + box[2]) / 2, box[3])


class ObjectTracker:
    """One camera's tracked objects; see the module docstring."""

    def __init__(self, options: TrackOptions, regions: CameraRegions) -> None:
        self.options = options
        self.regions = regions
        self.objects: list[_Object] = []
        self._next_id = 1

    def update(self, detections: Sequence[Detection], frame: Frame) -> list[Event]:
        """The events this frame's detections make. ``frame.image`` is only read
        during the call (copies are kept where needed)."""
        now = frame.monotonic
        found = [d for d in detections if self._wanted(d)]
        for obj in self.objects:
            obj.matched = False
        events: list[Event] = []
        for obj, det in self._match(found, now):
            events += self._seen(obj, det, frame)
        events += self._gone(now)
        return events

    def boxes(self) -> list[Box]:
        """The objects being tracked (started ones), for the live view."""
        return [Box(*o.box, label=o.label, score=o.score) for o in self.objects if o.started]

    # -- the steps ------------------------------------------------------------------

    def _wanted(self, d: Detection) -> bool:
        rule = self.options.filters.get(d.label)
        if rule is not None:
            area = max(0.0, d.box[2] - d.box[0]) * max(0.0, d.box[3] - d.box[1])
            if rule.min_score is not None and d.score < rule.min_score:
                return False
            if rule.min_area is not None and area < rule.min_area:
                return False
            if rule.max_area is not None and area > rule.max_area:
                return False
        return not self.regions.masked(*_foot(d.box))

    def _match(self, found: list[Detection], now: float) -> list[tuple[_Object, Detection]]:
        """Pairs of (object, its detection in this frame), new candidates included."""
        predicted = [o.predict(now) for o in self.objects]
        taken_o: set[int] = set()
        taken_d: set[int] = set()
        out: list[tuple[_Object, Detection]] = []

        def take(pairs: list[tuple[int, int]]) -> None:
            """Greedily, best pair first: each object and detection once."""
            for i, j in pairs:
                if i not in taken_o and j not in taken_d:
                    taken_o.add(i)
                    taken_d.add(j)
                    out.append((self.objects[i], found[j]))

        same = [
            (i, j)
            for i, o in enumerate(self.objects)
            for j, d in enumerate(found)
            if o.label == d.label
        ]
        overlaps = [(iou(predicted[i], found[j].box), i, j) for i, j in same]
        take([(i, j) for o, i, j in sorted(overlaps, reverse=True) if o >= self.options.min_iou])
        # Then by distance: an object seen once has no velocity yet, and a fast one
        # (or one seen at a low process_fps) never overlaps its next box. Within a
        # diagonal of its predicted box, and of a like size, it is the same object.
        near = [
            (_distance(predicted[i], found[j].box), i, j)
            for i, j in same
            if i not in taken_o and j not in taken_d and _alike(predicted[i], found[j].box)
        ]
        take([(i, j) for d, i, j in sorted(near) if d <= _diagonal(predicted[i])])
        fresh = sorted((d for j, d in enumerate(found) if j not in taken_d), key=lambda d: -d.score)
        for det in fresh:
            if len(self.objects) >= self.options.max_objects:
                break  # the weakest wait until an object ends
            obj = _Object(self._next_id, det.label, det.box, det.score, now, now, hits=0)
            self._next_id += 1
            self.objects.append(obj)
            out.append((obj, det))
        return out

    def _seen(self, obj: _Object, det: Detection, frame: Frame) -> list[Event]:
        now = frame.monotonic
        dt = now - obj.seen
        if dt > 0 and obj.hits:
            # Smoothed: one jittery box must not fling the prediction away.
            obj.velocity = tuple(  # type: ignore[assignment]
                0.5 * v + 0.5 * (n - o) / dt
                for v, n, o in zip(obj.velocity, det.box, obj.box, strict=True)
            )
        obj.box, obj.score, obj.seen, obj.matched = det.box, det.score, now, True
        obj.hits += 1
        if det.score > obj.max_score:
            obj.max_score = det.score
            obj.best = self._best_copy(frame.image, obj) if self.options.draw_boxes else None
        zones = tuple(self.regions.zones_at(*_foot(det.box)))
        if not obj.started:
            if obj.hits < self.options.start_frames:
                return []
            obj.started, obj.zones, obj.updated = True, zones, now
            shot = _draw(frame.image.copy(), obj) if self.options.draw_boxes else None
            return [Event("object.start", self._data(obj), shot)]
        if zones != obj.zones:
            entered = [z for z in zones if z not in obj.zones]
            left = [z for z in obj.zones if z not in zones]
            obj.zones, obj.updated = zones, now
            return [Event("object.update", {**self._data(obj), "entered": entered, "left": left})]
        if now - obj.updated >= self.options.update_interval:
            obj.updated = now
            return [Event("object.update", self._data(obj))]
        return []

    def _gone(self, now: float) -> list[Event]:
        events: list[Event] = []
        for obj in list(self.objects):
            if obj.matched:
                continue
            if not obj.started:
                # Consecutive frames, or not at all: a flicker is no object.
                self.objects.remove(obj)
            elif now - obj.seen > self.options.end_after:
                self.objects.remove(obj)
                data = {**self._data(obj), "duration": round(obj.seen - obj.first, 3)}
                events.append(Event("object.end", data, obj.best))
        return events

    def _data(self, obj: _Object) -> dict[str, Any]:
        count = sum(1 for o in self.objects if o.started and o.label == obj.label)
        return {
            "id": obj.id,
            "label": obj.label,
            "score": round(obj.score, 4),
            "max_score": round(obj.max_score, 4),
            "box": [round(v, 4) for v in obj.box],
            "zones": list(obj.zones),
            "count": count,
        }

    @staticmethod
    def _best_copy(image: np.ndarray, obj: _Object) -> np.ndarray:
        import cv2  # preloaded in workers; not at import, for check-config

        h, w = image.shape[:2]
        if w > BEST_WIDTH:
            small = cv2.resize(image, (BEST_WIDTH, round(h * BEST_WIDTH / w)))
        else:
            small = image.copy()
        return _draw(small, obj)


def _draw(image: np.ndarray, obj: _Object) -> np.ndarray:
    """The object's box and label drawn on ``image`` (a copy the caller owns)."""
    import cv2

    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    h, w = image.shape[:2]
    x1, y1 = round(obj.box[0] * w), round(obj.box[1] * h)
    x2, y2 = round(obj.box[2] * w), round(obj.box[3] * h)
    thick = max(2, w // 400)
    cv2.rectangle(image, (x1, y1), (x2, y2), (0, 255, 0), thick)
    text = f"{obj.label} {obj.max_score:.2f}"
    scale = max(0.5, w / 1600)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    top = max(0, y1 - th - base - 2)
    cv2.rectangle(image, (x1, top), (x1 + tw + 4, top + th + base + 2), (0, 255, 0), -1)
    cv2.putText(image, text, (x1 + 2, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1)
    return image
