"""Sources: grey frames from the decoder (PyAV) and the grey fallback for the others."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from components.rtsp import (
    STRIP_HEIGHT,
    STRIP_WIDTH,
    Y_BLACK,
    Y_WHITE,
    decode_timestamp,
    free_port,
)

from edged.config import camera_from_dict
from edged.errors import EXIT_END_OF_STREAM, ConfigError, SourceError
from edged.frames import SlotOwner, SlotWriter
from edged.nativelog import AUTH_FAILED, NOT_FOUND, NOT_PLAYABLE
from edged.reader import Reader
from edged.sources import OpenCVSource, PyAVSource, SyntheticSource, open_source


def _grey_source(source: str, **options: object) -> PyAVSource:
    src = open_source(
        camera_from_dict("cam1", {"source": source, "pixel_format": "gray", **options})
    )
    assert isinstance(src, PyAVSource)
    return src


def _open_error(src: PyAVSource) -> tuple[SourceError, float]:
    started = time.monotonic()
    with pytest.raises(SourceError) as info:
        src.open()
    src.close()
    return info.value, time.monotonic() - started


@pytest.fixture
def clip(make_clip):
    return make_clip(1)


def test_the_pixel_format_follows_the_processor_unless_snapshots_want_colour():
    def fmt(**options: object) -> str:
        return camera_from_dict("cam1", {"source": "synthetic", **options}).frame_format

    assert fmt() == "bgr"  # null takes any: BGR unless asked
    assert fmt(pixel_format="gray") == "gray"
    assert fmt(processor="motion") == "gray"
    assert fmt(processor="motion", snapshots={"enabled": True}) == "bgr"
    assert fmt(processor="motion", snapshots={"enabled": True}, pixel_format="gray") == "gray"
    assert fmt(processor="motion", pixel_format="bgr") == "bgr"  # its worker converts


def test_grey_for_a_processor_that_takes_bgr_is_a_config_error():
    options = {"source": "synthetic", "processor": "plugins:FlakyProcessor"}
    with pytest.raises(ConfigError) as info:
        camera_from_dict("cam1", {**options, "pixel_format": "gray"})
    assert "pixel_format: processor 'plugins:FlakyProcessor' takes BGR frames, not grey" in str(
        info.value
    )


def test_which_source_delivers_grey(clip: Path):
    def source(src: str, fmt: str) -> type:
        return type(open_source(camera_from_dict("c", {"source": src, "pixel_format": fmt})))

    assert source("rtsp://127.0.0.1:1/x", "gray") is PyAVSource
    assert source("http://127.0.0.1:1/x.m3u8", "gray") is PyAVSource
    assert source(str(clip), "gray") is PyAVSource
    assert source(str(clip), "bgr") is PyAVSource  # OpenCV's keeps the first size
    assert source("/dev/video0", "bgr") is OpenCVSource
    assert source("synthetic", "gray") is SyntheticSource  # converted from BGR


def test_a_bgr_source_converts_to_grey_into_the_callers_buffer():
    src = SyntheticSource(
        camera_from_dict("c", {"source": "synthetic", "width": 320, "height": 180})
    )
    src.open()
    assert src.grab()
    bgr = src.retrieve()
    out = np.zeros((180, 320), np.uint8)
    grey = src.retrieve_gray(out)
    assert grey is out
    assert np.array_equal(out, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    assert src.retrieve_gray(None).shape == (180, 320)  # no buffer: a new array


@pytest.mark.slow
def test_grey_frames_are_the_luma_plane_written_into_the_callers_buffer(rtsp_server_factory):
    server = rtsp_server_factory(width=1280, height=720)
    src = _grey_source(server.url)
    src.open()
    try:
        assert src.nominal_fps == 25
        assert src.grab()
        first = src.retrieve_gray(None)
        assert first.shape == (720, 1280) and first.dtype == np.uint8
        out = np.empty_like(first)
        for _ in range(5):
            assert src.grab()
            assert src.retrieve_gray(out) is out  # decoded frame -> slot: one pass, no array
        made = decode_timestamp(out)
        assert made is not None and 0 < time.time() - made < 1.0
        # The strip's blocks are luma 16 and 235 as the server encoded them; a
        # conversion through BGR would have stretched them to about 0 and 255.
        strip = out[:STRIP_HEIGHT, :STRIP_WIDTH].reshape(-1)
        assert abs(int(strip.min()) - Y_BLACK) <= 3 and abs(int(strip.max()) - Y_WHITE) <= 3
    finally:
        src.close()


@pytest.mark.slow
def test_wrong_password_names_the_cause_and_never_the_password(rtsp_server_factory):
    server = rtsp_server_factory(user="edged", password="right-Pa55word")
    src = _grey_source(server.url_with_credentials(password="wrong-Pa55word"))
    err, took = _open_error(src)
    assert err.cause == AUTH_FAILED
    assert "Pa55word" not in str(err)
    assert str(err).startswith(f"cannot open rtsp://edged:***@127.0.0.1:{server.port}/stream: ")
    assert "401" in str(err)
    # and the right one works
    src = _grey_source(server.url_with_credentials())
    src.open()
    try:
        assert src.grab()
    finally:
        src.close()


@pytest.mark.slow
@pytest.mark.slow
def test_ffmpeg_prints_its_errors_but_not_its_warnings(rtsp_server_factory):
    # In a reader, fd 2 is the scrubbed native-message pipe: FFmpeg's errors go
    # there for the cause and the hung-reader note; its warnings (one on every
    # RTSP open without probing) would only mislead.
    server = rtsp_server_factory(user="edged", password="right-Pa55word")
    urls = [server.url_with_credentials(), server.url_with_credentials(password="wrong")]
    code = textwrap.dedent(
        f"""
        from edged.config import camera_from_dict
        from edged.sources import open_source
        for url in {urls!r}:
            src = open_source(camera_from_dict("c", {{"source": url, "pixel_format": "gray"}}))
            try:
                src.open()
                print("grabbed", src.grab())
            except Exception as exc:
                print("error", type(exc).__name__)
            finally:
                src.close()
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["grabbed", "True", "error", "SourceError"], r.stderr
    assert "method DESCRIBE failed: 401" in r.stderr
    assert "estimate rate" not in r.stderr and "Pa55word" not in r.stderr


