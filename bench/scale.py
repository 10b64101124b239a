"""How many live 720p25 streams does edged keep up with on this machine, next to bare FFmpeg?

    .venv/bin/python bench/scale.py [--seconds 30] [--designs edged ffmpeg ffmpeg_bgr ...]
                                    [--counts 1 2 4 8 ...] [--max 96] [--processor probe|null]
                                    [--results bench/results] [--publish]

One GStreamer RTSP test server (``tests/components/rtsp.py``) serves one 720p25
H.264 stream; N clients read it at once, each over its own RTSP/TCP session.
The server's media is shared: it encodes once, whatever N, and sends each client
its own copy. Every trial starts a fresh server (a trial that breaks one spoils
no other; a server that sat idle during a window fails that trial, saying so).
The designs, each on its own:

* ``edged``: one daemon, ``python -m edged run``, with N cameras on that URL
  (edged's defaults: TCP, one decoder thread; a reader and a worker process per
  camera) and a light processor, ``bench_plugins:AgeProbe`` (nothing per frame;
  once a second it reads the capture time burned into the frame and reports the
  frame's true age as an event). ``--processor null`` uses edged's ``null``
  instead (then the age comes only from FFmpeg's side: see below).
* ``edged_capped``: the same with ``process_fps = --capped-fps`` (5) on every
  camera, as Frigate users set ``detect.fps``: the processor takes 5 frames a
  second, each the newest, and the reader converts only those to BGR.
* ``edged_gray``: ``edged`` with ``pixel_format = "gray"`` on every camera, as for
  a processor that declares grey (the built-in ``motion`` does): the reader
  decodes through PyAV and copies each frame's Y plane into shared memory, with
  no colour conversion at all.
* ``ffmpeg``: N processes ``ffmpeg -rtsp_transport tcp -i URL -f null -`` (FFmpeg's
  defaults: automatic decoder threads, no colour conversion: the null muxer takes
  the decoded YUV frames as they are), plus ``-progress pipe:1`` to count frames.
  The bare decode: the reference of issue 7's goal (edged >= 90% of its streams).
* ``ffmpeg_bgr``: the same with ``-pix_fmt bgr24``: decode and convert to BGR, the
  work any OpenCV reader does (``read()`` returns BGR), with nothing else around it.
* ``opencv`` / ``opencv_bgr``: N processes of ``bench/plain_reader.py``, a plain
  OpenCV loop with edged's capture settings that only ``grab()``s every frame
  (the decode) or also ``retrieve()``s it into one preallocated BGR array (decode
  and conversion): edged's reader minus edged. Together they split the gap
  between edged and the bare decode into OpenCV's decode, OpenCV's conversion
  and edged's own cost (processes, handoff, worker wake-ups, supervisor).
* ``pyav_gray``: the same loop on PyAV, copying each frame's Y plane out:
  ``edged_gray``'s reader minus edged.

A trial starts the N clients, waits until every stream delivers frames, lets
them settle for ``--warmup`` seconds (the first frames after connecting are
old: the clients catch up), then measures ``--seconds``. N *is sustained* when
every stream delivers at least 95% of the source's frames (23.75 of 25 fps) over
the window and its lag does not grow by more than ``--max-lag-growth`` ms over
the window (default 500 ms) -- over TCP a client that falls behind does not lose
frames, it gets later and later. The lag:

* edged: the true age of the probed frames (wall clock minus the capture time in
  the pixels; ``null``: not measured) -- its growth (least-squares slope x window)
  and its p95; frames decoded per second from edged's own
  ``edged_frames_decoded_total`` (``/metrics``);
* ffmpeg: wall-clock time minus the stream time FFmpeg has reached (``out_time``
  in its progress reports), its growth over the window; frames from ``frame=``
  (``plain_reader.py`` reports the same way).

Without ``--counts``, N doubles from ``--start`` (4) until a trial fails, then bisects between
the last N sustained and the first that was not.

``--require-processed`` also asks that edged's processor sees >= 95% of the
frames (under overload edged's readers keep decoding and its workers skip frames).

CPU: user+sys seconds over the window of every process (edged: by role --
supervisor, resource tracker, readers, workers; the server on its own), in % of
one core. The server shares the two cores with the clients and its CPU grows with
N (one encode, plus a TCP send per client); it stands for cameras, which are not
on the box, so its threads run at nice -10 (``--server-nice``): at nice 0, once the
clients saturate the cores, it produces fewer than 25 fps and fails trials for
its own sake. It is measured in every trial and shown beside the clients, and
the same N costs it the same for every design, so the largest N sustained
compares like with like. The "per stream" rows give what
a stream costs the clients alone (server left out), and what that would allow
on this machine's cores with no server on them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

BENCH = Path(__file__).resolve().parent
TESTS = BENCH.parent / "tests"
sys.path.insert(0, str(TESTS))

from components.rtsp import RtspServer, check_gstreamer, free_port  # noqa: E402
from resultfile import settings, write_results  # noqa: E402

DESIGNS = (
    "edged",
    "edged_capped",
    "edged_gray",
    "ffmpeg",
    "ffmpeg_bgr",
    "opencv",
    "opencv_bgr",
    "pyav_gray",
)
PLAIN = {"opencv": "grab", "opencv_bgr": "bgr", "pyav_gray": "pyav_gray"}  # plain_reader.py
READY_TIMEOUT = 180.0  # 2N Python processes importing OpenCV take a while
STOP_GRACE = 15.0
DELIVERED = 0.95  # of the source's frames


# --------------------------------------------------------------------------------------
# CPU of a set of processes over a window
# --------------------------------------------------------------------------------------


def _cpu(p: psutil.Process) -> float | None:
    try:
        t = p.cpu_times()
    except psutil.Error:
        return None
    return float(t.user + t.system)


def _role(p: psutil.Process) -> str:
    try:
        name = p.name()
        if name.startswith(("reader:", "worker:")):
            return str(name.split(":", 1)[0])
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return "?"
    if name == "ffmpeg" or "ffmpeg" in cmd.split(" ", 1)[0]:
        return "ffmpeg"
    if "plain_reader.py" in cmd:
        return "plain loop"
    if " -m edged " in f" {cmd} ":
        return "supervisor"
    if "resource_tracker" in cmd:
        return "resource tracker"
    return str(name)


class CpuMeter:
    """CPU seconds by role, over a window, of some roots and all their descendants."""

    def __init__(self, roots: dict[str, list[int]]) -> None:
        self.roots = roots  # group -> root pids (group "clients", "server")
        self.procs: dict[int, tuple[str, str, psutil.Process]] = {}
        self.start: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.pss = 0.0

    def _scan(self) -> None:
        for group, pids in self.roots.items():
            for pid in pids:
                try:
                    root = psutil.Process(pid)
                    tree = [root, *root.children(recursive=True)]
                except psutil.Error:
                    continue
                for p in tree:
                    if p.pid not in self.procs:
                        role = "server" if group == "server" else _role(p)
                        self.procs[p.pid] = (group, role, p)

    def begin(self) -> None:
        self._scan()
        for pid, (_, _, p) in self.procs.items():
            c = _cpu(p)
            if c is not None:
                self.start[pid] = self.last[pid] = c

    def sample(self) -> None:
        self._scan()
        for pid, (_, _, p) in self.procs.items():
            c = _cpu(p)
            if c is not None:
                self.start.setdefault(pid, 0.0)  # started in the window: all of it counts
                self.last[pid] = c

    def memory(self) -> None:
        pss = 0.0
        for group, _, p in self.procs.values():
            if group != "clients":
                continue
            with contextlib.suppress(psutil.Error):
                pss += p.memory_full_info().pss
        self.pss = pss / 2**20

    def by_role(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, c0 in self.start.items():
            _, role, _ = self.procs[pid]
            out[role] = out.get(role, 0.0) + self.last[pid] - c0
        return out

    def count(self, role: str) -> int:
        return sum(1 for _, r, _ in self.procs.values() if r == role)


def _machine_busy() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


# --------------------------------------------------------------------------------------
# A trial
# --------------------------------------------------------------------------------------


@dataclass
class Trial:
    design: str
    n: int
    seconds: float = 0.0
    fps: list[float] = field(default_factory=list)  # delivered, per stream
    processed_fps: list[float] = field(default_factory=list)  # edged: frames processed
    lag_growth_ms: list[float] = field(default_factory=list)  # per stream, over the window
    age_p95_ms: float | None = None  # edged with the probe: true age, all streams
    age_max_ms: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)  # % of a core, by role
    clients_cpu: float = 0.0  # % of a core
    server_cpu: float = 0.0
    machine_cpu: float = 0.0  # everything busy on the machine
    other_cpu: float = 0.0  # machine - clients - server
    pss_mib: float = 0.0  # clients
    restarts: int = 0
    sustained: bool = False
    why: str = ""
    error: str = ""

    def judge(
        self, fps: float, max_growth: float, processed: bool = False, process_fps: float = 0.0
    ) -> None:
        if self.error:
            self.sustained, self.why = False, self.error
            return
        problems = []
        low = [f for f in self.fps if f < DELIVERED * fps]
        if len(self.fps) < self.n:
            problems.append(f"{self.n - len(self.fps)} streams not measured")
        if low:
            problems.append(
                f"{len(low)} streams below {DELIVERED * fps:.2f} fps (min {min(low):.2f})"
            )
        grew = [g for g in self.lag_growth_ms if g > max_growth]
        if grew:
            problems.append(
                f"{len(grew)} streams' lag grew > {max_growth:.0f} ms (max {max(grew):.0f})"
            )
        if processed and self.processed_fps:
            want = DELIVERED * (min(fps, process_fps) if process_fps else fps)
            slow = [f for f in self.processed_fps if f < want]
            if slow:
                problems.append(
                    f"{len(slow)} processors saw < {want:.2f} fps (min {min(slow):.2f})"
                )
        if self.restarts:
            problems.append(f"{self.restarts} child restarts")
        self.sustained = not problems
        self.why = "; ".join(problems)


def _slope_growth(t: list[float], y: list[float], window: float) -> float:
    """Least-squares slope of y over t, times the window: how much y grew."""
    if len(t) < 3:
        return float("nan")
    x = np.asarray(t) - t[0]
    return float(np.polyfit(x, np.asarray(y), 1)[0] * window)


def _wait_window(meter: CpuMeter, seconds: float, alive: Any) -> str:
    """Sleep through the window, sampling CPU each second; '' or why it stopped."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        meter.sample()
        problem = alive()
        if problem:
            return str(problem)
    return ""


