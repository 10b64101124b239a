"""How old is the frame a slow processor works on? edged against the usual designs.

A live RTSP stream from the test server (25 fps, 720p by default) carries its
creation time burned into every frame. A processor that takes 300 ms per frame
runs for ``--seconds`` in each of these designs, one after the other, in one run:

* ``edged``: the real daemon (``python -m edged run``) with ``plugins:SlowProcessor``
  from ``tests/plugins.py``; its events give edged's own ``frame_age_ms`` (from the
  grab) and the true age from the burned-in timestamp;
* ``naive``: one process, ``cv2.VideoCapture.read()`` then the 300 ms of work in
  the same loop; frames queue up behind the slow loop;
* ``threaded``: a thread reads continuously and keeps only the newest frame, the
  main loop takes the newest (the imutils / vidgear pattern);
* ``threaded1``: the same with one FFmpeg decoder thread, as edged uses by default
  (OpenCV's default is one per core, and frame threading delays each frame);
* ``blog``: a reader process appends every frame to a ``Manager().list()``, the
  consumer busy-polls it, takes the newest and clears the list.

The baselines open the stream with OpenCV's defaults and TCP transport
(``OPENCV_FFMPEG_CAPTURE_OPTIONS=rtsp_transport;tcp``); edged uses its own
defaults (TCP, one decoder thread). The true age is taken when processing starts
(wall clock now minus the server's timestamp), the same way in all of them.

The processor sleeps by default (``tests/plugins.py``'s ``SlowProcessor``), which
releases the GIL: the best case for a reader thread. ``--work busy`` spends the
300 ms computing in Python instead (``bench/bench_plugins.py``).

Each design runs as its own process tree, measured from outside with psutil
from its first processed frame for ``--seconds``: CPU (user+sys of every process
in the tree, over wall time) and memory (PSS and RSS summed over the tree,
sampled about ten times, maximum reported). The RTSP server is not counted.

Run: ``.venv/bin/python bench/freshness.py [--seconds 60] [--height 1080] [--work busy]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import psutil

BENCH = Path(__file__).resolve().parent
TESTS = BENCH.parent / "tests"
sys.path.insert(0, str(TESTS))

from components.rtsp import RtspServer, check_gstreamer, decode_timestamp  # noqa: E402

MODES = ("edged", "naive", "threaded", "threaded1", "blog")
TITLES = {
    "edged": "edged",
    "naive": "naive loop",
    "threaded": "threaded reader",
    "threaded1": "threaded, 1 decoder thread",
    "blog": "blog (Manager list)",
}
FIRST_FRAME_TIMEOUT = 60.0
STOP_GRACE = 10.0


# --------------------------------------------------------------------------------------
# The baselines (run as `freshness.py --child MODE`, each in its own process tree)
# --------------------------------------------------------------------------------------


class _Recorder:
    """Writes one JSON line per processed frame; the parent reads the file."""

    def __init__(self, path: str) -> None:
        self.out: TextIO = open(path, "a", buffering=1)  # noqa: SIM115
        self.n = 0

    def frame(self, image: np.ndarray) -> None:
        """Processing starts now: record the frame's true age."""
        now = time.time()
        made = decode_timestamp(image)
        self.n += 1
        record = {
            "n": self.n,
            "wall": now,
            "true_age_ms": None if made is None else (now - made) * 1000,
        }
        self.out.write(json.dumps(record) + "\n")


def _work(delay: float, kind: str) -> None:
    """The slow algorithm: sleep, or keep a core busy in Python."""
    if kind == "busy":
        from bench_plugins import busy

        busy(delay)
    else:
        time.sleep(delay)


def _open(url: str, threads: int | None = None) -> Any:
    from components.rtsp import open_capture

    cap = open_capture(url, transport="tcp", open_timeout=20, read_timeout=10, threads=threads)
    if not cap.isOpened():
        raise SystemExit(f"cannot open {url}")
    return cap


def child_naive(url: str, delay: float, work: str, rec: _Recorder, stop: threading.Event) -> None:
    cap = _open(url)
    try:
        while not stop.is_set():
            ok, frame = cap.read()
            if not ok:
                raise SystemExit("read() failed")
            rec.frame(frame)
            _work(delay, work)  # the slow algorithm
    finally:
        cap.release()


