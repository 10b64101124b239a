"""The restart and reconnect backoff shared by readers and the supervisor."""

from __future__ import annotations

from edged.reader import Backoff


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
