"""Sources: grey frames for a ``pixel_format = "gray"`` processor, from the decoder or converted."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from components.rtsp import decode_timestamp

from edged.config import camera_from_dict
from edged.sources import OpenCVSource, open_source


def _ffmpeg(*args: str) -> None:
    ffmpeg = shutil.which("ffmpeg") or "ffmpeg"
    subprocess.run([ffmpeg, "-loglevel", "error", *args], check=True, timeout=60)


@pytest.fixture
def h264_clip(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    _ffmpeg(
        *("-f", "lavfi", "-i", "testsrc=duration=1:size=320x240:rate=25"),
        *("-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)),
    )
    return path


def _open(source: str | Path) -> OpenCVSource:
    src = open_source(camera_from_dict("cam1", {"source": str(source), "realtime": False}))
    assert isinstance(src, OpenCVSource)
    src.open()
    return src


def test_h264_grey_is_the_decoders_luma_plane_written_in_place(
    h264_clip: Path, tmp_path: Path
) -> None:
    raw = tmp_path / "clip.yuv"
    _ffmpeg("-i", str(h264_clip), "-f", "rawvideo", "-pix_fmt", "yuv420p", str(raw))
    planes = np.fromfile(raw, np.uint8).reshape(-1, 240 * 3 // 2, 320)
    src = _open(h264_clip)
    try:
        out = np.zeros((240, 320), np.uint8)
        for i in range(6):
            assert src.grab()
            grey = src.retrieve_gray(out)
            assert src._luma is True
            assert grey is out  # decoded straight into the caller's buffer (the slot)
            assert np.array_equal(grey, planes[i, :240]), f"frame {i} is not FFmpeg's Y plane"
    finally:
        src.close()


def test_a_format_without_a_luma_plane_is_converted(tmp_path: Path) -> None:
    path = tmp_path / "rgb.avi"
    _ffmpeg(
        *("-f", "lavfi", "-i", "testsrc=duration=1:size=320x240:rate=25"),
        *("-c:v", "rawvideo", "-pix_fmt", "bgr24", str(path)),
    )
    src = _open(path)
    try:
        assert src.grab()
        bgr = src.retrieve(None).copy()
        grey = src.retrieve_gray(np.zeros((240, 320), np.uint8))
        assert src._luma is False
        assert np.array_equal(grey, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    finally:
        src.close()


def test_a_luma_plane_of_the_wrong_shape_falls_back_to_conversion(
    h264_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenCV does not promise the raw plane for multi-planar formats: if a
    # build returned, say, the whole I420 buffer, grey must still be right.
    cap = cv2.VideoCapture(str(h264_clip), cv2.CAP_FFMPEG)
    ok, first = cap.read()
    cap.release()
    assert ok
    src = _open(h264_clip)
    real = src._retrieve_luma

    def whole_buffer(out: np.ndarray | None) -> np.ndarray:
        plane = real(None)
        return np.vstack([plane, plane[: plane.shape[0] // 2]])

    monkeypatch.setattr(src, "_retrieve_luma", whole_buffer)
    try:
        assert src.grab()
        grey = src.retrieve_gray(None)
        assert src._luma is False
        # The capture was reopened (OpenCV cannot switch back on an open one):
        # the file starts again, and this is its first frame, converted.
        assert np.array_equal(grey, cv2.cvtColor(first, cv2.COLOR_BGR2GRAY))
        assert src.grab()
        assert src.retrieve_gray(None).shape == (240, 320)
    finally:
        src.close()


def test_synthetic_grey_is_converted_from_bgr() -> None:
    src = open_source(
        camera_from_dict("cam1", {"source": "synthetic", "width": 320, "height": 180})
    )
    src.open()
    assert src.grab()
    bgr = src.retrieve(None).copy()
    grey = src.retrieve_gray(None)
    assert np.array_equal(grey, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))


@pytest.mark.slow
def test_rtsp_grey_carries_the_pixels(rtsp_server) -> None:
    src = _open(rtsp_server.url)
    try:
        assert src.grab()
        grey = src.retrieve_gray(None)
        assert src._luma is True and grey.shape == (360, 640)
        # The timestamp strip is luma 16 / 235 blocks: readable in the plane as it is.
        assert decode_timestamp(grey) is not None
    finally:
        src.close()


def test_grey_frames_print_no_opencv_warning_per_frame(h264_clip: Path) -> None:
    # OpenCV warns on every raw-plane frame; in a reader that would be 25
    # lines a second on fd 2, and "unsupported" reads as an unreadable stream.
    script = textwrap.dedent(
        f"""
        from edged.config import camera_from_dict
        from edged.sources import open_source
        cam = camera_from_dict("c", {{"source": {str(h264_clip)!r}, "realtime": False}})
        src = open_source(cam)
        src.open()
        for _ in range(10):
            assert src.grab()
            assert src.retrieve_gray(None).ndim == 2
        assert src._luma
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "unsupported" not in r.stderr, r.stderr
