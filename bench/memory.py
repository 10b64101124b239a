"""Memory of the whole edged process tree against the number of cameras.

    .venv/bin/python bench/memory.py [--counts 1 2 4 8] [--seconds 12] [--rounds 1]
                                     [--methods forkserver spawn shared-200 own-200]
                                     [--results bench/results] [--publish]

For each variant and each N, one ``python -m edged run`` with N synthetic
640x360 25 fps cameras. The variants alternate at every N, so drift of the
machine hits all alike:

* ``forkserver``: each camera its own ``null`` processor (a reader and a worker
  process per camera), children forked from the preloaded server (the default);
* ``spawn``: the same, children spawned (``EDGED_START_METHOD=spawn``, edged
  before issue 17);
* ``shared-200``: every camera names one ``[processors.model]`` whose
  ``setup()`` allocates and touches 200 MiB (``bench_plugins.Ballast``, a
  stand-in for a model's weights): one worker process for all cameras;
* ``own-200``: the same processor inline in each camera: a copy per camera,
  what a model cost before shared processors.

* PSS after ``--seconds`` from the start, summed over the supervisor and all its
  descendants: readers, workers, the fork server, the resource tracker
  (``psutil``'s ``memory_full_info().pss``: each shared page divided among the
  processes that map it, so the sum is what the tree costs the machine).
  The per-camera slope is a least-squares line through (N, PSS).
* start-up: from starting ``edged run`` to the first frame processed, of any
  camera and of every camera (polled on ``/metrics`` every 20 ms, so up to
  20 ms late; the command's own imports are included).

Prints a Markdown table, writes ``<UTC>Z-memory.json`` and a PNG into
``--results``; ``--publish`` copies the PNG to ``bench/img/memory.png``.
Goals (issue 17): 8 cameras <= 300 MiB in all, each further camera <= 25 MiB
(``forkserver``); 8 cameras sharing a 200 MiB model <= 500 MiB (``shared-200``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
TESTS = BENCH.parent / "tests"
sys.path.insert(0, str(TESTS))

from components.rtsp import free_port  # noqa: E402
from resultfile import settings, write_results  # noqa: E402

METHODS = ("forkserver", "spawn", "shared-200", "own-200")
GOAL_TOTAL_8 = 300.0  # MiB, 8 cameras
GOAL_SHARED_8 = 500.0  # MiB, 8 cameras sharing one processor holding 200 MiB
BALLAST_MIB = 200
GOAL_SLOPE = 25.0  # MiB per further camera
READY_TIMEOUT = 120.0
_PROCESSED = re.compile(r'^edged_frames_processed_total\{camera="([^"]+)"\}\s+([0-9.eE+-]+)$')


@dataclass
class Trial:
    method: str
    n: int
    pss_mib: float = 0.0
    by_role: dict[str, float] = field(default_factory=dict)  # MiB
    processes: int = 0
    first_any_s: float = 0.0  # start -> first processed frame of any camera
    first_all_s: float = 0.0  # start -> every camera has processed a frame
    error: str = ""


def _role(p: psutil.Process, root: int) -> str:
    try:
        if p.pid == root:
            return "supervisor"
        name = p.name()
        if name.startswith(("reader:", "worker:")):
            return name.split(":", 1)[0]
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return "?"
    if "multiprocessing.forkserver" in cmd:
        return "fork server"
    if "resource_tracker" in cmd:
        return "resource tracker"
    return name


def tree_pss(pid: int) -> tuple[float, dict[str, float], int]:
    """PSS in MiB of ``pid`` and every descendant: total, by role, number of processes."""
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    by_role: dict[str, float] = {}
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            mib = p.memory_full_info().pss / 2**20
            role = _role(p, pid)
            by_role[role] = by_role.get(role, 0.0) + mib
            total += mib
    return total, by_role, len(procs)


def _config(tmp: Path, n: int, port: int, method: str) -> Path:
    ballast = f'type = "bench_plugins:Ballast"\nmib = {BALLAST_MIB}\n'
    shared = method == "shared-200"
    cams = "".join(
        f'\n[cameras.cam{i}]\nsource = "synthetic"\nwidth = 640\nheight = 360\nfps = 25\n'
        + ('processor = "model"\n' if shared else f"[cameras.cam{i}.processor]\n")
        + ("" if shared else ballast if method == "own-200" else 'type = "null"\n')
        for i in range(n)
    )
    if shared:
        cams = f"\n[processors.model]\n{ballast}" + cams
    path = tmp / "edged.toml"
    path.write_text(
        f'[events]\npath = "{tmp / "events.jsonl"}"\n'
        f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
        f'[logging]\nlevel = "warning"\nformat = "human"\n'
        f'[daemon]\nstate_dir = "{tmp / "state"}"\n{cams}'
    )
    return path


def _processed(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        text = r.read().decode()
    return {m[1]: float(m[2]) for line in text.splitlines() if (m := _PROCESSED.match(line))}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def trial(method: str, n: int, seconds: float, workdir: Path) -> Trial:
    t = Trial(method, n)
    tmp = Path(tempfile.mkdtemp(prefix=f"{method}-{n}-", dir=workdir))
    port = free_port()
    env = dict(
        os.environ,
        EDGED_START_METHOD="spawn" if method == "spawn" else "forkserver",
        PYTHONPATH=os.pathsep.join([str(BENCH), str(TESTS)]),
    )
    env.pop("NOTIFY_SOCKET", None)
    cmd = [sys.executable, "-m", "edged", "run", "--config", str(_config(tmp, n, port, method))]
    log = open(tmp / "stderr.log", "wb")  # noqa: SIM115 - closed below
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        cwd=str(tmp), start_new_session=True,
    )  # fmt: skip
    try:
        while not t.first_all_s:
            if proc.poll() is not None:
                t.error = f"edged exited with status {proc.returncode}"
                return t
            if time.monotonic() - t0 > READY_TIMEOUT:
                t.error = f"not every camera processed a frame within {READY_TIMEOUT:.0f} s"
                return t
            with contextlib.suppress(OSError):
                done = [c for c, v in _processed(port).items() if v > 0]
                now = time.monotonic() - t0
                if done and not t.first_any_s:
                    t.first_any_s = now
                if len(done) == n:
                    t.first_all_s = now
            time.sleep(0.02)
        time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
        t.pss_mib, t.by_role, t.processes = tree_pss(proc.pid)
        return t
    finally:
        _stop(proc)
        log.close()


def slope(trials: list[Trial]) -> tuple[float, float]:
    """Least-squares (MiB per camera, intercept) through (N, PSS)."""
    xs = [float(t.n) for t in trials]
    ys = [t.pss_mib for t in trials]
    if len(set(xs)) < 2:
        return float("nan"), float("nan")
    fit = statistics.linear_regression(xs, ys)
    return fit.slope, fit.intercept


def _median(trials: list[Trial], method: str, n: int, key: str) -> float | None:
    vals = [getattr(t, key) for t in trials if t.method == method and t.n == n and not t.error]
    return statistics.median(vals) if vals else None


def report(trials: list[Trial], methods: list[str], counts: list[int], started: dt.datetime) -> str:
    ok = [t for t in trials if not t.error]
    lines = [
        f"edged memory, {started:%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{psutil.cpu_count()} CPUs: N synthetic 640x360 25 fps cameras (variants: see "
        "bench/memory.py's docstring)",
        "",
        "| cameras | " + " | ".join(f"{m} PSS MiB" for m in methods) + " | "
        + " | ".join(f"{m} start-up s (any / all)" for m in methods) + " |",
        "|---" * (1 + 2 * len(methods)) + "|",
    ]  # fmt: skip
    for n in counts:
        pss = [_median(ok, m, n, "pss_mib") for m in methods]
        ups = [
            (_median(ok, m, n, "first_any_s"), _median(ok, m, n, "first_all_s")) for m in methods
        ]
        cells = [f"{v:.0f}" if v is not None else "failed" for v in pss]
        cells += [f"{a:.2f} / {b:.2f}" if a and b else "failed" for a, b in ups]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    fits = {m: slope([t for t in ok if t.method == m]) for m in methods}
    lines.append(
        "| MiB per further camera (fit) | "
        + " | ".join(f"{fits[m][0]:.1f}" for m in methods)
        + " |" + " |" * len(methods)
    )  # fmt: skip
    lines.append("")
    biggest = max(counts)
    for m in methods:
        last = [t for t in ok if t.method == m and t.n == biggest]
        if last:
            roles = ", ".join(f"{k} {v:.0f}" for k, v in sorted(last[-1].by_role.items()))
            lines.append(f"- {m}, {biggest} cameras, PSS by role (MiB): {roles}")
    for t in trials:
        if t.error:
            lines.append(f"- {t.method}, {t.n} cameras: {t.error}")
    if "forkserver" in methods and 8 in counts:
        total = _median(ok, "forkserver", 8, "pss_mib")
        per = fits["forkserver"][0]
        verdict = [
            f"8 cameras {total:.0f} MiB (goal <= {GOAL_TOTAL_8:.0f}: "
            f"{'met' if total is not None and total <= GOAL_TOTAL_8 else 'NOT met'})"
            if total is not None
            else "8 cameras: failed",
            f"{per:.1f} MiB per further camera (goal <= {GOAL_SLOPE:.0f}: "
            f"{'met' if per <= GOAL_SLOPE else 'NOT met'})",
        ]
        lines.append("- forkserver: " + "; ".join(verdict))
    if "shared-200" in methods and 8 in counts:
        total = _median(ok, "shared-200", 8, "pss_mib")
        own = _median(ok, "own-200", 8, "pss_mib")
        verdict_ = "failed" if total is None else (
            f"{total:.0f} MiB (goal <= {GOAL_SHARED_8:.0f}: "
            f"{'met' if total <= GOAL_SHARED_8 else 'NOT met'})"
        )  # fmt: skip
        if own is not None:
            verdict_ += f"; a copy per camera: {own:.0f} MiB"
        lines.append(f"- 8 cameras sharing one {BALLAST_MIB} MiB processor: " + verdict_)
    return "\n".join(lines)


def plot(trials: list[Trial], methods: list[str], path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colors = {
        "forkserver": "#d62728", "spawn": "#1f77b4", "shared-200": "#2ca02c", "own-200": "#9467bd"
    }  # fmt: skip
    for m in methods:
        ts = sorted((t for t in trials if t.method == m and not t.error), key=lambda t: t.n)
        if not ts:
            continue
        per, base = slope(ts)
        ax.plot([t.n for t in ts], [t.pss_mib for t in ts], "o", color=colors.get(m))
        xs = [min(t.n for t in ts), max(t.n for t in ts)]
        ax.plot(xs, [base + per * x for x in xs], "-", color=colors.get(m),
                label=f"{m}: {per:.1f} MiB per camera")  # fmt: skip
    ax.plot([8], [GOAL_TOTAL_8], "k*", ms=10, label=f"goal: 8 cameras <= {GOAL_TOTAL_8:.0f} MiB")
    if "shared-200" in methods:
        goal = f"goal: 8 sharing a {BALLAST_MIB} MiB model <= {GOAL_SHARED_8:.0f} MiB"
        ax.plot([8], [GOAL_SHARED_8], "g*", ms=10, label=goal)
    ax.set_xlabel("cameras (each a reader and a worker process)")
    ax.set_ylabel("PSS of the whole process tree, MiB")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--seconds", type=float, default=12.0, help="from start to measuring (12)")
    ap.add_argument("--rounds", type=int, default=1, help="trials per method and N (1)")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--results", type=Path, default=BENCH / "results")
    ap.add_argument("--publish", action="store_true", help="copy the PNG to bench/img/memory.png")
    args = ap.parse_args(argv)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    started = dt.datetime.now(dt.UTC)
    print(
        f"edged memory benchmark {started:%Y-%m-%d %H:%M} UTC: {psutil.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    trials: list[Trial] = []
    try:
        with tempfile.TemporaryDirectory(prefix="edged-memory-") as workdir:
            for _ in range(args.rounds):
                for n in args.counts:
                    for method in args.methods:
                        t = trial(method, n, args.seconds, Path(workdir))
                        trials.append(t)
                        print(
                            f"  {method:10} {n:2} cameras: "
                            + (t.error or f"{t.pss_mib:.0f} MiB, first frame {t.first_any_s:.2f}s"),
                            flush=True,
                        )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    text = report(trials, args.methods, args.counts, started)
    print()
    print(text)
    path = write_results(
        args.results,
        started,
        "memory",
        {
            "settings": settings(args),
            "cpus": psutil.cpu_count(),
            "trials": [asdict(t) for t in trials],
            "report_markdown": text,
        },
    )
    print(f"\nwrote {path}")
    png = plot(
        trials, args.methods, path.with_suffix(".png"), text.splitlines()[0].replace(": ", ":\n", 1)
    )
    if png:
        print(f"wrote {png}")
        if args.publish:
            (BENCH / "img").mkdir(exist_ok=True)
            shutil.copyfile(png, BENCH / "img" / "memory.png")
            print(f"copied to {BENCH / 'img' / 'memory.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