def _finish_cpu(trial: Trial, meter: CpuMeter, wall: float, busy0: float) -> None:
    roles = meter.by_role()
    trial.cpu = {k: v / wall * 100 for k, v in roles.items() if k != "server"}
    trial.server_cpu = roles.get("server", 0.0) / wall * 100
    trial.clients_cpu = sum(trial.cpu.values())
    trial.machine_cpu = (_machine_busy() - busy0) / wall * 100
    trial.other_cpu = max(0.0, trial.machine_cpu - trial.clients_cpu - trial.server_cpu)


# ---- edged ---------------------------------------------------------------------------


def _edged_config(
    tmp: Path, url: str, n: int, port: int, processor: str, process_fps: float, gray: bool
) -> Path:
    proc = 'type = "bench_plugins:AgeProbe"' if processor == "probe" else 'type = "null"'
    cap = f"process_fps = {process_fps}\n" if process_fps else ""
    cap += f'pixel_format = "{"gray" if gray else "bgr"}"\n'
    cams = "".join(
        f'\n[cameras.cam{i}]\nsource = "{url}"\n{cap}\n[cameras.cam{i}.processor]\n{proc}\n'
        for i in range(n)
    )
    toml = f"""
[events]
path = "{tmp / "events.jsonl"}"

[metrics]
listen = "127.0.0.1:{port}"

[logging]
level = "warning"
format = "human"

[daemon]
state_dir = "{tmp / "state"}"
{cams}"""
    path = tmp / "edged.toml"
    path.write_text(toml)
    return path


