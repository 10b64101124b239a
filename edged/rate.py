"""The frame rate a reader reports: frames counted over a time window.

An average of 1/gap lets one jittery pair dominate: two frames 0.1 ms apart
weigh as a 10,000 fps instant, so a 25 fps camera whose frames arrive in pairs
(a network burst, a busy VM) read as hundreds of frames a second and tripped
the "repeating frames" warning. Counting the frames inside the last few
seconds and dividing by the time they span is immune to how they bunch up.
"""

from __future__ import annotations

from collections import deque

WINDOW = 4.0  # seconds of frames the rate is counted over


class FrameRate:
    """Frames per second over the last ``window`` seconds, from their timestamps."""

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._times: deque[float] = deque()
        self._first: float | None = None

    def add(self, t: float) -> None:
        """Count a frame that arrived at monotonic time ``t``."""
        if self._first is None:
            self._first = t
        times = self._times
        times.append(t)
        # Two timestamps at least, however old: a camera slower than one frame
        # per window still has a rate (its last gap).
        while len(times) > 2 and times[0] < t - self.window:
            times.popleft()

    @property
    def span(self) -> float:
        """Seconds between the oldest and the newest frame counted."""
        times = self._times
        return times[-1] - times[0] if len(times) >= 2 else 0.0

    @property
    def fps(self) -> float:
        """Frames per second over the window; 0.0 before two frames with time between them."""
        span = self.span
        return (len(self._times) - 1) / span if span > 0 else 0.0

    @property
    def full(self) -> bool:
        """Whether frames have been counted for a whole window: a rate to act on, not
        the burst a stream often starts with."""
        return (
            bool(self._times)
            and self._first is not None
            and (self._times[-1] - self._first >= self.window)
        )
