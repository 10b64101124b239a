"""Soak: two cameras for a long time under random faults; resources must stay flat.

    .venv/bin/python bench/soak.py --minutes 30

Runs the real daemon with two RTSP cameras (real GStreamer servers on
loopback) and injects a fault at random every ``--fault-every`` seconds: a
server restart, a server frozen with its socket open (SIGSTOP), a reader or a
worker SIGKILLed. Every ``--sample-every`` seconds it records, per process of
the daemon, RSS, open descriptors and threads, plus /dev/shm entries, frames
and events. It prints the table and writes JSON next to it; the point is the
first and last rows: no growth beyond noise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from components.rtsp import RtspServer  # noqa: E402
from daemon import Daemon  # noqa: E402


def _config(servers: dict[str, RtspServer]) -> str:
    out = [
        '[events]\npath = "events.jsonl"\nmax_bytes = "1MiB"\nbackups = 1000\n'
        '[daemon]\nstate_dir = "state"\n[metrics]\nlisten = "127.0.0.1:0"\n'
    ]
    for name, server in servers.items():
        out.append(
            f'[cameras.{name}]\nsource = "{server.url}"\nstale_after = "2s"\n'
            f'read_timeout = "3s"\nrestart_delay = "0.5s"\nrestart_max_delay = "5s"\n'
            f'[cameras.{name}.processor]\ntype = "plugins:SlowProcessor"\ndelay = 0.2\n'
        )
    return "\n".join(out)


def _sample(d: Daemon, started: float) -> dict[str, Any]:
    row: dict[str, Any] = {"t_min": round((time.monotonic() - started) / 60, 2)}
    procs = {"supervisor": psutil.Process(d.pid)}
    for kid in procs["supervisor"].children(recursive=True):  # under the fork server
        try:
            name = kid.name()
        except psutil.Error:
            continue
        if ":" in name:
            procs[name] = kid
    for name, proc in sorted(procs.items()):
        try:
            with proc.oneshot():
                row[f"{name} rss_mb"] = round(proc.memory_info().rss / 2**20, 1)
                row[f"{name} fds"] = proc.num_fds()
                row[f"{name} threads"] = proc.num_threads()
        except psutil.Error:
            pass
    row["shm"] = len([n for n in os.listdir("/dev/shm") if n.startswith("edged_")])
    row["events"] = sum(len(f.read_bytes().splitlines()) for f in d.dir.glob("events.jsonl*"))
    row["pids"] = len(procs)
    return row


FAULTS = ("server_restart", "server_freeze", "kill_reader", "kill_worker")


def _fault(kind: str, d: Daemon, servers: dict[str, RtspServer], rng: random.Random) -> str:
    name = rng.choice(sorted(servers))
    server = servers[name]
    if kind == "server_restart":
        server.stop()
        time.sleep(rng.uniform(1, 8))  # the outage
        server.start()
    elif kind == "server_freeze":
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        time.sleep(rng.uniform(3, 10))
        os.kill(server.pid, signal.SIGCONT)
    else:
        role = "reader" if kind == "kill_reader" else "worker"
        for kid in d.children(role):
            if kid.name() == f"{role}:{name}":
                kid.send_signal(signal.SIGKILL)
    return f"{kind} {name}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--fault-every", type=float, default=60, help="mean seconds between faults")
    p.add_argument("--sample-every", type=float, default=60)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "soak.json")
    args = p.parse_args()

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # run the clean-up below

    signal.signal(signal.SIGTERM, on_term)
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="edged-soak-"))
    servers = {
        "cam1": RtspServer(width=640, height=360, fps=25),
        "cam2": RtspServer(width=640, height=360, fps=25),
    }
    rows: list[dict[str, Any]] = []
    faults: list[str] = []
    d: Daemon | None = None
    code = -1
    try:
        for s in servers.values():
            s.start()
        d = Daemon(tmp, _config(servers)).start()
        d.wait_events(10, timeout=30)
        started = time.monotonic()
        end = started + args.minutes * 60
        next_sample = started
        next_fault = started + rng.expovariate(1 / args.fault_every)
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                rows.append(_sample(d, started))
                print(json.dumps(rows[-1]), flush=True)
                next_sample += args.sample_every
            if now >= next_fault:
                faults.append(_fault(rng.choice(FAULTS), d, servers, rng))
                print(f"# fault: {faults[-1]}", flush=True)
                next_fault = time.monotonic() + rng.expovariate(1 / args.fault_every)
            if d.proc is not None and d.proc.poll() is not None:
                print("daemon exited!", file=sys.stderr)
                return 1
            time.sleep(0.5)
        # let the last fault settle before the final sample
        time.sleep(15)
        rows.append(_sample(d, started))
        code = d.stop()
    finally:
        if d is not None:
            d.kill()
        for s in servers.values():
            s.stop()
    assert d is not None
    leftover = [n for n in os.listdir("/dev/shm") if n.startswith(f"edged_{d.pid}_")]
    first, last = rows[0], rows[-1]
    print(f"\nfaults injected: {len(faults)}; exit code {code}; shm left: {leftover}")
    print(f"{'metric':32} {'first':>10} {'last':>10}")
    for key in first:
        if key in last and key != "t_min":
            print(f"{key:32} {first[key]!s:>10} {last[key]!s:>10}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "faults": faults, "exit": code}, indent=1))
    print(f"\nwritten {args.out}")
    return 0 if code == 0 and not leftover else 1


if __name__ == "__main__":
    sys.exit(main())
