"""How old is the frame a slow processor works on? edged against the usual designs.

A live RTSP stream from the test server (25 fps, 720p by default) carries its
creation time burned into every frame. A processor that takes 300 ms per frame
runs for ``--seconds`` in each of these designs, one after the other, in one run:

* ``edged``: the real daemon (``python -m edged run``) with ``plugins:SlowProcessor``
  from ``tests/plugins.py``; its events give edged's own ``frame_age_ms`` (from the
  grab) and the true age from the burned-in timestamp;
* ``edged_gray``: the same with ``pixel_format = "gray"``, as for a processor
  that declares grey (the built-in ``motion``): frames decoded by PyAV, the luma
  plane handed over with no colour conversion;
* ``naive``: one process, ``cv2.VideoCapture.read()`` then the 300 ms of work in
  the same loop; frames queue up behind the slow loop;
* ``threaded``: a thread reads continuously and keeps only the newest frame, the
  main loop takes the newest (the imutils / vidgear pattern);
* ``threaded1``: the same with one FFmpeg decoder thread, as edged uses by default
  (OpenCV's default is one per core, and frame threading delays each frame);
* ``blog``: a reader process appends every frame to a ``Manager().list()``, the
  consumer busy-polls it, takes the newest and clears the list;
* ``camgear``: vidgear's ``CamGear(source=url).start()`` with its defaults, ``read()``
  in the loop (for a URL it queues up to 96 frames and hands out the oldest);
* ``camgear_latest``: the same with ``THREADED_QUEUE_MODE=False``, vidgear's way to
  get the newest frame (``read()`` returns the last frame read; the loop skips a
  frame it has already processed, polling every millisecond).

The CamGear modes need ``pip install vidgear`` (the ``bench`` extra); without it
they are left out of the default run.

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
The first frame processed after connecting is reported on its own (its age, and
the time from starting the process to processing it); the frames the stream
carried between two processed frames are counted as skipped, from the capture
times in the pixels (25 fps: a gap of 40 ms is no frame skipped).

``bench/run.py`` runs this for 720p and 1080p in one go, with the handoff
benchmark, and writes JSON and plots. On its own:

Run: ``.venv/bin/python bench/freshness.py [--seconds 30] [--height 1080] [--work busy]``
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

MODES = (
    "edged",
    "edged_gray",
    "naive",
    "threaded",
    "threaded1",
    "blog",
    "camgear",
    "camgear_latest",
)
TITLES = {
    "edged": "edged",
    "edged_gray": "edged, grey frames",
    "naive": "naive loop",
    "threaded": "threaded reader",
    "threaded1": "threaded, 1 decoder thread",
    "blog": "blog (Manager list)",
    "camgear": "vidgear CamGear",
    "camgear_latest": "CamGear, no queue",
}
VIDGEAR_MODES = ("camgear", "camgear_latest")


def have_vidgear() -> bool:
    import importlib.util

    return importlib.util.find_spec("vidgear") is not None


def default_modes() -> list[str]:
    """Every design; the CamGear ones only where vidgear is installed."""
    return [m for m in MODES if m not in VIDGEAR_MODES or have_vidgear()]


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


def _name_process(name: str) -> None:
    """Set the process name ``ps`` and the PSS breakdown show (Linux; harmless elsewhere)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(15, name[:15].encode())  # PR_SET_NAME


def _blog_reader(url: str, stack: Any, top: int) -> None:
    """The blog's reader process: append every frame; clear the list at ``top`` frames."""
    import gc

    _name_process("reader:blog")
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
    from multiprocessing.managers import SyncManager

    manager = SyncManager()  # what multiprocessing.Manager() returns, started by hand
    manager.start(_name_process, ("manager:blog",))  # to name its process
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


def child_camgear(
    url: str,
    delay: float,
    work: str,
    rec: _Recorder,
    stop: threading.Event,
    queue_mode: bool = True,
) -> None:
    import logging

    logging.disable(logging.WARNING)  # vidgear logs a banner and warnings on every start
    from vidgear.gears import CamGear

    options: dict[str, Any] = {"THREAD_TIMEOUT": 10}
    if not queue_mode:
        options["THREADED_QUEUE_MODE"] = False
    # TCP, as for the other baselines; backend=CAP_FFMPEG so that the option applies
    import cv2

    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "rtsp_transport;tcp"
    stream = CamGear(source=url, backend=cv2.CAP_FFMPEG, **options).start()
    last: Any = None
    try:
        while not stop.is_set():
            frame = stream.read()
            if frame is None:
                raise SystemExit("CamGear read() returned None")
            if frame is last:  # no queue: the same frame until the next one is read
                time.sleep(0.001)
                continue
            last = frame
            rec.frame(frame)
            _work(delay, work)
    finally:
        stream.stop()


