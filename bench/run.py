"""The whole comparison in one command: edged against every common design, one table.

    .venv/bin/python bench/run.py [--seconds 30] [--heights 720 1080] [--modes ...]
                                  [--delay 0.2] [--work sleep|busy] [--no-handoff]
                                  [--results bench/results] [--publish]

For each height (720p25 and 1080p25 by default) it starts the GStreamer RTSP test
camera (its frames carry their capture time in the pixels) and runs, one after
the other against that camera, a processor that takes ``--delay`` seconds per
frame in each design of ``bench/freshness.py``: edged (the real daemon), the
naive loop, the blog's Manager list, a threaded newest-frame reader with OpenCV's
default decoder threads and with one, and vidgear's CamGear (with and without its
frame queue) where vidgear is installed. The designs run one at a time, not all
at once, so that none takes CPU from another on this small machine; they are
side by side in the table. Then it runs ``bench/handoff.py`` (the per-frame cost
of handing a frame to another process; ``--no-handoff`` skips it).

It prints one Markdown table (ratios against edged) and the goals of issue 7
measured in this run, writes everything (per-frame ages included) to
``<results>/<UTC date and time>-freshness.json`` and draws two PNGs there:
the age of each processed frame over time per design, and CPU and memory bars.
``--publish`` also copies the PNGs to ``bench/img/`` (tracked: the README shows them).

Plots need matplotlib (``pip install '.[bench]'``, which brings vidgear too);
without it the table and the JSON are still written.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import freshness as fr  # noqa: E402
from components.rtsp import check_gstreamer  # noqa: E402  (tests/ is on sys.path now)
from resultfile import write_results  # noqa: E402

FIRST_FRAME_GOAL_MS = 300.0
P95_LEAD_GOAL_MS = 40.0  # one frame interval at 25 fps
HANDOFF_GOAL_X_COPY = 0.1  # at 1080p, of one cache-hot np.copyto of the frame
COLORS = {
    "edged": "#d62728",
    "edged_gray": "#ff7f0e",
    "naive": "#7f7f7f",
    "threaded": "#1f77b4",
    "threaded1": "#17becf",
    "blog": "#9467bd",
    "camgear": "#8c564b",
    "camgear_latest": "#e377c2",
}


# --------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import cv2

    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    l3 = ""
    with contextlib.suppress(OSError):
        l3 = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
    vidgear = None
    if fr.have_vidgear():
        from importlib.metadata import version

        vidgear = version("vidgear")
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cpus": psutil.cpu_count(),
        "l3": l3,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "vidgear": vidgear,
        "loadavg_at_start": os.getloadavg(),
    }


def busy_processes(limit: int = 5) -> list[str]:
    """The processes using the most CPU over one second (to see what else ran)."""
    procs = list(psutil.process_iter(["pid", "name", "cmdline"]))
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    time.sleep(1.0)
    rows = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            pct = p.cpu_percent(None)
            if pct >= 5 and p.pid != os.getpid():
                cmd = " ".join(p.info["cmdline"] or [p.info["name"] or "?"])[:80]
                rows.append((pct, f"{pct:.0f}% {cmd}"))
    return [r for _, r in sorted(rows, reverse=True)[:limit]]


# --------------------------------------------------------------------------------------
# Goals (issue 7)
# --------------------------------------------------------------------------------------


def goals(sections: list[tuple[int, list[fr.Run]]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for height, runs in sections:
        by = {r.mode: r for r in runs if not r.error}
        for mode in ("edged", "edged_gray"):
            edged = by.get(mode)
            if edged is None:
                continue
            who = "" if mode == "edged" else f" ({fr.TITLES[mode]})"
            out.append(
                {
                    "goal": f"{height}p{who}: first frame processed after connect < "
                    f"{FIRST_FRAME_GOAL_MS:.0f} ms old",
                    "edged_ms": fr._num(edged.first_age),
                    "met": bool(edged.first_age < FIRST_FRAME_GOAL_MS),
                    "by_ms": fr._num(edged.first_age - FIRST_FRAME_GOAL_MS),
                }
            )
            threaded = by.get("threaded")
            if threaded is not None:
                e95, t95 = fr._pct(edged.true_age, 95), fr._pct(threaded.true_age, 95)
                out.append(
                    {
                        "goal": f"{height}p{who}: age p95 at least {P95_LEAD_GOAL_MS:.0f} ms "
                        "below the threaded reader's",
                        "edged_ms": fr._num(e95),
                        "threaded_ms": fr._num(t95),
                        "lead_ms": fr._num(t95 - e95),
                        "met": bool(t95 - e95 >= P95_LEAD_GOAL_MS),
                    }
                )
    return out


def handoff_goals(data: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Issue 7's handoff goal at 1080p, for a sleeping consumer and for a busy one."""
    rows = (data or {}).get("1080p", {})
    copy = rows.get("copy", {}).get("latency_p50_ms")
    wake = rows.get("wake", {}).get("x_copy")
    out: list[dict[str, Any]] = []
    for method, case in (
        ("edged", 'the worker asleep until the frame comes (freshness = "next", the default)'),
        ("ready", 'the frame there when the worker asks ("newest", a slow processor)'),
    ):
        x = rows.get(method, {}).get("x_copy")
        if x is None:
            continue
        out.append(
            {
                "goal": f"1080p: handoff under {HANDOFF_GOAL_X_COPY}x a cache-hot copy, {case}",
                "x_copy": x,
                "copy_ms": copy,
                "handoff_ms": rows[method]["latency_p50_ms"],
                "wake_x_copy": wake if method == "edged" else None,
                "met": bool(x < HANDOFF_GOAL_X_COPY),
            }
        )
    return out