_SAMPLE = re.compile(r"^(edged_[a-z_]+)\{([^}]*)\}\s+([0-9.eE+-]+|NaN)$")


def _scrape(port: int) -> dict[str, dict[str, float]]:
    """{metric: {camera (or the label text): value}} from edged's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, labels, value = m.groups()
        cam = re.search(r'camera="([^"]*)"', labels)
        out.setdefault(name, {})[cam.group(1) if cam else labels] = float(value)
    return out


def trial_edged(
    url: str,
    n: int,
    seconds: float,
    warmup: float,
    processor: str,
    workdir: Path,
    design: str,
    process_fps: float = 0.0,
) -> Trial:
    trial = Trial(design, n)
    tmp = Path(tempfile.mkdtemp(prefix=f"edged-{n}-", dir=workdir))
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(TESTS), str(BENCH), env.get("PYTHONPATH")])
    )
    env.pop("NOTIFY_SOCKET", None)
    cmd = [
        sys.executable,
        "-m",
        "edged",
        "run",
        "--config",
        str(_edged_config(tmp, url, n, port, processor, process_fps, design == "edged_gray")),
    ]
    log = open(tmp / "stderr.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        cwd=str(tmp), start_new_session=True,
    )  # fmt: skip
    cams = [f"cam{i}" for i in range(n)]
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if proc.poll() is not None:
                trial.error = f"edged exited with status {proc.returncode}"
                return trial
            if time.monotonic() > deadline:
                trial.error = f"not every camera delivered a frame within {READY_TIMEOUT:.0f} s"
                return trial
            with contextlib.suppress(OSError):
                decoded = _scrape(port).get("edged_frames_decoded_total", {})
                if all(decoded.get(c, 0) > 0 for c in cams):
                    break
            time.sleep(0.5)
        time.sleep(warmup)
        server_pid = _server_pid
        meter = CpuMeter({"clients": [proc.pid], "server": [server_pid] if server_pid else []})
        m0 = _scrape(port)
        t0, w0 = time.monotonic(), time.time()
        busy0 = _machine_busy()
        _renice_server()
        meter.begin()
        stop = _wait_window(
            meter,
            seconds,
            lambda: None if proc.poll() is None else f"edged exited ({proc.returncode})",
        )
        meter.memory()
        m1 = _scrape(port)
        wall = time.monotonic() - t0
        w1 = time.time()
        if stop:
            trial.error = stop
            return trial
        trial.seconds = wall
        _finish_cpu(trial, meter, wall, busy0)
        trial.pss_mib = meter.pss
        dec0, dec1 = (
            m0.get("edged_frames_decoded_total", {}),
            m1.get("edged_frames_decoded_total", {}),
        )
        pro0, pro1 = (
            m0.get("edged_frames_processed_total", {}),
            m1.get("edged_frames_processed_total", {}),
        )
        trial.fps = [(dec1.get(c, 0) - dec0.get(c, 0)) / wall for c in cams]
        trial.processed_fps = [(pro1.get(c, 0) - pro0.get(c, 0)) / wall for c in cams]
        r0 = sum(m0.get("edged_child_restarts_total", {}).values())
        r1 = sum(m1.get("edged_child_restarts_total", {}).values())
        trial.restarts = int(r1 - r0)
        if processor == "probe":
            _edged_ages(trial, tmp / "events.jsonl", cams, w0, w1, wall)
        return trial
    finally:
        _stop(proc)
        log.close()


def _edged_ages(
    trial: Trial, path: Path, cams: list[str], w0: float, w1: float, wall: float
) -> None:
    per: dict[str, tuple[list[float], list[float]]] = {c: ([], []) for c in cams}
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        for line in f:
            with contextlib.suppress(ValueError, KeyError):
                r = json.loads(line)
                age = r["data"].get("true_age_ms")
                t = dt.datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp()
                if age is None or not w0 <= t <= w1 or r["camera"] not in per:
                    continue
                per[r["camera"]][0].append(t)
                per[r["camera"]][1].append(float(age))
    ages = [a for _, ys in per.values() for a in ys]
    if ages:
        trial.age_p95_ms = float(np.percentile(ages, 95))
        trial.age_max_ms = float(max(ages))
    trial.lag_growth_ms = [_slope_growth(ts, ys, wall) for ts, ys in per.values() if len(ts) >= 3]


# ---- ffmpeg --------------------------------------------------------------------------


class Progress:
    """Reads ``ffmpeg -progress pipe:1``; keeps the latest (time, frame, out_time)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.latest: tuple[float, int, float] | None = None  # monotonic, frame, out_time s
        self._block: dict[str, str] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            key, _, value = raw.decode(errors="replace").strip().partition("=")
            self._block[key] = value
            if key == "progress":
                with contextlib.suppress(ValueError):
                    us = self._block.get("out_time_us", "N/A")
                    out_time = int(us) / 1e6 if us not in ("N/A", "") else 0.0
                    self.latest = (time.monotonic(), int(self._block.get("frame", "0")), out_time)
                self._block = {}


