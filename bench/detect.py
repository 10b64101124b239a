"""The detect processor: runtime choice, inference per frame and per batch, events per object.

(a) runtime: ONNX Runtime against OpenCV's DNN module on a YOLO-sized graph
    (bench/yolo_graph.py: 640x640 in, [1, 84, 8400] out, ~2.6 GFLOPs), each in
    a fresh process: start-up (import, load, first inference), latency per
    frame (p50 of --runs), memory the process grew by.
(b) batches: ONNX Runtime on the same graph with a dynamic batch: ms per call
    and per frame at batch 1, 2, 4, 8; and the whole detect step for one 720p
    frame (letterbox, model, decode, NMS, tracker) against the model alone.
(c) events per object: the square detector of tests/detect_models.py and the
    real tracker over simulated crossings at 20 fps: frames with a detection
    (what a per-frame detector would report) against object.* events.

    .venv/bin/python bench/detect.py [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]

from yolo_graph import yolo_graph  # noqa: E402

_PROBE = r"""
import json, sys, time
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
which, path, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
import numpy as np, cv2  # edged's children have both already (the fork server preloads them)
before = rss()
x = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
t0 = time.perf_counter()
if which == "onnxruntime":
    import onnxruntime
    o = onnxruntime.SessionOptions()  # as edged sets it up (processor.load_session)
    o.inter_op_num_threads = 1
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    s = onnxruntime.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    run = lambda: s.run(None, {"images": x})[0]
else:
    net = cv2.dnn.readNetFromONNX(path)
    def run():
        net.setInput(x)
        return net.forward()
run()
start = time.perf_counter() - t0
times = []
for _ in range(runs):
    t = time.perf_counter(); run(); times.append(time.perf_counter() - t)
print(json.dumps({"start": start, "p50": sorted(times)[len(times) // 2], "rss": rss() - before}))
"""


def runtimes(model: Path, runs: int) -> None:
    print("(a) runtime: YOLO-sized graph, 640x640, batch 1, each in a fresh process")
    print(f"    {'runtime':14} {'start-up ms':>12} {'p50 ms/frame':>13} {'memory MiB':>11}")
    got: dict[str, list[dict[str, float]]] = {"onnxruntime": [], "opencv-dnn": []}
    for _ in range(2):  # interleaved: the VM's load moves both alike
        for which in got:
            cmd = [sys.executable, "-c", _PROBE, which, str(model), str(runs)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600)
            got[which].append(json.loads(out.stdout))
    p50 = {}
    for which, rows in got.items():
        start = statistics.median(r["start"] for r in rows) * 1000
        p50[which] = statistics.median(r["p50"] for r in rows) * 1000
        rss = statistics.median(r["rss"] for r in rows)
        print(f"    {which:14} {start:12.0f} {p50[which]:13.1f} {rss:11.0f}")
    print(f"    OpenCV DNN / ONNX Runtime per frame: {p50['opencv-dnn'] / p50['onnxruntime']:.2f}x")


def batches(model: Path, runs: int) -> None:
    import onnxruntime

    from edged.processors.detect.options import DetectOptions
    from edged.processors.detect.processor import DetectProcessor

    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    print("(b) ONNX Runtime, batches of the same graph (dynamic batch)")
    print(f"    {'batch':>5} {'ms/call':>8} {'ms/frame':>9}")
    rng = np.random.default_rng(0)
    for size in (1, 2, 4, 8):
        x = rng.random((size, 3, 640, 640), dtype=np.float32)
        session.run(None, {"images": x})
        times = []
        for _ in range(max(3, runs // size)):
            t = time.perf_counter()
            session.run(None, {"images": x})
            times.append(time.perf_counter() - t)
        call = statistics.median(times) * 1000
        print(f"    {size:>5} {call:8.1f} {call / size:9.1f}")
    # The whole step on a 720p frame; random weights score ~0.5 everywhere, so a high
    # min_score keeps the decode to the few candidates a real scene has.
    opts = DetectOptions.model_validate(
        {"model": str(model), "labels": "coco", "min_score": 0.97, "start_frames": 1}
    )
    proc = DetectProcessor(opts, "bench")
    proc.setup()
    image = rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    from edged.processor import Frame

    blob = rng.random((1, 3, 640, 640), dtype=np.float32)
    whole = []
    for i in range(runs):
        t = time.perf_counter()
        proc.process(Frame(image, i + 1, time.time(), time.monotonic(), "bench"))
        whole.append(time.perf_counter() - t)
    w = statistics.median(whole) * 1000
    print(f"    720p frame, the whole detect step (ONNX Runtime as edged sets it up): {w:.1f} ms")
    print(f"    {'threads spinning':>16} {'ms/frame':>9} {'CPU ms/frame':>13}")
    for spin in ("1", "0"):
        settings = onnxruntime.SessionOptions()
        settings.add_session_config_entry("session.intra_op.allow_spinning", spin)
        session = onnxruntime.InferenceSession(
            str(model), settings, providers=["CPUExecutionProvider"]
        )
        session.run(None, {"images": blob})
        times, cpu0 = [], time.process_time()
        for _ in range(runs):
            t = time.perf_counter()
            session.run(None, {"images": blob})
            times.append(time.perf_counter() - t)
            time.sleep(0.02)  # a camera's next frame: the gap where threads spin
        cpu = (time.process_time() - cpu0) / runs * 1000
        label = "yes (default)" if spin == "1" else "no (edged)"
        print(f"    {label:>16} {statistics.median(times) * 1000:9.1f} {cpu:13.1f}")


def events_per_object(crossings: int) -> None:
    from detect_models import detector

    from edged.processor import Frame
    from edged.processors.detect.options import DetectOptions
    from edged.processors.detect.processor import DetectProcessor

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "square.onnx"
        model.write_bytes(detector("yolov8"))
        opts = DetectOptions.model_validate({"model": str(model), "classes": ["person"]})
        proc = DetectProcessor(opts, "bench")
        proc.setup()
    fps, cross, pause = 20, 3.0, 2.0
    frames = int((cross + pause) * fps * crossings) + fps * 3
    seen = events = 0
    kinds: dict[str, int] = {}
    for i in range(frames):
        t = i / fps
        image = np.zeros((120, 160, 3), np.uint8)
        into = t % (cross + pause)
        if t < (cross + pause) * crossings and into < cross:
            left = round(-30 + 190 * into / cross)
            image[48:78, max(0, left) : max(0, left + 30)] = 255
        found = proc.infer([image])[0]
        seen += len(found[1].scores) > 0
        out = list(proc.process(Frame(image, i + 1, 1e9 + t, 1000.0 + t, "bench")))
        events += len(out)
        for e in out:
            kinds[e.type] = kinds.get(e.type, 0) + 1
    print(f"(c) events per object: {crossings} squares crossing at {fps} fps, {cross:g} s each")
    print(f"    frames with a detection: {seen} ({seen / crossings:.0f} per object)")
    shown = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
    print(f"    object events: {events} ({events / crossings:.1f} per object: {shown})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="inferences per measurement")
    parser.add_argument("--crossings", type=int, default=5)
    args = parser.parse_args()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"bench/detect.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {load}")
    with tempfile.TemporaryDirectory() as tmp:
        one, free = Path(tmp) / "yolo1.onnx", Path(tmp) / "yolob.onnx"
        one.write_bytes(yolo_graph())
        free.write_bytes(yolo_graph(batch="batch"))
        runtimes(one, args.runs)
        batches(free, args.runs)
    events_per_object(args.crossings)


if __name__ == "__main__":
    main()
