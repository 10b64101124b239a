"""Per-frame handoff cost from a producer process to a consumer process.

Compares edged's latest-frame slot (shared-memory triple buffer, nothing
copied) with the designs it replaces, for 720p, 1080p and 4K uint8 BGR frames:

* ``copy``: one ``np.copyto`` of the frame inside one process, the 1.0x reference;
* ``edged``: the producer fills a buffer from ``SlotWriter.buffer()`` (standing
  for the decode, which edged does straight into the slot; timed separately as
  "fill") and publishes it; the consumer is blocked in ``SlotReader.acquire()``;
* ``manager``: the classic blog design, the producer appends to a
  ``multiprocessing.Manager().list()``, the consumer polls it, takes ``lst[-1]``
  and deletes the rest;
* ``queue``: ``multiprocessing.Queue.put`` / ``get``;
* ``pipe``: ``Connection.send_bytes`` of a flat byte view / ``recv_bytes``;
* ``wake``: no frame at all, one byte down a pipe to a consumer asleep in
  ``poll()``: the operating system's own cost of waking another process, the
  floor under any handoff to a sleeping consumer (edged's doorbell is this);
* ``ready``: edged's slot when the consumer was busy (a slow processor) and the
  newest frame is already there when it asks: ``publish()`` in the producer plus
  ``acquire()`` in the consumer, no one asleep, so no wake-up in it.

Every other frame is handed over while the consumer is already waiting for it
(the case of a processor faster than the camera): the consumer tells the
producer it is about to wait, the producer waits ``--gap`` ms more and then
hands the frame over.
Latency is ``time.monotonic()`` just before the handoff in the producer to just
after the frame arrives in the consumer (CLOCK_MONOTONIC is system-wide); for
``ready``, the time spent in ``publish()`` plus the time spent in ``acquire()``. CPU is
the time the handoff calls spend on a CPU in both processes (``thread_time``
around the calls; plus the producer's helper threads for ``queue``, and the
manager's server process for ``manager``); waiting is not counted, except that
the blog consumer's busy-polling is reported separately.

Run: ``.venv/bin/python bench/handoff.py [--frames 200] [--json PATH]``
(``bench/run.py`` runs it too, and puts its numbers in its own JSON.)
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import platform
import select
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np
import psutil

from edged.frames import SlotOwner, SlotReader, SlotWriter

RESOLUTIONS: dict[str, tuple[int, int, int]] = {
    "720p": (720, 1280, 3),
    "1080p": (1080, 1920, 3),
    "4K": (2160, 3840, 3),
}
# The pickling designs are slow at 4K: at most this many frames each.
SLOW_CAPS: dict[str, int] = {"720p": 100, "1080p": 60, "4K": 20}
METHODS = ("wake", "edged", "ready", "manager", "queue", "pipe")
SLOT_METHODS = ("edged", "ready")  # edged's slot, the consumer asleep / busy
CTX = multiprocessing.get_context("spawn")
COLD_BYTES = 256 << 20  # working set of the cold copy: several times the last-level cache
TIMEOUT = 60.0  # seconds any one step may take before the run is declared stuck


class Stuck(RuntimeError):
    pass


@dataclass
class Result:
    method: str
    resolution: str
    frames: int
    latency_ms: list[float]
    cpu_ms: float  # per frame, all processes involved
    fill_ms: list[float] = field(default_factory=list)
    busy_poll_ms: float = 0.0  # per frame, the blog consumer's polling CPU

    def p(self, q: float) -> float:
        return percentile(self.latency_ms, q)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


def make_frame(shape: tuple[int, int, int]) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)


def _wait(conn: Connection, what: str) -> Any:
    if not conn.poll(TIMEOUT):
        raise Stuck(f"no {what} within {TIMEOUT:.0f} s")
    return conn.recv()


# --------------------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------------------


def producer_main(
    method: str,
    chan: Any,
    shape: tuple[int, int, int],
    n: int,
    gap: float,
    ack: Connection,
    results: Connection,
) -> None:
    try:
        src = make_frame(shape)
        t0s: list[float] = []
        durations: list[float] = []
        fills: list[float] = []
        call_cpu = 0.0
        writer = SlotWriter(chan[0], chan[1].fileno()) if method in SLOT_METHODS else None
        # The wake-up floor pays the same fill as edged's slot (the decode it
        # stands for sweeps the caches of both processes), or it would be
        # measured warm against edged cold.
        scratch = np.empty_like(src) if method == "wake" else None
        proc0, main0 = time.process_time(), time.thread_time()
        for i in range(n):
            _wait(ack, "ready from the consumer")
            if writer is not None:
                f0 = time.monotonic()
                buf = writer.buffer(shape)
                np.copyto(buf, src)  # stands for decoding into the slot
                buf[0, 0, 0] = i % 256
                fills.append((time.monotonic() - f0) * 1000)
            else:
                if scratch is not None:
                    np.copyto(scratch, src)
                src[0, 0, 0] = i % 256
            # "ready": the consumer is busy and asks only once the frame is published.
            if method != "ready":
                time.sleep(gap)
                if writer is not None:  # make sure the consumer sleeps in acquire()
                    deadline = time.monotonic() + TIMEOUT
                    while not writer.consumer_waiting:
                        if time.monotonic() > deadline:
                            raise Stuck("consumer never waited")
                        time.sleep(0.0001)
            wall = time.time()  # the reader stamps a frame when it grabs it, before publish()
            c0 = time.thread_time()
            t0 = time.monotonic()
            if writer is not None:
                writer.publish(wall, t0, shape)
            elif method == "manager":
                chan.append(src)
            elif method == "queue":
                chan.put(src)
            elif method == "wake":
                os.write(chan.fileno(), b"\0")
            else:
                chan.send_bytes(memoryview(src).cast("B"))  # flat: see library-facts.md
            durations.append(time.monotonic() - t0)
            call_cpu += time.thread_time() - c0
            t0s.append(t0)
            if method == "ready":
                ack.send("published")
        # Other threads of this process (the Queue's feeder thread).
        helpers = (time.process_time() - proc0) - (time.thread_time() - main0)
        if method == "queue":
            chan.close()
            chan.join_thread()
        results.send(
            {"t0": t0s, "dur": durations, "cpu": call_cpu + max(0.0, helpers), "fill": fills}
        )
        if writer is not None:
            # Wait for the consumer to let go of the last frame before unlinking.
            _wait(ack, "consumer done")
            writer.close()
    except KeyboardInterrupt:
        pass


def consumer_main(
    method: str,
    chan: Any,
    shape: tuple[int, int, int],
    n: int,
    ack: Connection,
    results: Connection,
) -> None:
    try:
        t1s: list[float] = []
        durations: list[float] = []
        cpu = 0.0
        poll_cpu = 0.0
        reader = SlotReader(chan[0], chan[1].fileno()) if method in SLOT_METHODS else None
        poller = select.poll()
        if method == "wake":
            poller.register(chan.fileno(), select.POLLIN)
        last = 0
        for i in range(n):
            ack.send(i)
            image: np.ndarray
            if reader is not None:
                if method == "ready":
                    _wait(ack, "the frame published")
                c0 = time.thread_time()
                a0 = time.monotonic()
                got = reader.acquire(last, TIMEOUT)
                t1 = time.monotonic()
                durations.append(t1 - a0)
                c1 = time.thread_time()
                if got is None:
                    raise Stuck("acquire() timed out")
                image, last = got[0], got[1]
                ok = int(image[0, 0, 0]) == i % 256
                c2 = time.thread_time()
                reader.release()
                cpu += (c1 - c0) + (time.thread_time() - c2)
            elif method == "manager":
                p0 = time.thread_time()
                deadline = time.monotonic() + TIMEOUT
                while len(chan) == 0:  # the blog's busy loop
                    if time.monotonic() > deadline:
                        raise Stuck("nothing in the list")
                c0 = time.thread_time()
                image = chan[-1]
                t1 = time.monotonic()
                del chan[:]
                poll_cpu += c0 - p0
                cpu += time.thread_time() - c0
                ok = int(image[0, 0, 0]) == i % 256
            elif method == "queue":
                c0 = time.thread_time()
                image = chan.get(timeout=TIMEOUT)
                t1 = time.monotonic()
                cpu += time.thread_time() - c0
                ok = int(image[0, 0, 0]) == i % 256
            elif method == "wake":
                c0 = time.thread_time()
                if not poller.poll(TIMEOUT * 1000):
                    raise Stuck("no wake-up byte")
                os.read(chan.fileno(), 4096)
                t1 = time.monotonic()
                cpu += time.thread_time() - c0
                ok = True
            else:
                c0 = time.thread_time()
                data = chan.recv_bytes()
                t1 = time.monotonic()
                image = np.frombuffer(data, dtype=np.uint8).reshape(shape)
                cpu += time.thread_time() - c0
                ok = int(image[0, 0, 0]) == i % 256
            if not ok:
                raise RuntimeError(f"{method}: frame {i} arrived with the wrong content")
            t1s.append(t1)
        results.send({"t1": t1s, "dur": durations, "cpu": cpu, "poll": poll_cpu})
        ack.send("done")
        if reader is not None:
            reader.close()
    except KeyboardInterrupt:
        pass


# --------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------


def run_copy(res: str, n: int) -> tuple[Result, Result]:
    """``np.copyto`` of one frame: the same buffers again and again (cache-hot), and
    rotating through enough buffers that neither side is in the cache (cold)."""
    shape = RESOLUTIONS[res]
    src, dst = make_frame(shape), np.empty(shape, np.uint8)
    np.copyto(dst, src)
    hot = []
    for _ in range(n):
        t0 = time.monotonic()
        np.copyto(dst, src)
        hot.append((time.monotonic() - t0) * 1000)
    pairs = max(2, -(-COLD_BYTES // (2 * src.nbytes)))
    srcs = [src.copy() for _ in range(pairs)]
    dsts = [np.ones(shape, np.uint8) for _ in range(pairs)]
    cold = []
    for i in range(n):
        s, d = srcs[i % pairs], dsts[i % pairs]
        t0 = time.monotonic()
        np.copyto(d, s)
        cold.append((time.monotonic() - t0) * 1000)
    return (
        Result("copy", res, n, hot, statistics.mean(hot)),
        Result("copy_cold", res, n, cold, statistics.mean(cold)),
    )


def _stop(procs: list[BaseProcess]) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()


def run_pair(method: str, res: str, n: int, gap: float, warmup: int) -> Result:
    shape = RESOLUTIONS[res]
    cleanups: list[Callable[[], None]] = []
    procs: list[BaseProcess] = []
    server: psutil.Process | None = None
    try:
        chan_p: Any
        chan_c: Any
        if method in SLOT_METHODS:
            owner = SlotOwner("bench")
            cleanups.append(owner.close)
            chan_p, chan_c = (owner.name, owner.doorbell_w), (owner.name, owner.doorbell_r)
        elif method == "manager":
            manager = CTX.Manager()
            cleanups.append(manager.shutdown)
            chan_p = chan_c = manager.list()
            server = psutil.Process(manager._process.pid)  # type: ignore[attr-defined]
        elif method == "queue":
            chan_p = chan_c = CTX.Queue()
        else:
            chan_c, chan_p = CTX.Pipe(duplex=False)
        ack_c, ack_p = CTX.Pipe()
        res_r, res_w = CTX.Pipe(duplex=False)
        res2_r, res2_w = CTX.Pipe(duplex=False)
        procs = [
            CTX.Process(
                target=producer_main,
                args=(method, chan_p, shape, n, gap, ack_p, res_w),
                name=f"producer-{method}",
                daemon=True,
            ),
            CTX.Process(
                target=consumer_main,
                args=(method, chan_c, shape, n, ack_c, res2_w),
                name=f"consumer-{method}",
                daemon=True,
            ),
        ]
        for p in procs:
            p.start()
        server_cpu0 = sum(server.cpu_times()[:2]) if server else 0.0
        got: dict[int, Any] = {}
        pending = {res_r.fileno(): res_r, res2_r.fileno(): res2_r}
        deadline = time.monotonic() + TIMEOUT + n * 2.0
        while pending:
            ready = multiprocessing.connection.wait(list(pending.values()), timeout=1.0)
            for conn in ready:
                assert isinstance(conn, Connection)
                got[conn.fileno()] = conn.recv()
                del pending[conn.fileno()]
            if pending and (time.monotonic() > deadline or not all(p.is_alive() for p in procs)):
                codes = ", ".join(f"{p.name}={p.exitcode}" for p in procs)
                raise Stuck(f"{method} {res}: a child died or hung ({codes})")
        server_cpu = (sum(server.cpu_times()[:2]) - server_cpu0) if server else 0.0
        for p in procs:
            p.join(TIMEOUT)
        prod, cons = got[res_r.fileno()], got[res2_r.fileno()]
        if method == "ready":
            lat = [(a + b) * 1000 for a, b in zip(prod["dur"], cons["dur"], strict=True)]
        else:
            lat = [(t1 - t0) * 1000 for t0, t1 in zip(prod["t0"], cons["t1"], strict=True)]
        cpu_ms = (prod["cpu"] + cons["cpu"] + server_cpu) * 1000 / n
        return Result(
            method,
            res,
            n - warmup,
            lat[warmup:],
            cpu_ms,
            fill_ms=prod["fill"][warmup:],
            busy_poll_ms=cons["poll"] * 1000 / n,
        )
    finally:
        _stop(procs)
        for cleanup in reversed(cleanups):
            with contextlib.suppress(Exception):
                cleanup()


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def fmt(v: float) -> str:
    if v != v:  # nan
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def ratio(v: float, ref: float) -> str:
    r = v / ref
    return f"{r:.2f}x" if r < 10 else f"{r:.0f}x"


NAMES = {
    "wake": "wake-up only",
    "edged": "edged slot",
    "ready": "edged, frame ready",
    "manager": "Manager().list()",
    "queue": "mp.Queue",
    "pipe": "Pipe.send_bytes",
}


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def report(results: dict[tuple[str, str], Result], resolutions: list[str]) -> str:
    methods = [m for m in METHODS if any((m, r) in results for r in resolutions)]
    lines = [
        "Handoff latency, producer process -> waiting consumer process, ms per frame",
        "(p50 / p95; x copy = p50 / the p50 of one np.copyto of the frame, cache-hot;",
        "edged, frame ready: publish() + acquire() when the consumer was busy and asks",
        "once the frame is there, so nobody is woken)",
        "",
    ]
    head = ["resolution", "copy hot / cold"]
    for m in methods:
        head += [NAMES[m], "x copy"]
    rows = []
    for r in resolutions:
        hot, cold = results[("copy", r)], results[("copy_cold", r)]
        row = [r, f"{fmt(hot.p(50))} / {fmt(cold.p(50))}"]
        for m in methods:
            res = results.get((m, r))
            if res is None:
                row += ["-", "-"]
            else:
                row += [f"{fmt(res.p(50))} / {fmt(res.p(95))}", ratio(res.p(50), hot.p(50))]
        rows.append(row)
    lines += _table(head, rows)
    lines += [
        "",
        "CPU ms per frame spent on the handoff (both processes and their helpers: the",
        "Queue's feeder thread, the Manager's server process); frames measured",
        "",
    ]
    head = ["resolution", "copy hot / cold"] + [NAMES[m] for m in methods] + ["frames"]
    rows = []
    for r in resolutions:
        hot, cold = results[("copy", r)], results[("copy_cold", r)]
        row = [r, f"{fmt(hot.cpu_ms)} / {fmt(cold.cpu_ms)}"]
        counts = [f"copy {hot.frames}"]
        for m in methods:
            res = results.get((m, r))
            row.append(fmt(res.cpu_ms) if res else "-")
            if res:
                counts.append(f"{m} {res.frames}")
        rows.append([*row, ", ".join(counts)])
    lines += _table(head, rows)
    notes = []
    fills = [results[("edged", r)] for r in resolutions if ("edged", r) in results]
    if fills:
        notes.append(
            "edged fill (np.copyto into the slot buffer, standing for the decode; "
            "not part of the handoff), ms p50: "
            + ", ".join(f"{x.resolution} {fmt(percentile(x.fill_ms, 50))}" for x in fills)
        )
    man = [results[("manager", r)] for r in resolutions if ("manager", r) in results]
    if man:
        notes.append(
            "Blog consumer busy-polling len() while it waits (not counted above), "
            "CPU ms per frame: " + ", ".join(f"{x.resolution} {fmt(x.busy_poll_ms)}" for x in man)
        )
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--frames", type=int, default=200, help="frames per run (default 200)")
    ap.add_argument(
        "--slow-frames",
        type=int,
        default=None,
        help="frames for manager/queue/pipe (default: min(frames, 100/60/20 for 720p/1080p/4K))",
    )
    ap.add_argument(
        "--resolutions", nargs="+", default=list(RESOLUTIONS), choices=list(RESOLUTIONS)
    )
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument(
        "--gap", type=float, default=2.0, help="ms the producer waits after the consumer is ready"
    )
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    if args.frames < 10:
        ap.error("--frames must be at least 10")
    print(
        f"edged handoff benchmark: {platform.node()}, {psutil.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, numpy {np.__version__}",
        flush=True,
    )
    results: dict[tuple[str, str], Result] = {}
    started = time.monotonic()
    try:
        for res in args.resolutions:
            results[("copy", res)], results[("copy_cold", res)] = run_copy(res, args.frames)
            for m in args.methods:
                n = args.frames
                if m not in (*SLOT_METHODS, "wake"):
                    n = args.slow_frames or min(args.frames, SLOW_CAPS[res])
                warmup = max(1, n // 10)
                t = time.monotonic()
                r = run_pair(m, res, n + warmup, args.gap / 1000, warmup)
                results[(m, res)] = r
                print(
                    f"  {res:>5} {m:<8} {r.frames:4d} frames  p50 {fmt(r.p(50))} ms  "
                    f"({time.monotonic() - t:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print()
    print(report(results, args.resolutions))
    print(f"\n({time.monotonic() - started:.0f} s)")
    if args.json:
        write_json(args.json, results)
    return 0


def write_json(path: str, results: dict[tuple[str, str], Result]) -> None:
    """Per method and resolution: latency p50 / p95 and CPU per frame, ms; x copy (hot)."""
    import json

    out: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for (method, res), r in results.items():
        hot = results.get(("copy", res))
        p50 = r.p(50)
        out.setdefault(res, {})[method] = {
            "frames": r.frames,
            "latency_p50_ms": p50,
            "latency_p95_ms": r.p(95),
            "cpu_ms_per_frame": r.cpu_ms,
            "x_copy": p50 / hot.p(50) if hot is not None and hot.p(50) > 0 else None,
            "fill_p50_ms": percentile(r.fill_ms, 50) if r.fill_ms else None,
            "busy_poll_ms_per_frame": r.busy_poll_ms or None,
        }
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
