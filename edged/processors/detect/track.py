"""STAND-IN for the track branch's tracker (issue 19), to be replaced when it merges.

The detect processor codes against the interface agreed with the track helper
(Detection, LabelFilter, TrackOptions, ObjectTracker, EVENT_TYPES). This
minimal version (greedy IoU matching, masks, zones at start, no snapshots or
per-label filters) lets detect run and be tested until the real one lands;
the merge of branch `track` replaces this file whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edged.processor import Event, Frame
from edged.regions import Box, CameraRegions
from edged.units import Duration

EVENT_TYPES: tuple[str, ...] = ("object.start", "object.update", "object.end")


@dataclasses.dataclass(frozen=True, slots=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]


class LabelFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_score: float | None = None
    min_area: float | None = None
    max_area: float | None = None


class TrackOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    filters: dict[str, LabelFilter] = Field(default_factory=dict)
    start_frames: int = 2
    update_interval: Duration = 5.0
    end_after: Duration = 1.0
    draw_boxes: bool = True


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class ObjectTracker:
    def __init__(self, options: TrackOptions, regions: CameraRegions) -> None:
        self.options, self.regions = options, regions
        self.objects: list[dict[str, Any]] = []
        self.next_id = 1

    def update(self, detections: Sequence[Detection], frame: Frame) -> list[Event]:
        events: list[Event] = []
        now = frame.monotonic
        dets = []
        for d in detections:
            x = (d.box[0] + d.box[2]) / 2
            if self.regions.masked(x, d.box[3]):
                continue
            dets.append(d)
        for d in dets:
            best = max(self.objects, key=lambda o: _iou(o["box"], d.box), default=None)
            if best is not None and best["label"] == d.label and _iou(best["box"], d.box) > 0.1:
                best.update(box=d.box, seen=now, score=d.score, hits=best["hits"] + 1)
                best["max"] = max(best["max"], d.score)
            else:
                best = {
                    "id": self.next_id,
                    "label": d.label,
                    "box": d.box,
                    "seen": now,
                    "first": now,
                    "score": d.score,
                    "max": d.score,
                    "hits": 1,
                    "started": False,
                }
                self.next_id += 1
                self.objects.append(best)
            zones = self.regions.zones_at((d.box[0] + d.box[2]) / 2, d.box[3])
            if best["started"] and zones != best.get("zones"):
                best["zones"] = zones
                data = {"id": best["id"], "label": d.label, "box": list(d.box), "zones": zones}
                events.append(Event("object.update", data))
            if not best["started"] and best["hits"] >= self.options.start_frames:
                best["zones"] = zones
                best["started"] = True
                events.append(
                    Event(
                        "object.start",
                        {
                            "id": best["id"],
                            "label": d.label,
                            "score": d.score,
                            "box": list(d.box),
                            "zones": zones,
                        },
                    )
                )
        for o in list(self.objects):
            if now - o["seen"] > self.options.end_after:
                self.objects.remove(o)
                if o["started"]:
                    events.append(
                        Event(
                            "object.end",
                            {
                                "id": o["id"],
                                "label": o["label"],
                                "duration": o["seen"] - o["first"],
                            },
                        )
                    )
        return events

    def boxes(self) -> list[Box]:
        return [
            Box(o["box"][0], o["box"][1], o["box"][2], o["box"][3], o["label"], o["score"])
            for o in self.objects
            if o["started"]
        ]