def child_threaded(
    url: str,
    delay: float,
    work: str,
    rec: _Recorder,
    stop: threading.Event,
    threads: int | None = None,
) -> None:
    cap = _open(url, threads)
    cond = threading.Condition()
    latest: list[Any] = [None, 0]  # frame, sequence number
    failed: list[bool] = [False]

    def grab() -> None:
        while not stop.is_set():
            ok, frame = cap.read()
            with cond:
                if not ok:
                    failed[0] = True
                    cond.notify_all()
                    return
                latest[0], latest[1] = frame, latest[1] + 1
                cond.notify_all()

    reader = threading.Thread(target=grab, name="grabber", daemon=True)
    reader.start()
    seen = 0
    try:
        while not stop.is_set():
            with cond:
                while latest[1] == seen and not failed[0] and not stop.is_set():
                    cond.wait(0.5)
                if failed[0]:
                    raise SystemExit("read() failed")
                frame, seen = latest[0], latest[1]
            if frame is None:
                continue
            rec.frame(frame)
            _work(delay, work)
    finally:
        stop.set()
        reader.join(15)
        cap.release()


def _blog_reader(url: str, stack: Any, top: int) -> None:
    """The blog's reader process: append every frame; clear the list at ``top`` frames."""
    import gc

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cap = _open(url)
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        stack.append(frame)
        if len(stack) >= top:
            del stack[:]
            gc.collect()


def child_blog(url: str, delay: float, work: str, rec: _Recorder, stop: threading.Event) -> None:
    import multiprocessing

    manager = multiprocessing.Manager()
    reader: multiprocessing.Process | None = None
    try:
        stack = manager.list()
        reader = multiprocessing.Process(target=_blog_reader, args=(url, stack, 100), daemon=True)
        reader.start()
        while not stop.is_set():
            if len(stack) == 0:  # the blog's busy loop
                if not reader.is_alive():
                    raise SystemExit("reader process died")
                continue
            frame = stack[-1]
            del stack[:]
            rec.frame(frame)
            _work(delay, work)
    finally:
        if reader is not None:
            reader.terminate()
            reader.join(5)
            if reader.is_alive():
                reader.kill()
                reader.join()
        manager.shutdown()


def child_main(mode: str, url: str, delay: float, work: str, out: str) -> int:
    stop = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    rec = _Recorder(out)
    if mode == "threaded1":
        child_threaded(url, delay, work, rec, stop, threads=1)
    else:
        run = {"naive": child_naive, "threaded": child_threaded, "blog": child_blog}[mode]
        run(url, delay, work, rec, stop)
    return 0


# --------------------------------------------------------------------------------------
# Measuring a process tree from outside
# --------------------------------------------------------------------------------------


class TreeMeter:
    """CPU time and memory of a process and all its descendants."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.cpu0: dict[int, float] = {}  # per process: CPU seconds at the start
        self.cpu_last: dict[int, float] = {}  # last seen, for processes that exit
        self.procs: dict[int, psutil.Process] = {}
        self.pss: list[float] = []
        self.rss: list[float] = []
        self.pss_by_process: dict[str, float] = {}  # at the last sample, MiB

    def _tree(self) -> list[psutil.Process]:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for p in procs:
            self.procs.setdefault(p.pid, p)
        return [self.procs[p.pid] for p in procs]

    @staticmethod
    def _cpu(p: psutil.Process) -> float | None:
        try:
            t = p.cpu_times()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None
        return float(t.user + t.system)

    def start(self) -> None:
        for p in self._tree():
            c = self._cpu(p)
            if c is not None:
                self.cpu0[p.pid] = self.cpu_last[p.pid] = c

    def sample(self, memory: bool = True) -> None:
        pss = rss = 0.0
        by_process: dict[str, float] = {}
        for p in self._tree():
            c = self._cpu(p)
            if c is not None:
                self.cpu0.setdefault(p.pid, 0.0)  # started after start(): count it all
                self.cpu_last[p.pid] = c
            if memory:
                with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
                    info = p.memory_full_info()
                    pss += info.pss
                    rss += info.rss
                    name = f"{p.name()}[{p.pid}]"
                    by_process[name] = info.pss / 2**20
        if memory and pss:
            self.pss.append(pss / 2**20)
            self.rss.append(rss / 2**20)
            self.pss_by_process = by_process

    def cpu_seconds(self) -> float:
        return sum(self.cpu_last[pid] - c0 for pid, c0 in self.cpu0.items())


# --------------------------------------------------------------------------------------
# Running one design
# --------------------------------------------------------------------------------------


@dataclass
class Run:
    mode: str
    frames: int = 0
    seconds: float = 0.0
    true_age: list[float] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    edged_age: list[float] = field(default_factory=list)
    unreadable: int = 0
    cpu: float = 0.0  # cores (CPU seconds per wall second)
    pss_max: float = 0.0
    pss_first: float = 0.0
    pss_last: float = 0.0
    rss_max: float = 0.0
    other_cpu: float = 0.0  # cores busy on the machine outside the measured tree
    pss_by_process: dict[str, float] = field(default_factory=dict)
    error: str = ""
    leaked_shm: list[str] = field(default_factory=list)

    def growth(self) -> float:
        """Least-squares slope of the true age over the run, ms per second."""
        pairs = [(w, a) for w, a in zip(self.walls, self.true_age, strict=True)]
        if len(pairs) < 3:
            return float("nan")
        x = np.array([p[0] for p in pairs])
        y = np.array([p[1] for p in pairs])
        return float(np.polyfit(x - x[0], y, 1)[0])


def edged_config(tmp: Path, url: str, delay: float, work: str) -> Path:
    toml = f"""
