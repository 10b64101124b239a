"""Shared processors: fairness between cameras, and what batching buys (issue 17).

Runs the real daemon (``edged run``) on synthetic 640x360 cameras at 25 fps
that all name one ``[processors.det]`` (``tests/plugins.py``'s
``BatchRecorder``) and reads its event file:

(a) fairness: 8 cameras, a processor that cannot keep up with all of them
    (10 ms a call, batch_size 1): each camera's p95 frame age when its
    processing started. Goal: every camera's p95 within one frame interval
    (40 ms) of the others'.
(b) throughput: 8 cameras, a model costing 40 ms a call plus 5 ms a frame, at
    batch_size 1, 4 and 8: frames processed per second over all cameras.

    .venv/bin/python bench/shared.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WARMUP = 3.0  # seconds of start-up left out of every measurement


def _config(n: int, options: str) -> str:
    out = [
        '[events]\npath = "events.jsonl"\n[daemon]\nstate_dir = "state"\n',
        "[metrics]\nenabled = false\n",
        f'[processors.det]\ntype = "plugins:BatchRecorder"\n{options}\n',
    ]
    for i in range(n):
        out.append(
            f'[cameras.cam{i}]\nsource = "synthetic"\nfps = 25\nwidth = 640\nheight = 360\n'
            'processor = "det"\nfreshness = "newest"\n'
        )
    return "\n".join(out)


def _frame_times(path: Path) -> list[float]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    events = [json.loads(x) for x in lines if x.endswith("}")]
    return [datetime.fromisoformat(e["time"]).timestamp() for e in events]


def run(n: int, options: str, seconds: float) -> list[dict]:
    """Run the daemon until its events span WARMUP + ``seconds`` of frame time; the
    events of the measured part, ``seconds`` long, after the first WARMUP seconds.

    The window is in the events' own frame time, from the first event: a start-up
    slowed by a loaded machine shifts it, never shortens it."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "edged.toml").write_text(_config(n, options))
        env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
        cmd = [sys.executable, "-m", "edged", "run", "--config", "edged.toml"]
        proc = subprocess.Popen(cmd, cwd=folder, env=env, stderr=subprocess.DEVNULL)
        path = folder / "events.jsonl"
        deadline = time.monotonic() + 120 + WARMUP + seconds
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                times = _frame_times(path)
                if times and max(times) >= min(times) + WARMUP + seconds:
                    break
                time.sleep(0.2)  # polling the file, with a deadline
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        events = [json.loads(line) for line in path.read_text().splitlines()]
    if not events:
        return []
    times = [datetime.fromisoformat(e["time"]).timestamp() for e in events]
    start = min(times) + WARMUP
    return [e for e, t in zip(events, times, strict=True) if start <= t < start + seconds]


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else float("nan")


def fairness(seconds: float) -> None:
    events = run(8, "per_call = 0.01", seconds)
    print("(a) fairness: 8 cameras at 25 fps, one shared processor (10 ms a call, batch 1)")
    print(f"    {'camera':8} {'frames/s':>9} {'p50 age ms':>11} {'p95 age ms':>11}")
    p95s = []
    for cam in sorted({e["camera"] for e in events}):
        ages = [e["frame_age_ms"] for e in events if e["camera"] == cam]
        p95s.append(p95(ages))
        rate, median = len(ages) / seconds, statistics.median(ages)
        print(f"    {cam:8} {rate:9.1f} {median:11.1f} {p95s[-1]:11.1f}")
    spread = max(p95s) - min(p95s)
    verdict = "met" if spread <= 40 else "NOT met"
    print(f"    p95 spread between cameras: {spread:.1f} ms (goal <= 40 ms: {verdict})")


def throughput(seconds: float) -> None:
    print("(b) throughput: 8 cameras at 25 fps, a model of 40 ms a call + 5 ms a frame")
    print(f"    {'batch_size':>10} {'frames/s':>9} {'vs 1':>6} {'mean batch':>11}")
    base = 0.0
    for size in (1, 4, 8):
        options = f"per_call = 0.04\nper_frame = 0.005\nbatch_size = {size}\nbatch_wait = '10ms'"
        events = run(8, options, seconds)
        rate = len(events) / seconds
        base = base or rate
        mean = statistics.fmean(e["data"]["size"] for e in events) if events else 0.0
        print(f"    {size:>10} {rate:9.1f} {rate / base:5.1f}x {mean:11.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured per run")
    args = parser.parse_args()
    fairness(args.seconds)
    throughput(args.seconds)


if __name__ == "__main__":
    main()
