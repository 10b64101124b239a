"""How soon is a camera that comes back streaming again? (issue 23)

A live RTSP test camera (640x360 at 25 fps, its creation time burned into
every frame) is read by edged's reader (``LatestFrameCapture``: the real reader
process, the camera's default backoff: restart_delay 1 s, restart_max_delay
30 s). The camera is stopped, kept away for an outage, and started again on
the same port, several times for each outage length. Printed, per length:

* ``back -> frame``: from the camera listening again to the first frame
  grabbed after it returned in the consumer's hands (p50, p95, max);
* ``age``: that frame's age when it got there (from its burned-in time);
* the load the away camera saw: full RTSP opens a minute and probes (TCP
  connects) a minute, for outages of a minute and more: after the first
  minute where it lasts longer than one.

Goals: p95 under 2 s for every length; at most 2 full opens a minute after the
first minute.

    .venv/bin/python bench/recovery.py           # 1 s, 10 s x 10; 60 s x 3; 5 min x 2: ~20 min
    .venv/bin/python bench/recovery.py --quick   # 1 s and 10 s x 5: ~2 min
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
TESTS = BENCH.parent / "tests"
sys.path.insert(0, str(TESTS))

from components.rtsp import RtspServer, check_gstreamer, decode_timestamp  # noqa: E402
from resultfile import write_results  # noqa: E402

from edged import LatestFrameCapture  # noqa: E402

FULL = {1.0: 10, 10.0: 10, 60.0: 3, 300.0: 2}  # outage seconds -> trials
QUICK = {1.0: 5, 10.0: 5}


def pct(values: list[float], p: float) -> float:
    """The p-th percentile, nearest rank (p95 of 10 values is the largest)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * p // 100)))
    return ordered[int(rank) - 1]


def opens(stats: dict[str, float]) -> float:
    return stats.get("opens", 0.0) + stats.get("open_failures", 0.0)


def per_minute(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, float]:
    return {
        "opens_per_min": (opens(after) - opens(before)) * 60 / seconds,
        "probes_per_min": (after.get("probes", 0) - before.get("probes", 0)) * 60 / seconds,
    }


def trial(cap: LatestFrameCapture, server: RtspServer, outage: float) -> dict[str, Any]:
    if cap.read_frame(timeout=30) is None:
        raise SystemExit("no frame from the camera before the outage")
    before = cap.stats
    server.stop()
    stopped = time.monotonic()
    after_first_minute: dict[str, float] | None = None
    while (left := outage - (time.monotonic() - stopped)) > 0:  # the outage itself
        if after_first_minute is None and time.monotonic() - stopped >= 60:
            after_first_minute = cap.stats
        time.sleep(min(0.2, left))
    load: dict[str, float] = {}
    if outage > 60 and after_first_minute is not None:
        load = per_minute(after_first_minute, cap.stats, time.monotonic() - stopped - 60)
    elif outage >= 60:
        load = per_minute(before, cap.stats, time.monotonic() - stopped)
    server.start()
    back = time.time()
    while True:
        frame = cap.read_frame(timeout=60)
        if frame is None:
            raise SystemExit(f"no frame within 60 s of the camera's return ({outage:g} s outage)")
        made = decode_timestamp(frame.image)
        if made is not None and made > back:
            now = time.time()
            return {"latency": now - back, "age": now - made, **load}


def fmt(value: float, digits: int) -> str:
    return "-" if value < 0 else f"{value:.{digits}f}"


def load_text(r: dict[str, Any]) -> str:
    if "opens_per_min" not in r:
        return "load counted for outages of 60 s and more"
    return f"{r['opens_per_min']:.1f} full opens/min, {r['probes_per_min']:.0f} probes/min"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="The full run takes about 20 minutes (1 s and 10 s outages x 10, 60 s x 3, "
        "5 min x 2); --quick about 2 minutes.",
    )
    ap.add_argument("--quick", action="store_true", help="1 s and 10 s outages, 5 trials each")
    ap.add_argument("--trials", type=int, help="trials per outage length (default: see above)")
    ap.add_argument(
        "--outages", type=float, nargs="+", help="outage lengths in seconds (default: see above)"
    )
    args = ap.parse_args()
    plan = dict(QUICK if args.quick else FULL)
    if args.outages:
        plan = {o: plan.get(o, 3) for o in args.outages}
    if args.trials:
        plan = dict.fromkeys(plan, args.trials)
    problem = check_gstreamer()
    if problem:
        raise SystemExit(problem)
    taken = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    with RtspServer(width=640, height=360, fps=25) as server:
        cap = LatestFrameCapture(server.url, name="recovery", timeout=30)
        try:
            for outage, trials in plan.items():
                results = []
                for i in range(trials):
                    r = trial(cap, server, outage)
                    results.append(r)
                    print(
                        f"outage {outage:g}s trial {i + 1}: back -> frame {r['latency']:.2f}s, "
                        f"age {r['age'] * 1000:.0f} ms, {load_text(r)}",
                        file=sys.stderr,
                        flush=True,
                    )
                    time.sleep(2.0)  # streaming for a moment between outages
                lat = [r["latency"] for r in results]
                age = [r["age"] for r in results]
                rows.append(
                    {
                        "outage_s": outage,
                        "trials": trials,
                        "back_to_frame_s": {
                            "p50": pct(lat, 50),
                            "p95": pct(lat, 95),
                            "max": max(lat),
                        },
                        "age_s": {"p50": pct(age, 50), "p95": pct(age, 95), "max": max(age)},
                        "opens_per_min": max(r.get("opens_per_min", -1) for r in results),
                        "probes_per_min": max(r.get("probes_per_min", -1) for r in results),
                    }
                )
        finally:
            cap.release()
    print(f"Recovery, {taken} (640x360@25 test camera, default backoff 1 s .. 30 s)\n")
    print(
        "| outage | trials | back -> frame p50 / p95 / max | frame age p50 / max "
        "| full opens/min | probes/min |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        b, a = r["back_to_frame_s"], r["age_s"]
        print(
            f"| {r['outage_s']:g} s | {r['trials']} | {b['p50']:.2f} / {b['p95']:.2f} / "
            f"{b['max']:.2f} s | {a['p50'] * 1000:.0f} / {a['max'] * 1000:.0f} ms | "
            f"{fmt(r['opens_per_min'], 1)} | {fmt(r['probes_per_min'], 0)} |"
        )
    path = write_results(
        BENCH / "results", datetime.now(UTC), "recovery", {"taken": taken, "rows": rows}
    )
    print(f"\n(opens and probes a minute: the largest of the trials; {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