def goal_lines(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    for g in results:
        mark = "met" if g["met"] else "NOT met"
        if "x_copy" in g:
            detail = f"{g['handoff_ms']:.3f} ms, {g['x_copy']:.2f}x a {g['copy_ms']:.3f} ms copy"
            if g.get("wake_x_copy") is not None:
                wake = g["wake_x_copy"]
                detail += (
                    f" (waking a sleeping process alone: {wake:.2f}x; "
                    f"edged's part above it: {g['x_copy'] - wake:.2f}x)"
                )
        elif any(v is None for k, v in g.items() if k.endswith("_ms")):
            detail = "not measured"
        elif "lead_ms" in g:
            detail = (
                f"edged {g['edged_ms']:.0f} ms, threaded reader {g['threaded_ms']:.0f} ms: "
                f"{g['lead_ms']:.0f} ms ahead"
            )
        else:
            detail = f"edged {g['edged_ms']:.0f} ms"
        lines.append(f"- {g['goal']}: {detail}: **{mark}**")
    return lines


# --------------------------------------------------------------------------------------
# Handoff
# --------------------------------------------------------------------------------------


def run_handoff(frames: int) -> tuple[str, dict[str, Any] | None]:
    """bench/handoff.py in a child process: its report and its JSON."""
    with tempfile.TemporaryDirectory(prefix="edged-handoff-") as tmp:
        path = Path(tmp) / "handoff.json"
        cmd = [sys.executable, str(BENCH / "handoff.py"), "--frames", str(frames)]
        cmd += ["--json", str(path)]
        print("  handoff.py ...", file=sys.stderr, flush=True)
        # its progress lines (stderr) go to ours
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            return f"handoff.py failed (status {proc.returncode}); see above", None
        text = proc.stdout.split("\n\n", 1)[-1].strip()  # without its header line
        text = text.rsplit("\n\n(", 1)[0]  # nor its "(NN s)" footer
        data = json.loads(path.read_text()) if path.exists() else None
        return text, data


# --------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------


def plots(sections: list[tuple[int, list[fr.Run]]], stem: Path, title: str) -> list[Path]:
    """Age over time per design; CPU and memory bars. Returns the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install '.[bench]')", file=sys.stderr)
        return []
    written = []

    # 1. age of each processed frame over time, one panel per height, log scale
    fig, axes = plt.subplots(
        1, len(sections), figsize=(6.5 * len(sections), 4.6), sharey=True, squeeze=False
    )
    for ax, (height, runs) in zip(axes[0], sections, strict=True):
        for r in runs:
            if r.error or not r.true_age:
                continue
            t = np.asarray(r.walls) - r.t0_wall
            lw = 2.2 if r.mode == "edged" else 1.2
            ls = "--" if r.mode in fr.VIDGEAR_MODES else "-"
            ax.plot(t, r.true_age, label=fr.TITLES[r.mode], color=COLORS.get(r.mode), lw=lw, ls=ls)
            if r.first_age == r.first_age:  # the first frame after connecting, as a dot
                ax.plot([r.first_wall - r.t0_wall], [r.first_age], "o", color=COLORS.get(r.mode))
        ax.set_yscale("log")
        ax.set_title(f"{height}p25 RTSP")
        ax.set_xlabel("seconds since the first processed frame (dots: that frame)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("age of the frame when processing starts, ms (log)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    path = stem.with_name(stem.name + "-age.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    # 2. CPU and PSS bars, a group per design, a bar per height
    modes: list[str] = []
    for _, runs in sections:
        modes += [r.mode for r in runs if r.mode not in modes]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.6))
    width = 0.8 / max(1, len(sections))
    x = np.arange(len(modes))
    for i, (height, runs) in enumerate(sections):
        by = {r.mode: r for r in runs if not r.error}
        cpu = [by[m].cpu * 100 if m in by else 0 for m in modes]
        pss = [by[m].pss_max if m in by else 0 for m in modes]
        off = (i - (len(sections) - 1) / 2) * width
        b1 = ax1.bar(x + off, cpu, width, label=f"{height}p")
        b2 = ax2.bar(x + off, pss, width, label=f"{height}p")
        ax1.bar_label(b1, fmt="%.0f", fontsize=7)
        ax2.bar_label(b2, fmt="%.0f", fontsize=7)
    for ax, what in ((ax1, "CPU, % of one core (user+sys / wall)"), (ax2, "PSS max, MiB")):
        ax.set_xticks(x, [fr.TITLES[m] for m in modes], rotation=25, ha="right", fontsize=8)
        ax.set_title(what)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = stem.with_name(stem.name + "-cost.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="per design and height (30)")
    ap.add_argument("--heights", type=int, nargs="+", default=[720, 1080], choices=(720, 1080))
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--delay", type=float, default=0.2, help="processor seconds per frame (0.2)")
    ap.add_argument("--work", choices=("sleep", "busy"), default="sleep")
    ap.add_argument(
        "--modes", nargs="+", choices=fr.MODES, default=None, help="default: all installed"
    )
    ap.add_argument("--no-handoff", action="store_true", help="skip bench/handoff.py")
    ap.add_argument("--handoff-frames", type=int, default=200)
    ap.add_argument("--results", type=Path, default=BENCH / "results")
    ap.add_argument("--publish", action="store_true", help="copy the PNGs to bench/img/")
    args = ap.parse_args(argv)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    problem = check_gstreamer()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    modes = args.modes or fr.default_modes()
    if "edged" in modes:
        modes = ["edged", *(m for m in modes if m != "edged")]
    started = dt.datetime.now(dt.UTC)
    info = machine()
    others = busy_processes()
    print(
        f"edged benchmark {started:%Y-%m-%d %H:%M} UTC: {info['cpus']} CPUs ({info['cpu']}), "
        f"Python {info['python']}, OpenCV {info['opencv']}, vidgear {info['vidgear'] or '-'}; "
        f"load average {info['loadavg_at_start'][0]:.2f}",
        flush=True,
    )
    if not fr.have_vidgear():
        print("  (vidgear is not installed: no CamGear columns; pip install '.[bench]')")
    for line in others:
        print(f"  busy at the start: {line}", flush=True)
    sections: list[tuple[int, list[fr.Run]]] = []
    handoff_text, handoff_data = "", None
    t0 = time.monotonic()
    try:
        for height in args.heights:
            runs = fr.run_all(modes, height, args.fps, args.delay, args.work, args.seconds)
            sections.append((height, runs))
        if not args.no_handoff:
            handoff_text, handoff_data = run_handoff(args.handoff_frames)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    took = time.monotonic() - t0
    heading = (
        f"Freshness: RTSP {' and '.join(f'{h}p' for h, _ in sections)} @ {args.fps} fps, "
        f"processor {args.delay * 1000:.0f} ms/frame ({args.work}), {args.seconds:.0f} s per "
        f"design, {started:%Y-%m-%d %H:%M} UTC, {info['cpus']} CPUs (ratios: x edged)"
    )
    goal_results = goals(sections) + handoff_goals(handoff_data)
    out = [
        "",
        heading,
        "",
        fr.table([(f"{h}p", runs) for h, runs in sections]),
        "",
        "Goals (issue 7), this run:",
        *goal_lines(goal_results),
        "",
    ]
    for h, runs in sections:
        out += fr.notes(runs, f"{h}p")
    if handoff_text:
        out += ["", handoff_text]
    print("\n".join(out))

    data = {
        "seconds_total": round(took, 1),
        "machine": info,
        "busy_at_start": others,
        "settings": {
            "seconds": args.seconds,
            "heights": args.heights,
            "fps": args.fps,
            "delay_s": args.delay,
            "work": args.work,
            "modes": modes,
        },
        "freshness": {f"{h}p": {r.mode: r.summary() for r in runs} for h, runs in sections},
        "goals": goal_results,
        "handoff": handoff_data,
        "table_markdown": out[3],
    }
    json_path = write_results(args.results, started, "freshness", data)
    stem = json_path.with_suffix("")
    print(f"\nwrote {json_path}")
    pngs = plots(sections, stem, heading.split(" (ratios")[0])
    for p in pngs:
        print(f"wrote {p}")
    if args.publish and pngs:
        img = BENCH / "img"
        img.mkdir(exist_ok=True)
        for p in pngs:
            dest = img / p.name.split("Z-", 1)[-1]  # freshness-age.png, freshness-cost.png
            shutil.copyfile(p, dest)
            print(f"copied to {dest}")
    print(f"({took / 60:.1f} min)")
    failed = any(r.error for _, runs in sections for r in runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
