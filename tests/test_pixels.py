"""Grey frames: a processor that needs no colour gets the luma plane, unconverted."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from daemon import start_daemon, wait_for

from edged import LatestFrameCapture
from edged.config import parse_config
from edged.errors import ConfigError

_CAMERAS = """
[cameras.motion]
source = "synthetic"
processor = "motion"
[cameras.plugin]
source = "synthetic"
processor = "plugins:SlowProcessor"
[cameras.forced]
source = "synthetic"
pixels = "bgr"
processor = "motion"
[cameras.inherited]
source = "synthetic"
processor = "plugins:SlowProcessor"
[cameras.snapshots]
source = "synthetic"
processor = "motion"
snapshots = { enabled = true }
"""


def test_auto_takes_what_the_processor_declares_and_a_camera_may_override(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cfg = parse_config(_CAMERAS, "edged.toml")
    got = {name: cam.pixels for name, cam in cfg.cameras.items()}
    # motion declares gray; a plugin that declares nothing gets BGR
    # snapshots are for people: colour, unless the camera asks for grey
    assert got == {
        "motion": "gray",
        "plugin": "bgr",
        "forced": "bgr",
        "inherited": "bgr",
        "snapshots": "bgr",
    }
    cfg = parse_config('[defaults]\npixels = "gray"\n' + _CAMERAS, "edged.toml")
    assert cfg.cameras["inherited"].pixels == "gray"
    assert cfg.cameras["forced"].pixels == "bgr"


def test_a_bad_pixels_value_names_the_key(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        parse_config('[cameras.cam1]\nsource = "synthetic"\npixels = "rgb"\n', "edged.toml")
    text = "\n".join(info.value.problems)
    assert text == "edged.toml:3: cameras.cam1.pixels: Input should be 'auto', 'bgr' or 'gray'"


def _clip(path: Path, size: str, pix_fmt: str) -> Path:
    subprocess.run(
        [
            *(shutil.which("ffmpeg") or "ffmpeg", "-loglevel", "error", "-f", "lavfi"),
            *("-i", f"testsrc2=duration=1:size={size}:rate=25", "-c:v", "libx264"),
            *("-pix_fmt", pix_fmt, str(path)),
        ],
        check=True,
        timeout=60,
    )
    return path


def _first(source: Path, **options: object) -> np.ndarray:
    with LatestFrameCapture(source, loop=False, log_level="debug", **options) as cap:
        ok, image = cap.read(timeout=15)
        assert ok
        return image


@pytest.mark.parametrize(
    ("pix_fmt", "converted"),
    [("yuv420p", False), ("yuv444p", False), ("yuv420p10le", True)],
)
def test_gray_frames_are_the_luma_of_the_colour_frames(tmp_path, capfd, pix_fmt, converted):
    # an odd size: rows of the decoded plane are padded, the frame must not be
    clip = _clip(tmp_path / f"{pix_fmt}.mp4", "318x238", pix_fmt)
    bgr = _first(clip)
    gray = _first(clip, pixels="gray")
    assert bgr.shape == (238, 318, 3)
    assert gray.shape == (238, 318) and gray.dtype == np.uint8
    # The luma plane is the BT.601 grey of the colour frame, in video range
    # (16-235) for these clips: close to OpenCV's full-range grey, not equal.
    diff = np.abs(gray.astype(int) - cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(int))
    assert diff.mean() < 12, diff.mean()
    assert np.corrcoef(gray.ravel(), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).ravel())[0, 1] > 0.98
    err = capfd.readouterr().err
    # OpenCV's per-frame "unsupported picture format" warning is kept out
    assert "unsupported picture format" not in err.lower()
    assert ("converted from BGR" in err) == converted, err


def test_gray_from_synthetic_and_plugin_sources(tmp_path):
    image = _first(Path("synthetic"), pixels="gray")
    assert image.shape == (360, 640)
    # SolidSource's own retrieve() gives BGR: the reader converts it
    with LatestFrameCapture("plugins:SolidSource", pixels="gray") as cap:
        ok, image = cap.read(timeout=15)
        assert ok and image.shape == (480, 640)
        assert len(np.unique(image)) == 1  # still one uniform value


@pytest.mark.slow
def test_daemon_hands_gray_and_colour_frames_over_rtsp(tmp_path, daemons, rtsp_server):
    cams = []
    for name, pixels in (("grey", "gray"), ("colour", "bgr")):
        cams.append(
            textwrap.dedent(f"""
            [cameras.{name}]
            source = "{rtsp_server.url}"
            pixels = "{pixels}"
            [cameras.{name}.processor]
            type = "plugins:SlowProcessor"
            delay = 0.05
            timestamps = true
            """)
        )
    toml = (
        '[events]\npath = "events.jsonl"\n[daemon]\nstate_dir = "state"\n'
        '[logging]\nlevel = "debug"\n' + "".join(cams)
    )
    d = start_daemon(daemons, tmp_path, toml)
    wait_for(
        "10 frames from each camera",
        lambda: all(
            sum(e["camera"] == cam for e in d.events("frame")) >= 10 for cam in ("grey", "colour")
        ),
        timeout=30,
    )
    events = d.events("frame")
    shapes = {e["camera"]: e["data"]["shape"] for e in events}
    assert shapes == {"grey": [360, 640], "colour": [360, 640, 3]}
    # the test server's timestamp strip reads the same from the luma plane
    ages = [e["data"]["true_age_ms"] for e in events if e["camera"] == "grey"]
    assert ages and all(a is not None and a < 1000 for a in ages), ages
    assert d.stop() == 0
    assert "unsupported picture format" not in d.log.lower()