def child_main(mode: str, url: str, delay: float, work: str, out: str) -> int:
    stop = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    rec = _Recorder(out)
    if mode == "threaded1":
        child_threaded(url, delay, work, rec, stop, threads=1)
    elif mode in VIDGEAR_MODES:
        child_camgear(url, delay, work, rec, stop, queue_mode=mode == "camgear")
    else:
        run = {"naive": child_naive, "threaded": child_threaded, "blog": child_blog}[mode]
        run(url, delay, work, rec, stop)
    return 0


# --------------------------------------------------------------------------------------
# Measuring a process tree from outside
# --------------------------------------------------------------------------------------


def _label(p: psutil.Process) -> str:
    """A short role for a process of a measured tree."""
    name = str(p.name())
    if ":" in name:  # edged names its children: reader:cam, worker:cam
        return name
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return name
    if " -m edged " in f" {cmd} ":
        return "supervisor"
    if "resource_tracker" in cmd:
        return "resource tracker"
    if "multiprocessing.spawn" in cmd or "multiprocessing-fork" in cmd:
        return "child"
    if "--child blog" in cmd:
        return "main"
    if "forkserver" in cmd:
        return "forkserver"
    return "main" if "--child" in cmd else name


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
                    name = _label(p)
                    by_process[name] = by_process.get(name, 0.0) + info.pss / 2**20
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
    walls: list[float] = field(default_factory=list)  # when processing started
    edged_age: list[float] = field(default_factory=list)
    unreadable: int = 0
    fps: float = 25.0  # of the source, for the skipped count
    first_age: float = float("nan")  # ms, the first frame processed after connecting
    first_after: float = float("nan")  # s from starting the process to processing it
    first_wall: float = 0.0  # wall clock when processing of that first frame started
    t0_wall: float = 0.0  # wall clock at the start of the measured window
    cpu: float = 0.0  # cores (CPU seconds per wall second)
    pss_max: float = 0.0
    pss_first: float = 0.0
    pss_last: float = 0.0
    rss_max: float = 0.0
    other_cpu: float = 0.0  # cores busy on the machine outside the measured tree
    pss_by_process: dict[str, float] = field(default_factory=dict)
    error: str = ""
    leaked_shm: list[str] = field(default_factory=list)

    def made(self) -> list[float]:
        """Capture times (from the pixels) of the processed frames, seconds."""
        return [w - a / 1000 for w, a in zip(self.walls, self.true_age, strict=True)]

    def skipped(self) -> int:
        """Frames the stream carried between processed ones, from the capture times."""
        made = self.made()
        gaps = np.diff(np.asarray(made)) * self.fps
        return int(np.sum(np.maximum(np.rint(gaps) - 1, 0))) if len(made) > 1 else 0

    def summary(self) -> dict[str, Any]:
        """Everything the report shows, as plain JSON values."""
        ages = self.true_age
        return {
            "mode": self.mode,
            "title": TITLES[self.mode],
            "error": self.error or None,
            "seconds": round(self.seconds, 3),
            "frames": self.frames,
            "frames_per_s": self.frames / self.seconds if self.seconds else None,
            "age_p50_ms": _num(_pct(ages, 50)),
            "age_p95_ms": _num(_pct(ages, 95)),
            "age_max_ms": _num(max(ages, default=float("nan"))),
            "age_last_ms": _num(ages[-1] if ages else float("nan")),
            "age_growth_ms_per_s": _num(self.growth()),
            "first_frame_age_ms": _num(self.first_age),
            "first_frame_after_s": _num(self.first_after),
            "first_frame_t_s": round(self.first_wall - self.t0_wall, 4) if self.t0_wall else None,
            "skipped_frames": self.skipped() if ages else None,
            "unreadable_timestamps": self.unreadable,
            "edged_frame_age_ms": (
                {
                    "p50": _pct(self.edged_age, 50),
                    "p95": _pct(self.edged_age, 95),
                    "max": max(self.edged_age),
                }
                if self.edged_age
                else None
            ),
            "cpu_cores": self.cpu,
            "cpu_percent": self.cpu * 100,
            "pss_max_mib": self.pss_max,
            "pss_first_mib": self.pss_first,
            "pss_last_mib": self.pss_last,
            "rss_max_mib": self.rss_max,
            "pss_by_process_mib": self.pss_by_process,
            "other_cpu_cores": self.other_cpu,
            "series": {
                "t_s": [round(w - self.t0_wall, 4) for w in self.walls],
                "age_ms": [round(a, 2) for a in self.true_age],
            },
        }

    def growth(self) -> float:
        """Least-squares slope of the true age over the run, ms per second."""
        pairs = [(w, a) for w, a in zip(self.walls, self.true_age, strict=True)]
        if len(pairs) < 3:
            return float("nan")
        x = np.array([p[0] for p in pairs])
        y = np.array([p[1] for p in pairs])
        return float(np.polyfit(x - x[0], y, 1)[0])


