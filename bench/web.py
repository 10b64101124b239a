"""What the web page costs: a picture's encode time, and the daemon's CPU with a viewer.

    .venv/bin/python bench/web.py [--seconds 10] [--viewer-fps 5]

(a) per request: copying a frame out and encoding it as a JPEG
    (``edged.web.pictures.Pictures``, quality 80), at 640x360, 1280x720 and
    1920x1080, full size and scaled to 480 pixels wide (a card);
(b) the daemon: ``edged run`` with one synthetic 1280x720 15 fps camera and the
    ``motion`` processor, CPU of the supervisor and of the whole process tree
    over ``--seconds``, with nobody looking, then with one viewer fetching the
    picture and the overlay ``--viewer-fps`` times a second (what an open
    camera page does at ``[web] max_fps``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))

from components.rtsp import free_port  # noqa: E402

from edged.synthetic import SyntheticScene  # noqa: E402
from edged.web.pictures import Pictures  # noqa: E402


def encode_times(repeats: int = 60) -> None:
    print("(a) one picture: copy out + scale + JPEG encode (quality 80), median of", repeats)
    print(f"    {'frame':>10} {'full size ms':>13} {'KiB':>6} {'480 wide ms':>12} {'KiB':>6}")
    for w, h in ((640, 360), (1280, 720), (1920, 1080)):
        frame = _frame(w, h)
        pictures = Pictures(lambda _name, f=frame: (f.copy(), 1, time.time()), 1000.0, 80)
        row = []
        for width in (0, 480):
            times, size = [], 0
            for _ in range(repeats):
                pictures.forget("c")
                picture = pictures.get("c", width)
                assert picture is not None
                times.append(picture.encode_s * 1000)
                size = len(picture.jpeg)
            row += [statistics.median(times), size / 1024]
        print(f"    {f'{w}x{h}':>10} {row[0]:13.2f} {row[1]:6.0f} {row[2]:12.2f} {row[3]:6.0f}")


def _frame(w: int, h: int) -> np.ndarray:
    """The demo camera's picture (sensor noise included: JPEG pays for it)."""
    return SyntheticScene(w, h, 15.0).render(40)


def _tree_cpu(pid: int) -> tuple[float, float]:
    root = psutil.Process(pid)
    own = sum(root.cpu_times()[:2])
    total = own
    for child in root.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # gone meanwhile
            total += sum(child.cpu_times()[:2])
    return own, total


def daemon_cpu(seconds: float, viewer_fps: float) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "edged.toml").write_text(
            f'[events]\npath = "events.jsonl"\n[daemon]\nstate_dir = "state"\n'
            f'[metrics]\nlisten = "127.0.0.1:{port}"\n[logging]\nlevel = "warning"\n'
            '[cameras.demo]\nsource = "synthetic"\nwidth = 1280\nheight = 720\nfps = 15\n'
            'processor = "motion"\n'
        )
        cmd = [sys.executable, "-m", "edged", "run", "--config", "edged.toml"]
        proc = subprocess.Popen(cmd, cwd=folder, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}/cameras/demo"
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(base + "/frame.jpg", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                time.sleep(0.2)  # polling for the first picture, with a deadline
            what = "one 1280x720 15 fps synthetic camera, motion"
            print(f"(b) edged run, {what}, {seconds:.0f} s each")
            print(f"    {'viewer':>22} {'supervisor % core':>18} {'whole tree % core':>18}")
            for label, fps in (("nobody looking", 0.0), (f"one at {viewer_fps:g} fps", viewer_fps)):
                s0, t0, w0 = *_tree_cpu(proc.pid), time.monotonic()
                end = w0 + seconds
                while time.monotonic() < end:
                    if fps:
                        for path in ("/frame.jpg", "/overlay.json"):
                            with urllib.request.urlopen(base + path, timeout=5) as r:
                                r.read()
                    time.sleep(1 / fps if fps else 0.5)
                s1, t1 = _tree_cpu(proc.pid)
                span = time.monotonic() - w0
                own, tree = 100 * (s1 - s0) / span, 100 * (t1 - t0) / span
                print(f"    {label:>22} {own:18.1f} {tree:18.1f}")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--viewer-fps", type=float, default=5.0)
    args = parser.parse_args()
    now = dt.datetime.now(dt.UTC)
    print(f"edged web bench, {now:%Y-%m-%d %H:%M} UTC, load average {os.getloadavg()[0]:.2f}")
    encode_times()
    daemon_cpu(args.seconds, args.viewer_fps)


if __name__ == "__main__":
    main()