def _client_cmd(design: str, url: str) -> list[str]:
    if design in PLAIN:
        return [sys.executable, str(BENCH / "plain_reader.py"), url, PLAIN[design]]
    return [
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error",
        "-rtsp_transport", "tcp", "-i", url,
        *(["-pix_fmt", "bgr24"] if design == "ffmpeg_bgr" else []),
        "-f", "null", "-",
        "-progress", "pipe:1", "-stats_period", "0.5",
    ]  # fmt: skip


def trial_ffmpeg(
    url: str, n: int, seconds: float, warmup: float, workdir: Path, design: str = "ffmpeg"
) -> Trial:
    """N client processes that report like ``ffmpeg -progress``: FFmpeg or ``plain_reader.py``."""
    trial = Trial(design, n)
    cmd = _client_cmd(design, url)
    what = "plain_reader" if design in PLAIN else "ffmpeg"
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for i in range(n):
            log = open(workdir / f"{design}-{n}-{i}.log", "wb")  # noqa: SIM115 - closed below
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    start_new_session=True,
                )
            )
        progress = [Progress(p) for p in procs]

        def dead() -> str | None:
            gone = [p.returncode for p in procs if p.poll() is not None]
            return f"{len(gone)} {what} processes exited (status {gone[0]})" if gone else None

        deadline = time.monotonic() + READY_TIMEOUT
        while not all(p.latest and p.latest[1] > 0 for p in progress):
            if dead():
                trial.error = str(dead())
                return trial
            if time.monotonic() > deadline:
                trial.error = f"not every {what} decoded a frame within {READY_TIMEOUT:.0f} s"
                return trial
            time.sleep(0.5)
        time.sleep(warmup)
        meter = CpuMeter(
            {"clients": [p.pid for p in procs], "server": [_server_pid] if _server_pid else []}
        )
        busy0 = _machine_busy()
        t0 = time.monotonic()
        _renice_server()
        meter.begin()
        first = [p.latest for p in progress]
        # the lag series: wall time minus stream time, every progress report
        series: list[tuple[list[float], list[float]]] = [([], []) for _ in procs]
        end = t0 + seconds
        stop = ""
        seen: list[Any] = [None] * n
        while (left := end - time.monotonic()) > 0 and not stop:
            time.sleep(min(0.5, left))
            meter.sample()
            for i, p in enumerate(progress):
                if p.latest is not None and p.latest is not seen[i]:
                    seen[i] = p.latest
                    series[i][0].append(p.latest[0])
                    series[i][1].append((p.latest[0] - p.latest[2]) * 1000)
            stop = dead() or ""
        meter.memory()
        wall = time.monotonic() - t0
        if stop:
            trial.error = stop
            return trial
        last = [p.latest for p in progress]
        trial.seconds = wall
        _finish_cpu(trial, meter, wall, busy0)
        trial.pss_mib = meter.pss
        for a, b in zip(first, last, strict=True):
            assert a is not None and b is not None
            trial.fps.append((b[1] - a[1]) / (b[0] - a[0]) if b[0] > a[0] else 0.0)
        trial.lag_growth_ms = [_slope_growth(ts, ys, wall) for ts, ys in series if len(ts) >= 3]
        return trial
    finally:
        for child in procs:
            _stop(child)
        for log in logs:
            log.close()


