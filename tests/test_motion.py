"""The motion processor, driven by the synthetic scene; and the null processor."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from edged.processor import Event, Frame, NoOptions, resolve_processor
from edged.processors.motion import MotionProcessor
from edged.processors.null import NullProcessor
from edged.synthetic import PERIOD_S, SyntheticScene

FPS = 15.0
EPOCH = 1_700_000_000.0
MONO0 = 5_000.0


def make_frame(image: np.ndarray, index: int, fps: float = FPS) -> Frame:
    # Read-only like the shared-memory slot: a processor that writes fails.
    image.flags.writeable = False
    return Frame(
        image=image,
        seq=index + 1,
        timestamp=EPOCH + index / fps,
        monotonic=MONO0 + index / fps,
        camera="test",
    )


def scene_frames(scene: SyntheticScene, first: int, stop: int, step: int = 1) -> Iterator[Frame]:
    # One buffer reused for every frame, as the reader's slot is.
    buf = np.empty((scene.height, scene.width, 3), np.uint8)
    for i in range(first, stop, step):
        buf.flags.writeable = True
        scene.render(i, out=buf)
        yield make_frame(buf, i, scene.fps)


def still_frames(image: np.ndarray, first: int, stop: int) -> Iterator[Frame]:
    for i in range(first, stop):
        yield make_frame(image.copy(), i)


def run(proc: MotionProcessor, frames: Iterator[Frame]) -> list[tuple[float, Event]]:
    """(scene time in seconds, event) for every event the frames produce."""
    out = []
    for frame in frames:
        for event in proc.process(frame):
            out.append((frame.monotonic - MONO0, event))
    return out


def motion(**options: Any) -> MotionProcessor:
    return MotionProcessor(MotionProcessor.Options(**options), "test")


def types_of(events: list[tuple[float, Event]]) -> list[str]:
    return [e.type for _, e in events]


# -- the synthetic scene ----------------------------------------------------


def test_scene_is_deterministic() -> None:
    a = SyntheticScene(320, 180, FPS, seed=3)
    b = SyntheticScene(320, 180, FPS, seed=3)
    other = SyntheticScene(320, 180, FPS, seed=4)
    for i in (0, 20, 33, 100, 451):
        assert np.array_equal(a.render(i), b.render(i))
    assert not np.array_equal(a.render(33), other.render(33))
    # Out of order and repeated renders give the same frame.
    assert np.array_equal(a.render(33), SyntheticScene(320, 180, FPS, seed=3).render(33))


def test_render_writes_in_place() -> None:
    scene = SyntheticScene(640, 360, FPS)
    buf = np.zeros((360, 640, 3), np.uint8)
    i = round((scene.crossing(0).enter_s + 1.0) * FPS)
    assert scene.render(i, out=buf) is buf
    assert np.array_equal(buf, scene.render(i))
    assert not np.array_equal(buf, scene.background)  # an object is in view
    with pytest.raises(ValueError, match="uint8"):
        scene.render(i, out=np.zeros((360, 640, 3), np.float32))
    with pytest.raises(ValueError):
        scene.render(i, out=np.zeros((361, 640, 3), np.uint8))


def test_scene_objects_enter_cross_and_leave() -> None:
    scene = SyntheticScene(640, 360, FPS)
    assert scene.background.std() > 5  # textured, not flat
    crossings = scene.crossings(120.0)
    assert len(crossings) == pytest.approx(120 / PERIOD_S, abs=1)
    for c, nxt in itertools.pairwise(crossings):
        # Vertical crossings are quicker: the same speed over a shorter way.
        assert 1.0 <= c.leave_s - c.enter_s <= 3.0
        assert 3.0 <= nxt.enter_s - c.leave_s <= 6.0
    # Empty view before an object enters and after it leaves, not during.
    c = crossings[2]
    for t, in_view in ((c.enter_s - 0.2, False), (c.enter_s + 1.0, True), (c.leave_s + 0.2, False)):
        frame = scene.render(round(t * FPS))
        assert np.array_equal(frame, scene.background) is not in_view


# -- motion: the synthetic scene --------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "seed"),
    [(640, 360, 0), (640, 360, 1), (640, 360, 2), (1280, 720, 5), (320, 240, 7)],
)
def test_one_start_and_end_per_crossing(width: int, height: int, seed: int) -> None:
    scene = SyntheticScene(width, height, FPS, seed=seed)
    n = 5
    # Stop in the quiet gap before object n: objects 0..n-1 have fully ended.
    stop_s = scene.crossing(n).enter_s - 0.1
    assert stop_s > 30
    events = run(motion(), scene_frames(scene, 0, round(stop_s * FPS)))
    assert types_of(events) == ["motion.start", "motion.end"] * n
    for k in range(n):
        c = scene.crossing(k)
        (t_start, start), (t_end, end) = events[2 * k], events[2 * k + 1]
        assert c.enter_s <= t_start <= c.enter_s + 0.6
        assert c.leave_s + 2.0 - 0.5 <= t_end <= c.leave_s + 2.0 + 0.6
        assert start.data["area"] >= 500
        assert start.data["boxes"]
        assert len(start.data["boxes"]) <= 10
        for x, y, w, h in start.data["boxes"]:
            assert x >= 0 and y >= 0 and w > 0 and h > 0
            assert x + w <= width and y + h <= height
        assert 0 < start.data["score"] < 1
        assert end.data["duration_s"] == pytest.approx(c.leave_s - c.enter_s, abs=0.6)
        assert end.data["max_area"] >= start.data["area"]
        assert end.data["frames"] >= 0.8 * (c.leave_s - c.enter_s) * FPS


def test_skipped_frames_give_the_same_episodes() -> None:
    # A slow worker sees every third frame only; times come from the frames,
    # so the episodes are the same.
    scene = SyntheticScene(640, 360, FPS, seed=1)
    stop = round((scene.crossing(4).enter_s - 0.1) * FPS)
    every = run(motion(), scene_frames(scene, 0, stop))
    third = run(motion(), scene_frames(scene, 0, stop, step=3))
    assert types_of(third) == types_of(every) == ["motion.start", "motion.end"] * 4
    for (t1, _), (t3, _) in zip(every, third, strict=True):
        assert t3 == pytest.approx(t1, abs=0.5)


def test_start_data_locates_the_object() -> None:
    background = SyntheticScene(640, 360, FPS).background
    with_square = background.copy()
    with_square[100:200, 200:300] = (0, 230, 255)
    proc = motion(start_frames=1)
    assert run(proc, still_frames(background, 0, 5)) == []
    ((_, start),) = run(proc, still_frames(with_square, 5, 6))
    assert start.type == "motion.start"
    (x, y, w, h) = start.data["boxes"][0]
    assert abs(x - 200) <= 10 and abs(y - 100) <= 10
    assert abs(w - 100) <= 20 and abs(h - 100) <= 20
    assert start.data["area"] == pytest.approx(100 * 100, rel=0.3)
    assert start.data["score"] == pytest.approx(100 * 100 / (640 * 360), rel=0.3)
    assert all(type(v) is int for v in (x, y, w, h, start.data["area"]))


# -- motion: things that are not motion -------------------------------------


def test_static_scene_gives_nothing() -> None:
    background = SyntheticScene(640, 360, FPS).background
    assert run(motion(start_frames=1), still_frames(background, 0, 300)) == []


@pytest.mark.parametrize("start_frames", [1, 2])
def test_one_frame_of_sensor_noise_gives_nothing(start_frames: int) -> None:
    background = SyntheticScene(640, 360, FPS).background
    rng = np.random.default_rng(9)
    noisy = np.clip(background + rng.normal(0, 8, background.shape), 0, 255).astype(np.uint8)
    proc = motion(start_frames=start_frames)
    frames = [*still_frames(background, 0, 30), *still_frames(noisy, 30, 31)]
    frames += still_frames(background, 31, 100)
    assert run(proc, iter(frames)) == []


def test_min_area_above_object_size_gives_nothing() -> None:
    scene = SyntheticScene(640, 360, FPS)
    biggest = max(c.size for c in scene.crossings(30.0))
    events = run(motion(min_area=4 * biggest * biggest), scene_frames(scene, 0, 30 * 15))
    assert events == []


def test_cooldown_suppresses_a_restart() -> None:
    background = SyntheticScene(640, 360, FPS).background

    def frames() -> Iterator[Frame]:
        # A square moving during 1-1.5 s, 2-2.5 s and 5-5.5 s.
        for i in range(round(7 * FPS)):
            t = i / FPS
            image = background.copy()
            if 1 <= t < 1.5 or 2 <= t < 2.5 or 5 <= t < 5.5:
                x = 20 * (i % 15)
                image[100:180, x : x + 80] = (235, 235, 235)
            yield make_frame(image, i)

    quick = run(motion(end_after=0.2), frames())
    assert types_of(quick) == ["motion.start", "motion.end"] * 3
    cooled = run(motion(end_after="200ms", cooldown="2s"), frames())
    assert types_of(cooled) == ["motion.start", "motion.end"] * 2
    # The second burst falls in the cooldown after the first end; the third does not.
    assert [round(t) for t, _ in cooled] == [1, 2, 5, 6]


def test_frame_size_change_resets_without_events() -> None:
    small = SyntheticScene(640, 360, FPS, seed=1).background
    big = SyntheticScene(1280, 720, FPS, seed=2)
    proc = motion(start_frames=1)
    assert run(proc, still_frames(small, 0, 45)) == []
    assert run(proc, still_frames(big.background, 45, 75)) == []
    assert run(proc, still_frames(small, 75, 90)) == []
    # Detection works at the new size, with boxes at its resolution. At 6 s
    # the view is empty: object 0 has left, object 1 is yet to enter.
    assert big.crossing(0).leave_s < 90 / FPS < big.crossing(1).enter_s
    stop = round((big.crossing(2).enter_s - 0.1) * FPS)
    events = run(proc, scene_frames(big, 90, stop))
    assert types_of(events) == ["motion.start", "motion.end"]
    x, y, w, h = events[0][1].data["boxes"][0]
    assert x + w <= 1280 and y + h <= 720


def test_frame_size_change_during_motion_ends_once() -> None:
    scene = SyntheticScene(640, 360, FPS)
    mid = round((scene.crossing(0).enter_s + 1.0) * FPS)
    proc = motion()
    assert types_of(run(proc, scene_frames(scene, 0, mid))) == ["motion.start"]
    other = SyntheticScene(800, 600, FPS, seed=3).background
    events = run(proc, still_frames(other, mid, mid + 60))
    assert types_of(events) == ["motion.end"]
    assert events[0][0] == pytest.approx(mid / FPS + 2.0, abs=0.2)


# -- motion: options --------------------------------------------------------


def test_options_defaults_and_durations() -> None:
    opts = MotionProcessor.Options()
    assert (opts.min_area, opts.threshold, opts.start_frames) == (500, 25, 2)
    assert (opts.end_after, opts.cooldown) == (2.0, 0.0)
    assert (opts.scale_width, opts.learning_rate) == (320, 0.05)
    parsed = MotionProcessor.Options.model_validate({"end_after": "500ms", "cooldown": "1m"})
    assert (parsed.end_after, parsed.cooldown) == (0.5, 60.0)
    for name, field in MotionProcessor.Options.model_fields.items():
        assert field.description, name
    assert resolve_processor("motion") is MotionProcessor


@pytest.mark.parametrize(
    "bad",
    [
        {"min_area": 0},
        {"min_area": -5},
        {"threshold": 0},
        {"threshold": 256},
        {"start_frames": 0},
        {"end_after": -1},
        {"end_after": "soon"},
        {"cooldown": -0.5},
        {"scale_width": 31},
        {"scale_width": 3841},
        {"learning_rate": 0},
        {"learning_rate": 1.5},
        {"sensitivity": 3},
    ],
)
def test_bad_options_are_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        MotionProcessor.Options.model_validate(bad)


# -- null -------------------------------------------------------------------


def test_null_processor_reports_nothing() -> None:
    assert resolve_processor("null") is NullProcessor
    assert NullProcessor.Options is NoOptions
    proc = NullProcessor(NoOptions(), "test")
    proc.setup()
    scene = SyntheticScene(320, 180, FPS)
    assert all(list(proc.process(f)) == [] for f in scene_frames(scene, 0, 60))
    proc.close()
    with pytest.raises(ValidationError):
        NoOptions.model_validate({"anything": 1})
