"""The restart and reconnect backoff shared by readers and the supervisor."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from edged.child import Backoff
from edged.config import camera_from_dict
from edged.frames import SlotOwner, SlotWriter
from edged.reader import Reader


def test_backoff_doubles_with_jitter_up_to_its_ceiling() -> None:
    b = Backoff(1.0, 30.0)
    delays = [b.next_delay() for _ in range(8)]
    for attempt, delay in enumerate(delays):
        base = min(30.0, 2.0**attempt)
        assert base / 2 <= delay <= base
    b.succeeded(ran_for=29.0)
    assert b.next_delay() >= 15.0  # not stable long enough: still backing off
    b.succeeded(ran_for=30.0)
    assert b.next_delay() <= 1.0


def test_backoff_survives_thousands_of_failures() -> None:
    # A camera that stays down for days, or a worker that cannot set up and is
    # retried every 30 s, fails thousands of times; 2.0**1024 would overflow.
    b = Backoff(1.0, 30.0)
    delays = [b.next_delay() for _ in range(5000)]
    assert all(15.0 <= d <= 30.0 for d in delays[10:])


@pytest.mark.slow
def test_frames_that_arrive_in_pairs_are_not_taken_for_repeats(caplog) -> None:
    # 25 fps in pairs 0.1 ms apart: the old 1/gap average read hundreds of
    # frames a second and warned "it may be repeating frames" after 5 s.
    cam = camera_from_dict("cam1", {"source": "plugins:PairedSource"})
    owner = SlotOwner("cam1")
    writer = SlotWriter(owner.name, owner.doorbell_w.fileno())
    stop = threading.Event()
    reader = Reader(cam, writer, stop)
    thread = threading.Thread(target=reader.run)
    caplog.set_level(logging.INFO, logger="edged.reader")
    thread.start()
    try:
        started = time.monotonic()
        fps = []
        while time.monotonic() - started < 6.0:  # past the old 5 s and the 4 s window
            stop.wait(0.2)
            fps.append(owner.reader["fps"])
        assert owner.reader["frames"] >= 6.0 * 25 * 0.8
    finally:
        stop.set()
        thread.join(timeout=5)
        writer.close()
        owner.close()
    assert "repeating frames" not in caplog.text
    assert max(fps[5:]) < 30, fps  # after the first second: the rate it delivers
    assert fps[-1] == pytest.approx(25, rel=0.1)