# --------------------------------------------------------------------------------------
# Running the search
# --------------------------------------------------------------------------------------

_server_pid: int | None = None
_server_nice = -10


def _renice_server() -> None:
    """Give every thread of the RTSP server the ``--server-nice`` priority.

    The server stands for cameras, which are not on this machine: once the
    clients saturate both cores a normal-priority server is scheduled late and
    produces fewer than 25 frames per second, which would fail the trial for the
    server's sake. Linux keeps nice per thread; threads inherit it from the thread
    that creates them, so all of them are set, after start and again when the
    window starts (GStreamer creates streaming threads when the first client plays).
    """
    if _server_pid is None or _server_nice == 0:
        return
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{_server_pid}/task"):
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, int(tid), _server_nice)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_GRACE)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    for name in os.listdir("/dev/shm"):
        if name.startswith(f"edged_{proc.pid}_"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join("/dev/shm", name))


def run_trial(design: str, n: int, args: argparse.Namespace, workdir: Path) -> Trial:
    """One trial against a fresh RTSP server (a trial that breaks one spoils no other)."""
    global _server_pid
    print(f"  {design} x{n}: ...", file=sys.stderr, flush=True)
    capped = args.capped_fps if design == "edged_capped" else 0.0
    width = args.height * 16 // 9
    server = RtspServer(width=width, height=args.height, fps=args.fps, pattern="moving")
    try:
        server.start()
        _server_pid = server.pid
        _renice_server()
        url = server.url
        if design.startswith("edged"):
            t = trial_edged(
                url, n, args.seconds, args.warmup, args.processor, workdir, design, capped
            )
        else:
            t = trial_ffmpeg(url, n, args.seconds, args.warmup, workdir, design)
        if not server.running:
            t.error = t.error or "the RTSP server died"
    finally:
        server.stop()
        _server_pid = None
    t.judge(args.fps, args.max_lag_growth, args.require_processed, capped)
    if t.seconds and t.server_cpu < 1.0:  # it encodes 25 fps: never this idle while serving
        t.sustained = False
        t.why = "; ".join(filter(None, [t.why, "the RTSP server was idle (stalled?)"]))
    fps = f"{min(t.fps):.2f}" if t.fps else "-"
    grow = max((g for g in t.lag_growth_ms if g == g), default=float("nan"))
    print(
        f"  {design} x{n}: {'sustained' if t.sustained else 'NOT sustained'}; min fps {fps}, "
        f"lag growth max {grow:.0f} ms, clients {t.clients_cpu:.0f}%, server "
        f"{t.server_cpu:.0f}%, other {t.other_cpu:.0f}%{'; ' + t.why if t.why else ''}",
        file=sys.stderr,
        flush=True,
    )
    return t


