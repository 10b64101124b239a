"""A camera that comes back is streaming again within seconds, not after the backoff (issue 23).

Against the real RTSP test server: a reader whose backoff is long (tens of
seconds) probes the camera's port while it is away and opens the stream as
soon as the port accepts; a server that takes connections before it can serve
media (404 or no answer at all) is asked again soon, not after open_timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from components.rtsp import RtspServer
from daemon import wait_for

from edged.config import camera_from_dict
from edged.frames import SlotOwner, SlotWriter
from edged.reader import Reader

pytestmark = pytest.mark.slow

# The backoff a camera would wait before its next full open: far longer than
# the few seconds the tests allow for its return.
SLOW = {"restart_delay": "20s", "restart_max_delay": "60s", "open_timeout": "30s"}


class RunningReader:
    """A reader in a thread of the test process, writing into a real slot."""

    def __init__(self, url: str, **options: Any) -> None:
        cam = camera_from_dict("cam1", {"source": url, **SLOW, **options})
        self.owner = SlotOwner("cam1")
        self.writer = SlotWriter(self.owner.name, self.owner.doorbell_w.fileno())
        self.stop = threading.Event()
        self.reader = Reader(cam, self.writer, self.stop)
        self.thread = threading.Thread(target=self.reader.run, daemon=True)
        self.thread.start()

    def __getitem__(self, field: str) -> float:
        return self.owner.reader[field]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=40)
        self.writer.close()
        self.owner.close()

    def frames_after(self, what: str, timeout: float) -> float:
        """Wait for a frame newer than now; the seconds it took."""
        since = time.monotonic()
        frames = self["frames"]
        wait_for(what, lambda: self["frames"] > frames, timeout=timeout)
        return time.monotonic() - since

    def wait_away(self, failures: float) -> None:
        """Until the reader has lost the stream (more than ``failures`` failures)
        and probed the closed port twice."""
        wait_for("the stream lost", lambda: self["open_failures"] > failures, timeout=15)
        probes = self["probes"]
        wait_for("two probes of the closed port", lambda: self["probes"] >= probes + 2, timeout=5)


@pytest.fixture
def running() -> Iterator[Callable[..., RunningReader]]:
    readers: list[RunningReader] = []

    def start(url: str, **options: Any) -> RunningReader:
        readers.append(RunningReader(url, **options))
        return readers[-1]

    yield start
    for r in readers:
        r.close()


def test_a_camera_back_after_a_long_outage_streams_within_seconds(rtsp_server, running) -> None:
    r = running(rtsp_server.url)
    r.frames_after("the first frame", timeout=15)
    failures = r["open_failures"]
    rtsp_server.stop()
    r.wait_away(failures)
    # The state says why, and that the camera is watched.
    assert r.owner.reader_reason == "connection refused; probing every 0.5s"
    failures = r["open_failures"]
    rtsp_server.start()
    # Its next full open was due 10-20 s after the loss (restart_delay 20 s).
    took = r.frames_after("a frame after the camera came back", timeout=8)
    assert took < 3.0
    # While the port was closed the probes stood in for full opens.
    assert r["open_failures"] == failures
    assert r.owner.reader_reason == ""


@pytest.mark.parametrize("mode", ["notfound", "silent"])
def test_a_camera_that_accepts_before_it_serves_streams_soon_after(
    rtsp_server_factory, running, mode
) -> None:
    # For 2 s after each start the server takes connections and answers 404
    # ("notfound"), or holds them unanswered ("silent"), like a camera booting.
    server: RtspServer = rtsp_server_factory(start_delay=2.0, start_mode=mode)
    server.wait_media()
    r = running(server.url)
    r.frames_after("the first frame", timeout=15)
    failures = r["open_failures"]
    server.stop()
    r.wait_away(failures)
    server.start()  # accepting, not serving yet
    frames = r["frames"]
    media = server.wait_media()
    wait_for("a frame once media is served", lambda: r["frames"] > frames, timeout=10)
    # Not after open_timeout (30 s) nor after the slow retry of a 404 (30-60 s).
    assert time.monotonic() - media < 4.0
