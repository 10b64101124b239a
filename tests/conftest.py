"""Shared pytest fixtures.

``tests/`` has no ``__init__.py``: with pytest's default (prepend) import mode this
directory is put on ``sys.path``, so test modules import helpers as
``from components.rtsp import RtspServer``.

Keep fixtures grouped by component, one section each.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from components.rtsp import RtspServer, check_gstreamer

# ======================================================================================
# RTSP test server (tests/components/rtsp.py, tests/components/rtsp_server.py)
# ======================================================================================


@functools.cache
def _gstreamer_problem() -> str | None:
    return check_gstreamer()


def require_gstreamer() -> None:
    """Fail (never skip) when Debian's GStreamer RTSP server cannot run."""
    problem = _gstreamer_problem()
    if problem is not None:
        pytest.fail(problem, pytrace=False)


@pytest.fixture
def rtsp_server_factory() -> Iterator[Callable[..., RtspServer]]:
    """``make(width=640, height=360, fps=25, pattern="moving", user=None, password=None,
    auth_method="digest", path="/stream", port=None)`` -> a started RtspServer.

    Every server it made is stopped at teardown (also ones a test restarted).
    """
    require_gstreamer()
    started: list[RtspServer] = []

    def make(**kwargs: Any) -> RtspServer:
        server = RtspServer(**kwargs)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def rtsp_server(rtsp_server_factory: Callable[..., RtspServer]) -> RtspServer:
    """A running 640x360@25 ``moving`` stream at ``rtsp_server.url``."""
    return rtsp_server_factory(width=640, height=360, fps=25, pattern="moving")


# ======================================================================================
# MQTT broker (tests/components/mqtt.py)
# ======================================================================================


def require_mosquitto() -> None:
    """Fail (never skip) when the Mosquitto broker is not installed."""
    from components.mqtt import check_mosquitto

    problem = check_mosquitto()
    if problem is not None:
        pytest.fail(problem, pytrace=False)


@pytest.fixture
def mosquitto_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    """``make(users=None, tls=None, port=None)`` -> a started ``Mosquitto`` in a folder of
    its own (``users``: {name: password} turns anonymous access off). Every broker it
    made is stopped at teardown, also ones a test stopped and started again."""
    from components.mqtt import Mosquitto

    require_mosquitto()
    made: list[Mosquitto] = []

    def make(**kwargs: Any) -> Mosquitto:
        broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"), **kwargs)
        made.append(broker)
        return broker.start()

    yield make
    for broker in made:
        broker.stop()


@pytest.fixture
def mosquitto(mosquitto_factory: Callable[..., Any]) -> Any:
    """A running anonymous broker on 127.0.0.1 at ``mosquitto.port``, with persistence."""
    return mosquitto_factory()


# ======================================================================================
# Things tests start and this file stops: daemons, MQTT sinks, MQTT subscribers
# ======================================================================================


@pytest.fixture
def daemons() -> Iterator[list[Any]]:
    """Daemons a test started (``daemon.start_daemon(daemons, ...)``); killed at teardown."""
    started: list[Any] = []
    yield started
    for d in started:
        d.kill()


@pytest.fixture
def sinks() -> Iterator[list[Any]]:
    """MqttSinks a test made; stopped at teardown."""
    made: list[Any] = []
    yield made
    for sink in made:
        sink.stop()


@pytest.fixture
def subscribers() -> Iterator[list[Any]]:
    """MQTT Subscribers a test made; closed at teardown."""
    made: list[Any] = []
    yield made
    for sub in made:
        sub.close()


# ======================================================================================
# Video files (FFmpeg's test pattern)
# ======================================================================================


@pytest.fixture
def make_clip(tmp_path: Path) -> Callable[..., Path]:
    """``make_clip(seconds, suffix=".mp4")`` -> a clip of FFmpeg's test pattern,
    320x240 @ 25 fps, in the container (and codec) FFmpeg picks for ``suffix``:
    H.264 in MP4 by default; ".ts", ".h264" (raw), ".mjpeg" for the others."""

    def make(seconds: float, suffix: str = ".mp4") -> Path:
        path = tmp_path / f"clip-{seconds:g}s{suffix}"
        pattern = f"testsrc=duration={seconds:g}:size=320x240:rate=25"
        subprocess.run(
            [
                *(shutil.which("ffmpeg") or "ffmpeg", "-loglevel", "error", "-f", "lavfi"),
                *("-i", pattern, "-pix_fmt", "yuv420p", str(path)),
            ],
            check=True,
            timeout=60,
        )
        return path

    return make