def edged_config(tmp: Path, url: str, delay: float, work: str, gray: bool = False) -> Path:
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
pixel_format = "{"gray" if gray else "bgr"}"

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


def run_mode(
    mode: str, url: str, delay: float, work: str, seconds: float, workdir: Path, fps: float = 25.0
) -> Run:
    tmp = workdir / mode
    tmp.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(TESTS), str(BENCH), env.get("PYTHONPATH")])
    )
    env.pop("NOTIFY_SOCKET", None)
    if mode.startswith("edged"):
        cmd = [
            sys.executable,
            "-m",
            "edged",
            "run",
            "--config",
            str(edged_config(tmp, url, delay, work, mode == "edged_gray")),
        ]
        records_path = tmp / "events.jsonl"
    else:
        records_path = tmp / "frames.jsonl"
        cmd = [sys.executable, __file__, "--child", mode, "--url", url, "--delay", str(delay)]
        cmd += ["--work", work, "--out", str(records_path)]
    log_path = tmp / "stderr.log"
    result = Run(mode, fps=fps)
    with open(log_path, "wb") as log:
        started = time.time()
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
            _measure(proc, records_path, seconds, result, started)
        finally:
            _stop_tree(proc)
            if mode.startswith("edged"):
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


def _age_and_wall(mode: str, r: dict[str, Any]) -> tuple[float | None, float]:
    """(true age ms or None, wall clock when processing started) of one record."""
    if mode.startswith("edged"):
        age = r.get("data", {}).get("true_age_ms")
        # the frame's grab time; its processing started frame_age_ms later
        wall_t = datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp()
        return age, wall_t + r["frame_age_ms"] / 1000
    return r.get("true_age_ms"), r["wall"]


def _measure(
    proc: subprocess.Popen[bytes], path: Path, seconds: float, result: Run, started: float
) -> None:
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
    early = _records(path)
    first = len(early)
    age0, wall0 = _age_and_wall(result.mode, early[0])
    result.first_age = float("nan") if age0 is None else float(age0)
    result.first_after = wall0 - started
    result.first_wall = wall0
    result.t0_wall = time.time()
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
        if result.mode.startswith("edged"):
            result.edged_age.append(float(r["frame_age_ms"]))
        age, wall_t = _age_and_wall(result.mode, r)
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


def _num(v: float) -> float | None:
    """JSON has no NaN."""
    return None if v != v else float(v)


def _ms(v: float) -> str:
    return "-" if v != v else f"{v:.0f}"


def _x(v: float, ref: float) -> str:
    if v != v or ref != ref or ref <= 0:
        return ""
    r = v / ref
    return f" ({r:.1f}x)" if r < 100 else f" ({r:.0f}x)"


def age(q: float) -> Any:
    """The q-th percentile of a run's true age (a function of the run)."""
    return lambda run: _pct(run.true_age, q)


def table(sections: list[tuple[str, list[Run]]], detail: bool = False) -> str:
    """One Markdown table: a column per design, a block of rows per section (height).

    Ratios are against edged in the same section. ``detail`` adds the rows that
    ``freshness.py`` printed before (growth, edged's own frame age, RSS...).
    """
    modes: list[str] = []
    for _, runs in sections:
        modes += [r.mode for r in runs if r.mode not in modes]
    head = ["", *(TITLES[m] for m in modes)]
    rows: list[list[str]] = []
    for label, runs in sections:
        by_mode = {r.mode: r for r in runs}
        ref = by_mode.get("edged")
        if ref is not None and ref.error:
            ref = None
        pre = f"{label}: " if label else ""

        def row(
            name: str,
            fn: Any,
            ratio: Any = None,
            *,
            by_mode: dict[str, Run] = by_mode,
            ref: Run | None = ref,
            pre: str = pre,
        ) -> None:
            cells = [pre + name]
            for m in modes:
                r = by_mode.get(m)
                if r is None:
                    cells.append("")
                    continue
                if r.error:
                    cells.append("failed")
                    continue
                text = fn(r)
                if ratio is not None and ref is not None and r is not ref:
                    text += _x(ratio(r), ratio(ref))
                cells.append(text)
            rows.append(cells)

        row("frames processed (per s)", lambda r: f"{r.frames} ({r.frames / r.seconds:.1f})")
        row("age p50 ms", lambda r: _ms(age(50)(r)), age(50))
        row("age p95 ms", lambda r: _ms(age(95)(r)), age(95))
        row("age max ms", lambda r: _ms(max(r.true_age, default=float("nan"))))
        row("first-frame age ms", lambda r: _ms(r.first_age), lambda r: r.first_age)
        row("skipped frames", lambda r: str(r.skipped()))
        if detail:
            row("age at the end ms", lambda r: _ms(r.true_age[-1] if r.true_age else float("nan")))
            row("age growth ms/s", lambda r: f"{r.growth():+.1f}")
            row(
                "edged frame_age_ms p50 / p95 / max",
                lambda r: (
                    " / ".join(
                        _ms(v)
                        for v in (_pct(r.edged_age, 50), _pct(r.edged_age, 95), max(r.edged_age))
                    )
                    if r.edged_age
                    else "-"
                ),
            )
            row("first frame processed after s", lambda r: f"{r.first_after:.2f}")
        row("CPU % of a core", lambda r: f"{r.cpu * 100:.0f}", lambda r: r.cpu)
        row("PSS max MiB", lambda r: f"{r.pss_max:.0f}", lambda r: r.pss_max)
        if detail:
            row("PSS first -> last MiB", lambda r: f"{r.pss_first:.0f} -> {r.pss_last:.0f}")
            row("RSS max MiB (sum)", lambda r: f"{r.rss_max:.0f}")
            row("frames without a readable timestamp", lambda r: str(r.unreadable))
        row("other CPU on the machine %", lambda r: f"{r.other_cpu * 100:.0f}")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(c) + " |" for c in rows]
    return "\n".join(lines)