def search(design: str, args: argparse.Namespace, workdir: Path) -> list[Trial]:
    trials: dict[int, Trial] = {}

    def run(n: int) -> bool:
        if n not in trials:
            trials[n] = run_trial(design, n, args, workdir)
        return trials[n].sustained

    if args.counts:
        for n in args.counts:
            run(n)
        return [trials[n] for n in sorted(trials)]
    good, bad = 0, None
    n = args.start
    while n <= args.max:
        if run(n):
            good = n
            n *= 2
        else:
            bad = n
            break
    if bad is None and good < args.max:
        if run(args.max):
            good = args.max
        else:
            bad = args.max
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        if run(mid):
            good = mid
        else:
            bad = mid
    return [trials[n] for n in sorted(trials)]


def best(trials: list[Trial]) -> Trial | None:
    ok = [t for t in trials if t.sustained]
    return max(ok, key=lambda t: t.n) if ok else None


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def _f(v: float | None, fmt: str = ".0f") -> str:
    return "-" if v is None or v != v else format(v, fmt)


def report(results: dict[str, list[Trial]], args: argparse.Namespace, started: dt.datetime) -> str:
    lines = [
        f"Scale: {args.height}p{args.fps} H.264 streams from one shared RTSP test server, "
        f"{args.seconds:.0f} s "
        f"per trial, {started:%Y-%m-%d %H:%M} UTC, {psutil.cpu_count()} CPUs; sustained = every "
        f"stream >= {DELIVERED * args.fps:.2f} fps and its lag growing < {args.max_lag_growth:.0f} "
        "ms over the window"
        + (" and edged's processors seeing >= 95% of the frames" if args.require_processed else ""),
        "",
        "| design | streams | sustained | fps min / mean | processed fps min / mean "
        "| lag growth max ms "
        "| age p95 / max ms | clients CPU % | per stream % | server CPU % | other CPU % "
        "| clients PSS MiB | why not |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for design, trials in results.items():
        for t in trials:
            grow = max((g for g in t.lag_growth_ms if g == g), default=float("nan"))
            fps = f"{min(t.fps):.2f} / {np.mean(t.fps):.2f}" if t.fps else "-"
            age = f"{_f(t.age_p95_ms)} / {_f(t.age_max_ms)}" if t.age_p95_ms is not None else "-"
            done = (
                f"{min(t.processed_fps):.1f} / {np.mean(t.processed_fps):.1f}"
                if t.processed_fps
                else "-"
            )
            lines.append(
                f"| {design} | {t.n} | {'yes' if t.sustained else '**no**'} | {fps} | {done} "
                f"| {_f(grow)} "
                f"| {age} | {t.clients_cpu:.0f} | {t.clients_cpu / t.n:.1f} | {t.server_cpu:.0f} "
                f"| {t.other_cpu:.0f} | {t.pss_mib:.0f} | {t.why} |"
            )
    lines.append("")
    b = {d: best(ts) for d, ts in results.items()}
    for d, bt in b.items():
        if bt is None:
            lines.append(f"- {d}: no N sustained")
            continue
        per = bt.clients_cpu / bt.n
        cores = psutil.cpu_count() or 1
        roles = ", ".join(f"{k} {v / bt.n:.1f}" for k, v in sorted(bt.cpu.items()))
        lines.append(
            f"- {d}: **{bt.n} streams** sustained (server {bt.server_cpu:.0f}%, other "
            f"{bt.other_cpu:.0f}% of a core beside them); clients {per:.1f}% of a core per "
            f"stream ({roles}); {cores * 100 / per:.0f} streams' worth of CPU on {cores} free cores"
        )
    pairs = (
        ("edged", "ffmpeg", "bare decode"),
        ("edged_capped", "ffmpeg", "bare decode"),
        ("edged_gray", "ffmpeg", "bare decode"),
        ("edged", "ffmpeg_bgr", "decode to BGR"),
        ("opencv", "ffmpeg", "bare decode"),
        ("opencv_bgr", "ffmpeg", "bare decode"),
        ("pyav_gray", "ffmpeg", "bare decode"),
        ("edged", "opencv_bgr", "a plain OpenCV loop converting every frame"),
        ("edged_gray", "pyav_gray", "a plain PyAV loop taking every Y plane"),
    )
    for mine, ref, what in pairs:
        e, f = b.get(mine), b.get(ref)
        if e is None or f is None:
            continue
        goal = " (goal >= 90%)" if ref == "ffmpeg" and mine.startswith("edged") else ""
        lines.append(
            f"- {mine} / {what}: {e.n} / {f.n} = **{e.n / f.n:.0%}**{goal}; CPU per "
            f"stream {e.clients_cpu / e.n:.1f}% / {f.clients_cpu / f.n:.1f}% = "
            f"{(e.clients_cpu / e.n) / (f.clients_cpu / f.n):.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="measured per trial (30)")
    ap.add_argument("--warmup", type=float, default=8.0, help="after every stream delivers (8)")
    ap.add_argument("--designs", nargs="+", choices=DESIGNS, default=list(DESIGNS))
    ap.add_argument("--counts", type=int, nargs="+", help="these N only (default: search)")
    ap.add_argument("--start", type=int, default=4, help="first N of the search (4)")
    ap.add_argument("--max", type=int, default=96, help="largest N the search tries (96)")
    ap.add_argument("--height", type=int, default=720, choices=(360, 720, 1080))
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--processor", choices=("probe", "null"), default="probe")
    ap.add_argument(
        "--capped-fps", type=float, default=5.0, help="edged_capped: process_fps (default 5)"
    )
    ap.add_argument("--max-lag-growth", type=float, default=500.0, help="ms over the window")
    ap.add_argument("--results", type=Path, default=BENCH / "results")
    ap.add_argument("--publish", action="store_true", help="copy the PNG to bench/img/scale.png")
    ap.add_argument("--from-json", type=Path, help="print the report and plot of a saved run")
    ap.add_argument(
        "--require-processed",
        action="store_true",
        help="edged: its processor must also see >= 95%% of the frames (not only the reader)",
    )
    ap.add_argument(
        "--server-nice",
        type=int,
        default=-10,
        help="nice of the RTSP server's threads (-10: it keeps 25 fps when the clients "
        "saturate the CPU; needs root, else it stays at 0)",
    )
    args = ap.parse_args(argv)
    global _server_nice
    _server_nice = args.server_nice
    if args.from_json:
        return rerender(args)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    problem = check_gstreamer()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    started = dt.datetime.now(dt.UTC)
    print(
        f"edged scale benchmark {started:%Y-%m-%d %H:%M} UTC: {platform.node()}, "
        f"{psutil.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results: dict[str, list[Trial]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="edged-scale-") as workdir:
            for design in args.designs:
                results[design] = search(design, args, Path(workdir))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    text = report(results, args, started)
    print()
    print(text)
    path = write_results(
        args.results,
        started,
        "scale",
        {
            "settings": settings(args),
            "cpus": psutil.cpu_count(),
            "trials": {d: [asdict(t) for t in ts] for d, ts in results.items()},
            "best": {d: (t.n if (t := best(ts)) else None) for d, ts in results.items()},
            "report_markdown": text,
        },
    )
    print(f"\nwrote {path}")
    png = plot(
        results, path.with_suffix(".png"), text.splitlines()[0].split("; sustained")[0], args.fps
    )
    if png:
        print(f"wrote {png}")
        if args.publish:
            img = BENCH / "img"
            img.mkdir(exist_ok=True)
            shutil.copyfile(png, img / "scale.png")
            print(f"copied to {img / 'scale.png'}")
    return 0


def rerender(args: argparse.Namespace) -> int:
    """The report and the plot of a saved run (its JSON), with today's code."""
    data = json.loads(args.from_json.read_text())
    for key in ("seconds", "fps", "height", "max_lag_growth", "require_processed"):
        setattr(args, key, data["settings"].get(key, False))
    started = dt.datetime.fromisoformat(data["started_utc"])
    results = {d: [Trial(**t) for t in ts] for d, ts in data["trials"].items()}
    text = report(results, args, started)
    print(text)
    png = plot(results, args.from_json.with_suffix(".png"), text.splitlines()[0].split("; sus")[0])
    if png:
        print(f"\nwrote {png}")
        if args.publish:
            (BENCH / "img").mkdir(exist_ok=True)
            shutil.copyfile(png, BENCH / "img" / "scale.png")
    return 0


def plot(results: dict[str, list[Trial]], path: Path, title: str, fps: float = 25.0) -> Path | None:
    """Clients' CPU and the lowest stream's fps against N, per design."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    colors = {
        "edged": "#d62728",
        "edged_capped": "#ff9896",
        "edged_gray": "#ff7f0e",
        "ffmpeg": "#1f77b4",
        "ffmpeg_bgr": "#2ca02c",
        "opencv": "#9467bd",
        "opencv_bgr": "#8c564b",
        "pyav_gray": "#e377c2",
    }
    for design, trials in results.items():
        ts = [t for t in trials if not t.error and t.fps]
        n = [t.n for t in ts]
        c = colors.get(design)
        ax1.plot(n, [t.clients_cpu for t in ts], "o-", color=c, label=f"{design}: clients")
        ax1.plot(
            n, [t.server_cpu for t in ts], "x:", color=c, alpha=0.6, label=f"server ({design} run)"
        )
        ax2.plot(n, [min(t.fps) for t in ts], "o-", color=c, label=design)
        for t in ts:
            if not t.sustained:
                ax2.plot([t.n], [min(t.fps)], "o", mfc="white", color=c, ms=9)
    ax1.axhline((psutil.cpu_count() or 1) * 100, color="grey", lw=0.8, ls="--")
    ax1.set_xlabel("streams")
    ax1.set_ylabel("CPU, % of one core")
    ax1.legend(fontsize=8, loc="upper left")
    ax2.axhline(DELIVERED * fps, color="grey", lw=0.8, ls="--")
    ax2.set_xlabel("streams")
    ax2.set_ylabel("fps of the slowest stream (open: not sustained)")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