def test_open_failures_name_their_cause(rtsp_server):
    err, _ = _open_error(_grey_source(rtsp_server.url.replace("/stream", "/nope")))
    assert err.cause == NOT_FOUND
    err, _ = _open_error(_grey_source(f"rtsp://127.0.0.1:{free_port()}/x"))
    assert err.cause == "connection refused"


def test_a_silent_server_times_out_at_the_open_timeout():
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        err, took = _open_error(_grey_source(f"rtsp://127.0.0.1:{port}/x", open_timeout="1s"))
    assert err.cause == "timed out"
    assert 0.9 <= took < 5, took


@pytest.mark.slow
def test_a_stream_that_ends_or_stalls_is_lost_not_ended(rtsp_server):
    import os
    import signal

    src = _grey_source(rtsp_server.url, read_timeout="1s")
    src.open()
    try:
        assert src.grab()
        os.kill(rtsp_server.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(SourceError) as info:
                while src.grab():
                    pass
            assert info.value.cause == "timed out"
            assert time.monotonic() - started < 1 * 2 + 3  # FFmpeg's timeout may fire twice
        finally:
            os.kill(rtsp_server.pid, signal.SIGCONT)
    finally:
        src.close()
    src = _grey_source(rtsp_server.url)
    src.open()
    try:
        assert src.grab()
        rtsp_server.stop()
        with pytest.raises(SourceError, match=r"lost .*: the stream ended"):
            while src.grab():
                pass
    finally:
        src.close()


def test_a_file_plays_at_its_rate_then_ends_or_loops(clip: Path):
    src = _grey_source(str(clip), loop=False)
    src.open()
    started = time.monotonic()
    n = 0
    while src.grab():
        n += 1
        assert src.retrieve_gray(None).shape == (240, 320)
    took = time.monotonic() - started
    src.close()
    assert n == 25
    assert took >= 0.9  # 25 frames at 25 fps: real time, not as fast as it decodes

    src = _grey_source(str(clip), loop=True, realtime=False)
    src.open()
    try:
        assert all(src.grab() for _ in range(60))  # more than the clip has
    finally:
        src.close()


@pytest.mark.parametrize("suffix", [".ts", ".h264", ".mjpeg"])
@pytest.mark.parametrize("pixels", ["bgr", "gray"])
def test_a_file_that_cannot_seek_back_still_loops(make_clip, suffix: str, pixels: str):
    # MPEG-TS, raw H.264 and MJPEG: the seek to the start "succeeds" (or fails)
    # and the next frame does not come. The default loop = true must go on.
    clip = make_clip(1, suffix)
    src = open_source(
        camera_from_dict(
            "cam1", {"source": str(clip), "pixel_format": pixels, "loop": True, "realtime": False}
        )
    )
    src.open()
    try:
        assert all(src.grab() for _ in range(80))  # more than three times the clip
        frame = src.retrieve_gray(None) if pixels == "gray" else src.retrieve(None)
        assert frame.shape[:2] == (240, 320)
    finally:
        src.close()


def test_a_missing_or_unreadable_file_is_a_clear_error(tmp_path: Path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    err, _ = _open_error(_grey_source(str(bad)))
    assert str(err).startswith(f"cannot open {bad}: ")
    assert err.cause == NOT_PLAYABLE  # a file that is not a video: the file's fault


def test_a_clip_under_dev_is_a_file_and_a_missing_device_says_so(tmp_path: Path, make_clip):
    clip = make_clip(1)
    in_dev = Path("/dev/shm") / f"edged-test-{os.getpid()}.mp4"
    in_dev.write_bytes(clip.read_bytes())
    try:
        cam = camera_from_dict("cam1", {"source": str(in_dev), "realtime": False})
        assert cam.source_kind == "file"
        src = open_source(cam)
        src.open()
        assert src.grab()
        src.close()
    finally:
        in_dev.unlink()
    for dev, said in [("/dev/video99", "no such device"), ("/dev/null", "not a video device")]:
        src = open_source(camera_from_dict("cam1", {"source": dev}))
        with pytest.raises(SourceError, match=said):
            src.open()


@pytest.fixture(scope="module")
def growing_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MPEG-TS stream of 1 s at 640x360, then 1 s at 1280x720 (a camera
    switched to its main stream's resolution mid-stream)."""
    tmp_path = tmp_path_factory.mktemp("growing")
    parts = []
    for size in ("640x360", "1280x720"):
        part = tmp_path / f"{size}.ts"
        subprocess.run(
            [
                *("ffmpeg", "-loglevel", "error", "-f", "lavfi"),
                *("-i", f"testsrc=duration=1:size={size}:rate=25", "-pix_fmt", "yuv420p"),
                *("-c:v", "libx264", "-f", "mpegts", str(part)),
            ],
            check=True,
            timeout=60,
        )
        parts.append(part.read_bytes())
    clip = tmp_path / "growing.ts"
    clip.write_bytes(b"".join(parts))
    return clip


@pytest.mark.parametrize("pixels", ["bgr", "gray"])
def test_a_stream_that_changes_size_reaches_the_slot_at_its_new_size(
    growing_clip: Path, pixels: str, caplog
):
    # OpenCV scaled every frame to the first size for good: a colour camera
    # going 640x360 -> 1280x720 reached its processor at 640x360 forever.
    cam = camera_from_dict(
        "cam1",
        {
            **{"source": str(growing_clip), "pixel_format": pixels},
            **{"loop": False, "realtime": False, "freshness": "newest"},  # publish every frame
        },
    )
    owner = SlotOwner("cam1")
    writer = SlotWriter(owner.name, owner.doorbell_w.fileno())
    caplog.set_level(logging.INFO, logger="edged.reader")
    try:
        assert Reader(cam, writer, threading.Event()).run() == EXIT_END_OF_STREAM
        assert owner.reader["frames"] == 50
        assert (owner.reader["width"], owner.reader["height"]) == (1280, 720)
        assert owner.frame_shape is not None and owner.frame_shape[:2] == (720, 1280)
    finally:
        writer.close()
        owner.close()
    assert "camera cam1: frame size changed to 1280x720" in caplog.text
