"""The RTSP test server (tests/components) against OpenCV's FFmpeg backend.

The timestamp strip tests are plain numpy; the server tests are ``slow``.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from components.rtsp import (
    BLOCK,
    STRIP_HEIGHT,
    RtspServer,
    RtspServerError,
    decode_timestamp,
    decode_timestamp_us,
    draw_timestamp,
    open_capture,
    strip_height,
)

Factory = Callable[..., RtspServer]


# --------------------------------------------------------------------------------------
# Timestamp strip (no server)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [128, 320, 640, 1280, 1920])
def test_timestamp_strip_round_trip(width: int) -> None:
    luma = np.full((strip_height(width) + 16, width), 128, np.uint8)
    us = time.time_ns() // 1000
    draw_timestamp(luma, us)
    assert decode_timestamp_us(luma) == us
    bgr = np.repeat(luma[:, :, None], 3, axis=2)
    assert decode_timestamp(bgr) == pytest.approx(us / 1e6, abs=1e-6)
    # Below the strip nothing was touched.
    assert (luma[strip_height(width) :] == 128).all()


def test_strip_region_is_documented() -> None:
    assert strip_height(576) == strip_height(1920) == STRIP_HEIGHT == 2 * BLOCK


def test_timestamp_strip_survives_noise_and_rejects_garbage() -> None:
    rng = np.random.default_rng(1)
    luma = np.full((64, 640), 100, np.uint8)
    us = 1_700_000_000_123_456
    draw_timestamp(luma, us)
    noisy = np.clip(luma.astype(int) + rng.integers(-30, 31, luma.shape), 0, 255).astype(np.uint8)
    assert decode_timestamp_us(noisy) == us

    assert decode_timestamp(np.zeros((64, 640, 3), np.uint8)) is None  # black frame
    assert decode_timestamp(np.full((64, 640, 3), 255, np.uint8)) is None  # white frame
    assert decode_timestamp(np.full((64, 640), 128, np.uint8)) is None  # no strip
    assert decode_timestamp(rng.integers(0, 256, (64, 640), dtype=np.uint8)) is None
    flipped = luma.copy()
    flipped[:BLOCK, 5 * BLOCK : 6 * BLOCK] ^= 0xFF  # one wrong bit: CRC mismatch
    assert decode_timestamp(flipped) is None
    assert decode_timestamp(np.zeros((16, 640), np.uint8)) is None  # too short
    assert decode_timestamp(np.zeros((64, 64), np.uint8)) is None  # too narrow


# --------------------------------------------------------------------------------------
# Server (slow)
# --------------------------------------------------------------------------------------


def read_frames(
    cap: Any, count: int, server: RtspServer | None = None, timeout: float = 15.0
) -> list[np.ndarray]:
    """``count`` frames from an open capture, or fail after ``timeout`` seconds."""
    frames: list[np.ndarray] = []
    deadline = time.monotonic() + timeout
    while len(frames) < count:
        ok = time.monotonic() < deadline
        if ok:
            ok, frame = cap.read()  # bounded by the capture's read timeout
        if not ok:
            log = server.stderr_text() if server is not None else ""
            pytest.fail(f"got {len(frames)}/{count} frames; server stderr:\n{log}")
        frames.append(frame)
    return frames


def opened(url: str, server: RtspServer | None = None, **kwargs: Any) -> Any:
    cap = open_capture(url, **kwargs)
    if not cap.isOpened():
        cap.release()
        log = server.stderr_text() if server is not None else ""
        pytest.fail(f"cannot open {url}; server stderr:\n{log}")
    return cap


def check_live_stream(server: RtspServer, count: int) -> list[float]:
    """Reads ``count`` frames; checks size, fresh and increasing timestamps, pacing."""
    cap = opened(server.url, server)
    try:
        frames = read_frames(cap, count, server)
        read_at = time.time()
    finally:
        cap.release()
    assert all(f.shape == (server.height, server.width, 3) for f in frames)
    stamps = [decode_timestamp(f) for f in frames]
    assert None not in stamps, (
        f"unreadable strips at {[i for i, s in enumerate(stamps) if s is None]}"
    )
    ts = np.array(stamps, dtype=float)
    assert (np.diff(ts) > 0).all(), "timestamps must increase"
    # The last frame was read just now: it is fresh (OpenCV buffers ~1 s after open,
    # so the first frames can be older; they are drained by the time we get here).
    assert read_at - ts[-1] < 2.0
    assert (read_at - ts > -0.05).all(), "timestamps from the future"
    # Paced in real time: mean spacing is 1/fps.
    spacing = (ts[-1] - ts[0]) / (len(ts) - 1)
    assert spacing == pytest.approx(1 / server.fps, rel=0.1)
    return stamps  # type: ignore[return-value]


@pytest.mark.slow
def test_reads_fresh_frames(rtsp_server: RtspServer) -> None:
    assert rtsp_server.url == f"rtsp://127.0.0.1:{rtsp_server.port}/stream"
    check_live_stream(rtsp_server, 60)


@pytest.mark.slow
def test_reads_720p_at_other_fps(rtsp_server_factory: Factory) -> None:
    server = rtsp_server_factory(width=1280, height=720, fps=10)
    check_live_stream(server, 25)


@pytest.mark.slow
def test_listens_on_loopback_only(rtsp_server: RtspServer) -> None:
    with socket.create_connection(("127.0.0.1", rtsp_server.port), timeout=5):
        pass
    addr = _non_loopback_ipv4()
    if addr is None:
        return  # no other address on this machine to check against
    with pytest.raises(OSError), socket.create_connection((addr, rtsp_server.port), timeout=2):
        pass


def _non_loopback_ipv4() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: picks a route, sends nothing
        except OSError:
            return None
        addr = s.getsockname()[0]
    return None if addr.startswith("127.") else str(addr)


@pytest.mark.slow
def test_clients_share_one_pipeline(rtsp_server: RtspServer) -> None:
    first = opened(rtsp_server.url, rtsp_server)
    try:
        read_frames(first, 5, rtsp_server)
        second = opened(rtsp_server.url, rtsp_server)
        try:
            read_frames(second, 5, rtsp_server)
            read_frames(first, 5, rtsp_server)
        finally:
            second.release()
    finally:
        first.release()
    assert rtsp_server.stderr_text().count("media configured") == 1


@pytest.mark.slow
def test_solid_frames_are_uniform_below_the_strip(rtsp_server_factory: Factory) -> None:
    server = rtsp_server_factory(width=640, height=360, fps=25, pattern="solid")
    cap = opened(server.url, server)
    try:
        frames = read_frames(cap, 40, server)
    finally:
        cap.release()
    levels = []
    for frame in frames:
        body = frame[STRIP_HEIGHT:]
        assert int(body.max()) - int(body.min()) <= 6
        levels.append(float(body.mean()))
        assert decode_timestamp(frame) is not None
    # The level changes from frame to frame (it wraps once every 220 frames).
    assert sum(b != pytest.approx(a, abs=0.5) for a, b in itertools.pairwise(levels)) >= 30


@pytest.mark.slow
def test_restart_on_the_same_port(rtsp_server: RtspServer) -> None:
    port = rtsp_server.port
    old = opened(rtsp_server.url, rtsp_server)
    try:
        read_frames(old, 5, rtsp_server)
        before = time.time()
        rtsp_server.restart()
        assert rtsp_server.port == port and rtsp_server.running
        # The old session is gone: its reads stop delivering.
        deadline = time.monotonic() + 15
        while old.read()[0]:
            assert time.monotonic() < deadline, "old capture still reads after restart"
    finally:
        old.release()
    stamps = check_live_stream(rtsp_server, 30)
    assert stamps[0] > before


@pytest.mark.slow
def test_stop_is_clean_and_idempotent(rtsp_server_factory: Factory) -> None:
    server = rtsp_server_factory()
    pid = server.pid
    server.stop()
    assert not server.running and server.last_returncode == 0, server.last_stderr
    server.stop()
    assert pid is not None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


@pytest.mark.slow
def test_start_fails_with_server_stderr_when_port_is_taken(rtsp_server_factory: Factory) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(RtspServerError, match="cannot listen"):
            rtsp_server_factory(port=port)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["digest", "basic"])
def test_authentication(rtsp_server_factory: Factory, method: str) -> None:
    server = rtsp_server_factory(user="viewer", password="s3cret", auth_method=method)
    for url in (server.url, server.url_with_credentials(password="wrong")):
        cap = open_capture(url)
        try:
            assert not cap.isOpened(), url
        finally:
            cap.release()
    cap = opened(server.url_with_credentials(), server)
    try:
        (frame,) = read_frames(cap, 1, server)
    finally:
        cap.release()
    assert frame.shape == (360, 640, 3)
    assert decode_timestamp(frame) is not None
