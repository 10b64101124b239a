"""The reader's frame rate: frames counted over a window, not an average of 1/gap."""

from __future__ import annotations

import pytest

from edged.rate import FrameRate


def test_frames_in_bunches_count_at_their_average_rate() -> None:
    # 25 fps on average, in pairs 0.1 ms apart: an average of 1/gap read
    # hundreds of frames a second here (`edged status` showed 607 and 1431).
    rate = FrameRate(window=4.0)
    for i in range(250):
        t = (i // 2) * 0.08 + (i % 2) * 0.0001
        rate.add(t)
        if i >= 2:
            assert rate.fps < 40, (i, rate.fps)
    assert rate.fps == pytest.approx(25.0, rel=0.05)
    assert rate.full


def test_the_rate_follows_a_change_within_one_window() -> None:
    rate = FrameRate(window=4.0)
    t = 0.0
    for _ in range(200):  # 8 s at 25 fps
        t += 0.04
        rate.add(t)
    for _ in range(20):  # then 5 s at 4 fps
        t += 0.25
        rate.add(t)
    assert rate.fps == pytest.approx(4.0, rel=0.1)


def test_a_slow_or_new_stream() -> None:
    rate = FrameRate(window=4.0)
    assert rate.fps == 0.0 and not rate.full
    rate.add(10.0)
    assert rate.fps == 0.0
    rate.add(10.0)  # no time between them: no rate yet, not infinity
    assert rate.fps == 0.0
    rate.add(20.0)  # slower than one frame per window: its last gap still counts
    assert rate.fps == pytest.approx(1 / 10.0)
    assert rate.full
