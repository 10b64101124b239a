"""LatestFrameCapture: the reader as a cv2.VideoCapture-style library object."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from components.rtsp import decode_timestamp
from daemon import wait_for

from edged import LatestFrameCapture


def _my_segments() -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"edged_{os.getpid()}_")]


def test_synthetic_read_iterate_and_release():
    with LatestFrameCapture("synthetic", width=320, height=180, fps=30) as cap:
        assert cap.isOpened()
        ok, image = cap.read()
        assert ok and image.shape == (180, 320, 3) and image.dtype == np.uint8
        seqs = []
        for n, _image in enumerate(cap):
            seqs.append(cap._last_seq)
            if n == 5:
                break
        assert seqs == sorted(set(seqs))
        assert cap.stats["frames"] >= 6
        assert _my_segments()
    assert not cap.isOpened()
    assert cap.read() == (False, None)
    assert _my_segments() == []
    cap.release()  # twice is fine


def test_the_first_read_after_a_slow_start_is_a_new_frame():
    # Opened, then a model takes a while to load: the frame the reader
    # published at once is old by then; read() must not return it.
    with LatestFrameCapture("synthetic", width=320, height=180, fps=5) as cap:
        wait_for("the first frame", lambda: cap._slot.latest_seq > 0, timeout=15)
        published = cap._slot.latest_seq
        time.sleep(1.0)  # the slow start itself, not a wait for anything
        frame = cap.read_frame()
        assert frame is not None
        age = time.monotonic() - frame.monotonic
        assert frame.seq > published, f"the frame published {age:.1f} s ago"
        assert age < 0.5, age  # one interval is 0.2 s


def test_copy_false_returns_a_read_only_view():
    with LatestFrameCapture("synthetic", width=320, height=180, copy=False) as cap:
        ok, image = cap.read()
        assert ok and not image.flags.writeable


def test_bad_options_are_reported_like_config_errors():
    from edged.errors import ConfigError

    with pytest.raises(ConfigError, match="decoder_threads"):
        LatestFrameCapture("synthetic", decoder_threads=99)


@pytest.mark.slow
def test_rtsp_slow_consumer_gets_the_newest_frame(rtsp_server):
    with LatestFrameCapture(rtsp_server.url) as cap:
        first = cap.read_frame(timeout=15)
        assert first is not None and first.image.shape == (360, 640, 3)
        jumps, ages = [], []
        last = first.seq
        for _ in range(8):
            time.sleep(0.3)  # a slow algorithm
            frame = cap.read_frame()
            assert frame is not None
            jumps.append(frame.seq - last)
            last = frame.seq
            made = decode_timestamp(frame.image)
            if made is not None:
                ages.append(time.time() - made)
        # 25 fps: about 7 frames arrive per 300 ms; we get the newest, not the next
        assert sum(jumps) / len(jumps) > 4, jumps
        assert ages and max(ages) < 1.0, ages


@pytest.mark.slow
def test_rtsp_grey_frames_are_fresh_luma(rtsp_server):
    with LatestFrameCapture(rtsp_server.url, gray=True) as cap:
        for _ in range(3):
            frame = cap.read_frame(timeout=15)
            assert frame is not None and frame.image.shape == (360, 640)
            made = decode_timestamp(frame.image)
            assert made is not None and 0 < time.time() - made < 1.0


@pytest.mark.slow
def test_rtsp_reconnects_after_the_server_restarts(rtsp_server):
    with LatestFrameCapture(rtsp_server.url, restart_delay="0.2s", read_timeout="2s") as cap:
        assert cap.read(timeout=15)[0]
        rtsp_server.stop()
        rtsp_server.start()
        opens = cap.stats["opens"]
        wait_for("a reconnect", lambda: cap.stats["opens"] > opens, timeout=20)
        assert cap.read(timeout=10)[0]


@pytest.fixture
def clip(make_clip):
    return make_clip(2)


@pytest.mark.slow
def test_file_plays_at_native_rate_and_ends(clip):
    start = time.monotonic()
    with LatestFrameCapture(clip, loop=False) as cap:
        n = sum(1 for _ in cap)
        assert cap.ended
    took = time.monotonic() - start
    assert 40 <= n <= 50
    assert took >= 1.8  # 50 frames at 25 fps: played in real time, not as fast as possible


@pytest.mark.slow
def test_file_loops(clip):
    with LatestFrameCapture(clip, loop=True) as cap:
        wait_for("more frames than the clip has", lambda: cap.stats["frames"] > 60, timeout=10)
        assert not cap.ended


def test_scripts_need_no_main_guard(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            from edged import LatestFrameCapture
            cap = LatestFrameCapture("synthetic", width=64, height=48)
            ok, image = cap.read()
            print("got", ok, image.shape)
            cap.release()
            """
        )
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "got True (48, 64, 3)"
