"""The tracker: per-frame detections to one start, updates and one end per object;
and a processor's own snapshot images (``Event.snapshot``) saved by real workers."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
from daemon import start_daemon
from helpers import daemon_toml

from edged.processor import Event, Frame
from edged.processors.detect.track import (
    Detection,
    LabelFilter,
    ObjectTracker,
    TrackOptions,
)
from edged.regions import CameraRegions, Region

FPS = 10.0
IMAGE = np.zeros((90, 160, 3), np.uint8)


def frame(i: int) -> Frame:
    return Frame(image=IMAGE, seq=i + 1, timestamp=1e9 + i / FPS, monotonic=i / FPS, camera="c")


def person(x: float, score: float = 0.9, y: float = 0.4, label: str = "person") -> Detection:
    return Detection(label, score, (x, y, x + 0.1, y + 0.3))


def run(
    tracker: ObjectTracker, per_frame: list[list[Detection]], tail: int = 40
) -> list[tuple[int, Event]]:
    """Feed the detections frame by frame, then ``tail`` empty frames: (frame, event)."""
    out = []
    for i, dets in enumerate([*per_frame, *[[]] * tail]):
        out += [(i, e) for e in tracker.update(dets, frame(i))]
    return out


def types(events: list[tuple[int, Event]]) -> list[str]:
    return [e.type for _, e in events]


def crossing(n: int = 30, missing: tuple[int, ...] = ()) -> list[list[Detection]]:
    """One person walking left to right over ``n`` frames, unseen in ``missing``."""
    return [[] if i in missing else [person(0.05 + 0.8 * i / n)] for i in range(n)]


def tracker(regions: CameraRegions | None = None, **options: object) -> ObjectTracker:
    opts = TrackOptions.model_validate({"update_interval": 100, **options})
    return ObjectTracker(opts, regions or CameraRegions("c"))


def test_an_object_crossing_makes_one_start_and_one_end() -> None:
    events = run(tracker(), crossing())
    assert types(events) == ["object.start", "object.end"]
    (i_start, start), (i_end, end) = events
    assert i_start == 1  # start_frames = 2: the second frame it is seen in
    assert start.data["id"] == end.data["id"] == 1
    assert start.data["label"] == "person" and start.data["count"] == 1
    assert end.data["count"] == 0
    assert end.data["duration"] == pytest.approx(2.9)  # first to last frame seen
    assert i_end - 29 in (20, 21)  # unseen for end_after (2 s: 20 frames, give or take a float)


def test_missed_detections_in_the_middle_do_not_end_the_object() -> None:
    events = run(tracker(), crossing(missing=(10, 11, 17)))
    assert types(events) == ["object.start", "object.end"]


def test_a_fast_object_that_never_overlaps_its_last_box_is_one_object() -> None:
    # 0.12 a frame with a box 0.1 wide (a car at process_fps = 5): no IoU at all
    # between two frames, and no velocity known at the second.
    fast = [[person(0.02 + 0.12 * i)] for i in range(8)]
    events = run(tracker(), fast, tail=30)
    assert types(events) == ["object.start", "object.end"]
    two = [[person(0.02 + 0.12 * i), person(0.9 - 0.12 * i, y=0.05)] for i in range(7)]
    assert types(run(tracker(), two, tail=30)).count("object.start") == 2


def test_a_flicker_shorter_than_start_frames_makes_no_event() -> None:
    per_frame = [[person(0.5)], [], [person(0.5)], [], [person(0.5)]]
    assert run(tracker(start_frames=2), per_frame) == []
    assert types(run(tracker(start_frames=1), per_frame)) == ["object.start", "object.end"]


def test_two_objects_crossing_each_other_keep_their_ids() -> None:
    n = 30
    per_frame = [
        [person(0.05 + 0.8 * i / n, y=0.1), person(0.85 - 0.8 * i / n, y=0.2)] for i in range(n)
    ]
    events = run(tracker(), per_frame)
    assert types(events).count("object.start") == 2
    assert types(events).count("object.end") == 2
    starts = [e for _, e in events if e.type == "object.start"]
    assert [e.data["count"] for e in starts] == [1, 2]
    ends = {e.data["id"]: e for _, e in events if e.type == "object.end"}
    # Each kept its own track across the crossing: the one that started left ends right.
    left = next(e for e in starts if e.data["box"][0] < 0.5).data["id"]
    assert ends[left].data["box"][0] > 0.5


def test_different_labels_are_different_objects() -> None:
    per_frame = [[person(0.5), person(0.5, label="car")] for _ in range(5)]
    events = run(tracker(), per_frame)
    assert sorted(e.data["label"] for _, e in events if e.type == "object.start") == [
        "car",
        "person",
    ]


def test_entering_a_zone_updates_at_once_and_updates_are_rate_limited() -> None:
    right = Region("right", ((0.5, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 1.0)))
    t = tracker(CameraRegions("c", zones=(right,)), update_interval=1.0)
    events = run(t, crossing(n=40))
    updates = [(i, e) for i, e in events if e.type == "object.update"]
    zone = [(i, e) for i, e in updates if e.data.get("entered")]
    assert len(zone) == 1 and zone[0][1].data["entered"] == ["right"]
    assert zone[0][1].data["zones"] == ["right"]
    start = next(e for _, e in events if e.type == "object.start")
    assert start.data["zones"] == []
    end = next(e for _, e in events if e.type == "object.end")
    assert end.data["zones"] == ["right"]
    # Interval updates: at most one a second (10 frames) while it is seen.
    plain = [i for i, e in updates if not e.data.get("entered")]
    assert plain and all(b - a >= 10 for a, b in itertools.pairwise(plain))


def test_masks_drop_detections_that_stand_in_them() -> None:
    # The person's feet (bottom centre, y = 0.7) are in the mask on the left half.
    left = Region("left", ((0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (0.0, 1.0)))
    t = tracker(CameraRegions("c", masks=(left,)))
    events = run(t, crossing(n=30))
    start = next(e for _, e in events if e.type == "object.start")
    assert start.data["box"][0] >= 0.45  # started only once out of the mask
    assert types(events) == ["object.start", "object.end"]


def test_per_label_filters() -> None:
    t = tracker(filters={"person": LabelFilter(min_score=0.8, max_area=0.02)})
    weak = [[person(0.5, score=0.7)] for _ in range(5)]
    assert run(t, weak) == []
    big = [[Detection("person", 0.9, (0.1, 0.1, 0.5, 0.5))] for _ in range(5)]
    assert run(t, big) == []
    ok = [[person(0.5, score=0.9)] for _ in range(5)]  # 0.1 x 0.3 = 0.03 > 0.02
    assert run(t, ok) == []
    small = [[Detection("person", 0.9, (0.5, 0.5, 0.6, 0.6))] for _ in range(5)]
    assert types(run(t, small)) == ["object.start", "object.end"]
    with pytest.raises(ValueError, match="min_area is larger than max_area"):
        LabelFilter(min_area=0.5, max_area=0.1)


def test_end_after_counts_frame_time_not_calls() -> None:
    t = tracker(end_after=1.0)
    for i in range(3):
        t.update([person(0.5)], frame(i))
    # A slow processor: the next frame it sees is 5 s later.
    late = Frame(image=IMAGE, seq=60, timestamp=1e9 + 7, monotonic=7.0, camera="c")
    assert [e.type for e in t.update([], late)] == ["object.end"]


def test_objects_per_camera_are_capped() -> None:
    t = tracker(max_objects=3)
    crowd = [[person(0.1 * k, score=0.5 + k / 100) for k in range(8)] for _ in range(3)]
    events = run(t, crowd)
    starts = [e for _, e in events if e.type == "object.start"]
    assert len(starts) == 3
    assert sorted(e.data["score"] for e in starts) == [0.55, 0.56, 0.57]  # the strongest


def test_snapshot_images_show_the_box_start_now_end_best() -> None:
    image = np.full((360, 640, 3), 40, np.uint8)
    t = tracker()
    events = []
    for i, score in enumerate([0.6, 0.95, 0.7, 0.6]):
        f = Frame(image=image, seq=i + 1, timestamp=1e9 + i, monotonic=i / FPS, camera="c")
        events += t.update([person(0.3 + i * 0.01, score=score)], f)
    f = Frame(image=image, seq=99, timestamp=1e9 + 99, monotonic=99.0, camera="c")
    events += t.update([], f)
    start, end = events
    assert start.snapshot is not None and end.snapshot is not None
    assert start.snapshot.shape == image.shape
    assert (image == 40).all()  # drawn on copies
    green = (start.snapshot[:, :, 1] == 255) & (start.snapshot[:, :, 0] == 0)
    assert green.any()
    assert end.data["max_score"] == 0.95
    no_boxes = tracker(draw_boxes=False)
    assert all(e.snapshot is None for _, e in run(no_boxes, crossing()))


# -- real workers: an event's own snapshot image is what gets saved ------------------------


@pytest.mark.slow
@pytest.mark.parametrize("shared", [False, True])
def test_a_processors_own_snapshot_image_is_saved_for_its_event(
    tmp_path: Path, daemons: list, shared: bool
) -> None:
    cam = 'source = "synthetic"\nwidth = 160\nheight = 90\nfps = 10\n'
    cam += "snapshots = { enabled = true }\n"
    if shared:
        toml = daemon_toml(
            {"a": cam + 'processor = "marks"'},
            sections='[processors.marks]\ntype = "plugins:MarkedSnapshots"',
        )
    else:
        toml = daemon_toml({"a": cam}, processors={"a": 'type = "plugins:MarkedSnapshots"'})
    d = start_daemon(daemons, tmp_path, toml)
    d.wait_events(6)
    assert d.stop() == 0
    events = d.events()
    marked = [e for e in events if e["type"] == "marked"]
    plain = [e for e in events if e["type"] == "plain"]
    assert marked and plain
    state = tmp_path / "state"
    for e in marked:
        jpeg = cv2.imread(str(state / e["snapshot"]))
        assert jpeg is not None and jpeg.shape == (90, 160, 3)
        # The processor's image: all white, where the synthetic frame is not.
        assert jpeg.mean() > 240
    for e in plain:
        jpeg = cv2.imread(str(state / e["snapshot"]))
        assert jpeg is not None and jpeg.mean() < 240
        assert e["snapshot"] != next(m["snapshot"] for m in marked if m["seq"] == e["seq"])