[events]
path = "{tmp / "events.jsonl"}"

[metrics]
enabled = false

[logging]
level = "warning"
format = "human"

[daemon]
state_dir = "{tmp / "state"}"

[cameras.bench]
source = "{url}"
transport = "tcp"

[cameras.bench.processor]
type = "{"bench_plugins:BusyProcessor" if work == "busy" else "plugins:SlowProcessor"}"
delay = {delay}
timestamps = true
"""
    path = tmp / "edged.toml"
    path.write_text(toml)
    return path


def _records(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        if line.endswith("}"):
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
    return out


def _stop_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the root, then SIGKILL the whole process group after the grace period."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_GRACE)
    # Anything left in its process group (it was started in a session of its own).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def _shm_of(pid: int) -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"edged_{pid}_"))


def run_mode(mode: str, url: str, delay: float, work: str, seconds: float, workdir: Path) -> Run:
    tmp = workdir / mode
    tmp.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(TESTS), str(BENCH), env.get("PYTHONPATH")])
    )
    env.pop("NOTIFY_SOCKET", None)
    if mode == "edged":
        cmd = [
            sys.executable,
            "-m",
            "edged",
            "run",
            "--config",
            str(edged_config(tmp, url, delay, work)),
        ]
        records_path = tmp / "events.jsonl"
    else:
        records_path = tmp / "frames.jsonl"
        cmd = [sys.executable, __file__, "--child", mode, "--url", url, "--delay", str(delay)]
        cmd += ["--work", work, "--out", str(records_path)]
    log_path = tmp / "stderr.log"
    result = Run(mode)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(tmp),
            start_new_session=True,  # Ctrl-C is ours to handle; killpg reaches its children
        )
        try:
            _measure(proc, records_path, seconds, result)
        finally:
            _stop_tree(proc)
            if mode == "edged":
                result.leaked_shm = _shm_of(proc.pid)
                for name in result.leaked_shm:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join("/dev/shm", name))
    if result.error:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        result.error += ": " + " | ".join(tail)
    return result


def _machine_busy() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def _measure(proc: subprocess.Popen[bytes], path: Path, seconds: float, result: Run) -> None:
    deadline = time.monotonic() + FIRST_FRAME_TIMEOUT
    while not _records(path):
        if proc.poll() is not None:
            result.error = f"exited with status {proc.returncode} before the first frame"
            return
        if time.monotonic() > deadline:
            result.error = f"no frame processed within {FIRST_FRAME_TIMEOUT:.0f} s"
            return
        time.sleep(0.05)
    meter = TreeMeter(proc.pid)
    first = len(_records(path))
    t0 = time.monotonic()
    busy0 = _machine_busy()
    meter.start()
    meter.sample()
    samples = 10
    for i in range(1, samples + 1):
        end = t0 + seconds * i / samples
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 1.0))
            if proc.poll() is not None:
                result.error = f"exited with status {proc.returncode} during the run"
                return
            meter.sample(memory=False)  # catch the CPU of processes that exit
        meter.sample()
    wall = time.monotonic() - t0
    machine = (_machine_busy() - busy0) / wall
    records = _records(path)[first:]
    result.seconds = wall
    result.frames = len(records)
    result.cpu = meter.cpu_seconds() / wall
    result.other_cpu = max(0.0, machine - result.cpu)
    result.pss_max, result.rss_max = max(meter.pss), max(meter.rss)
    result.pss_first, result.pss_last = meter.pss[0], meter.pss[-1]
    result.pss_by_process = meter.pss_by_process
    for r in records:
        if result.mode == "edged":
            age = r.get("data", {}).get("true_age_ms")
            result.edged_age.append(float(r["frame_age_ms"]))
            # the frame's capture time; its processing started frame_age_ms later
            wall_t = datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp()
            wall_t += r["frame_age_ms"] / 1000
        else:
            age, wall_t = r.get("true_age_ms"), r["wall"]
        if age is None:
            result.unreadable += 1
            continue
        result.true_age.append(float(age))
        result.walls.append(float(wall_t))


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _ms(v: float) -> str:
    return "-" if v != v else f"{v:.0f}"


def _x(v: float, ref: float) -> str:
    if v != v or ref != ref or ref <= 0:
        return ""
    r = v / ref
    return f" ({r:.1f}x)" if r < 100 else f" ({r:.0f}x)"


def report(runs: list[Run], args: argparse.Namespace, width: int) -> str:
    ref = next((r for r in runs if r.mode == "edged" and not r.error), None)
    head = ["", *(TITLES[r.mode] for r in runs)]
    rows: list[list[str]] = []

    def row(label: str, fn: Any, ratio: Any = None) -> None:
        cells = [label]
        for r in runs:
            if r.error:
                cells.append("failed")
                continue
            text = fn(r)
            if ratio is not None and ref is not None and r is not ref:
                text += _x(ratio(r), ratio(ref))
            cells.append(text)
        rows.append(cells)

    def age(q: float) -> Any:
        return lambda r: _pct(r.true_age, q)

    row("frames processed (per s)", lambda r: f"{r.frames} ({r.frames / r.seconds:.2f})")
    row("true age p50 ms", lambda r: _ms(age(50)(r)), age(50))
    row("true age p95 ms", lambda r: _ms(age(95)(r)), age(95))
    row("true age max ms", lambda r: _ms(max(r.true_age, default=float("nan"))))
    row("true age at the end ms", lambda r: _ms(r.true_age[-1] if r.true_age else float("nan")))
    row("true age growth ms/s", lambda r: f"{r.growth():+.1f}")
    row(
        "edged frame_age_ms p50 / p95 / max",
        lambda r: (
            " / ".join(
                _ms(v) for v in (_pct(r.edged_age, 50), _pct(r.edged_age, 95), max(r.edged_age))
            )
            if r.edged_age
            else "-"
        ),
    )
    row("CPU, cores (user+sys / wall)", lambda r: f"{r.cpu:.2f}", lambda r: r.cpu)
    row("PSS max MiB", lambda r: f"{r.pss_max:.0f}", lambda r: r.pss_max)
    row("PSS first -> last MiB", lambda r: f"{r.pss_first:.0f} -> {r.pss_last:.0f}")
    row("RSS max MiB (sum)", lambda r: f"{r.rss_max:.0f}")
    row("frames without a readable timestamp", lambda r: str(r.unreadable))
    row("other CPU on the machine, cores", lambda r: f"{r.other_cpu:.2f}")
    lines = [
        f"Frame freshness: RTSP {width}x{args.height} @ {args.fps} fps, processor "
        f"{args.delay * 1000:.0f} ms/frame ({args.work}), {args.seconds:.0f} s per design "
        "(ratios: x edged)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    lines += ["| " + " | ".join(c) + " |" for c in rows]
    lines.append("\nPSS by process at the end, MiB:")
    for r in runs:
        if r.pss_by_process:
            parts = ", ".join(f"{k} {v:.0f}" for k, v in r.pss_by_process.items())
            lines.append(f"- {TITLES[r.mode]}: {parts}")
    for r in runs:
        if r.error:
            lines.append(f"\n{TITLES[r.mode]} failed: {r.error}")
        if r.leaked_shm:
            lines.append(f"\nedged left shared memory behind (removed): {', '.join(r.leaked_shm)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="per design (default 60)")
    ap.add_argument("--height", type=int, default=720, choices=(720, 1080))
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--delay", type=float, default=0.3, help="processor seconds per frame")
    ap.add_argument(
        "--work",
        choices=("sleep", "busy"),
        default="sleep",
        help="the processor sleeps (default; releases the GIL) or computes in Python",
    )
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    # internal: run one baseline design
    ap.add_argument("--child", choices=MODES[1:], help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args.child, args.url, args.delay, args.work, args.out)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    problem = check_gstreamer()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    width = args.height * 16 // 9
    print(
        f"edged freshness benchmark: {platform.node()}, {psutil.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        flush=True,
    )
    server = RtspServer(width=width, height=args.height, fps=args.fps, pattern="moving")
    runs: list[Run] = []
    try:
        with tempfile.TemporaryDirectory(prefix="edged-bench-") as workdir:
            server.start()
            for mode in args.modes:
                print(f"  {mode}: {args.seconds:.0f} s ...", file=sys.stderr, flush=True)
                r = run_mode(mode, server.url, args.delay, args.work, args.seconds, Path(workdir))
                runs.append(r)
                if r.error:
                    print(f"  {mode}: FAILED: {r.error}", file=sys.stderr, flush=True)
                else:
                    print(
                        f"  {mode}: {r.frames} frames, true age p50 "
                        f"{_ms(_pct(r.true_age, 50))} ms, CPU {r.cpu:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        server.stop()
    print()
    print(report(runs, args, width))
    return 0 if all(not r.error for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