def notes(runs: list[Run], label: str = "") -> list[str]:
    """PSS by process, failures and leaks, as Markdown lines."""
    pre = f" ({label})" if label else ""
    lines = [f"PSS by process at the end, MiB{pre}:"]
    for r in runs:
        if r.pss_by_process:
            parts = ", ".join(f"{k} {v:.0f}" for k, v in r.pss_by_process.items())
            lines.append(f"- {TITLES[r.mode]}: {parts}")
    for r in runs:
        if r.error:
            lines.append(f"\n{TITLES[r.mode]} failed{pre}: {r.error}")
        if r.leaked_shm:
            lines.append(f"\nedged left shared memory behind (removed): {', '.join(r.leaked_shm)}")
    return lines


def report(runs: list[Run], args: argparse.Namespace, width: int) -> str:
    lines = [
        f"Frame freshness: RTSP {width}x{args.height} @ {args.fps} fps, processor "
        f"{args.delay * 1000:.0f} ms/frame ({args.work}), {args.seconds:.0f} s per design "
        "(ratios: x edged)",
        "",
        table([("", runs)], detail=True),
        "",
        *notes(runs),
    ]
    return "\n".join(lines)


def run_all(
    modes: list[str],
    height: int,
    fps: int,
    delay: float,
    work: str,
    seconds: float,
    progress: Any = None,
) -> list[Run]:
    """Start the RTSP server, run every design one after the other against it, stop it."""
    width = height * 16 // 9
    server = RtspServer(width=width, height=height, fps=fps, pattern="moving")
    runs: list[Run] = []
    try:
        with tempfile.TemporaryDirectory(prefix="edged-bench-") as workdir:
            server.start()
            for mode in modes:
                print(f"  {height}p {mode}: {seconds:.0f} s ...", file=sys.stderr, flush=True)
                r = run_mode(mode, server.url, delay, work, seconds, Path(workdir), fps)
                runs.append(r)
                if r.error:
                    print(f"  {height}p {mode}: FAILED: {r.error}", file=sys.stderr, flush=True)
                else:
                    print(
                        f"  {height}p {mode}: {r.frames} frames, age p50 "
                        f"{_ms(_pct(r.true_age, 50))} ms, p95 {_ms(_pct(r.true_age, 95))} ms, "
                        f"first {_ms(r.first_age)} ms, CPU {r.cpu * 100:.0f}%",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        server.stop()
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="per design (default 30)")
    ap.add_argument("--height", type=int, default=720, choices=(720, 1080))
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--delay", type=float, default=0.2, help="processor seconds per frame")
    ap.add_argument(
        "--work",
        choices=("sleep", "busy"),
        default="sleep",
        help="the processor sleeps (default; releases the GIL) or computes in Python",
    )
    ap.add_argument(
        "--modes", nargs="+", default=None, choices=MODES, help="default: all that are installed"
    )
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
    modes = args.modes or default_modes()
    width = args.height * 16 // 9
    print(
        f"edged freshness benchmark: {platform.node()}, {psutil.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        flush=True,
    )
    try:
        runs = run_all(modes, args.height, args.fps, args.delay, args.work, args.seconds)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print()
    print(report(runs, args, width))
    return 0 if all(not r.error for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
