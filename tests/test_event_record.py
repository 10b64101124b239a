"""The event file is the record: no other sink sees an event before it is written,
events the file will not take are held in bounded memory (bytes), and a stop that
still cannot write them keeps them in state_dir for the next start.

The file fails for real: the event path is a link to ``/dev/full`` (every write
fails with ENOSPC from the kernel) in the in-process tests, and a small tmpfs
in a private mount namespace that the daemon fills up in the daemon tests.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from components.mqtt import Mosquitto, Subscriber
from daemon import Daemon, wait_for

from edged.config import parse_config
from edged.supervisor import Supervisor


def record(n: int, pad: int = 0) -> dict[str, Any]:
    return {"id": f"e{n}", "camera": "cam1", "type": "t", "data": {"pad": "x" * pad}}


def ids_in(path: Path) -> list[str]:
    """Event ids in the file at ``path``; none while it is ``/dev/full`` (endless zeros)."""
    try:
        # is_file() asks the kernel: resolve() would take /proc/PID/root to our own "/".
        raw = path.read_bytes() if path.is_file() else b""
    except FileNotFoundError:
        return []
    return [json.loads(line)["id"] for line in raw.split(b"\n") if line.endswith(b"}")]


@contextmanager
def supervisor(tmp_path: Path, extra: str = "", *, full: bool = False) -> Iterator[Supervisor]:
    """A real Supervisor, not running: its event file, its state_dir, no cameras running.
    ``full``: the event file is the kernel's always-full device (``/dev/full``)."""
    if full:
        (tmp_path / "events.jsonl").symlink_to("/dev/full")
    toml = f'[events]\npath = "events.jsonl"\n{extra}\n[daemon]\nstate_dir = "state"\n'
    toml += '[metrics]\nenabled = false\n[cameras.cam1]\nsource = "synthetic"\n'
    sup = Supervisor(parse_config(toml, tmp_path / "edged.toml"))
    try:
        yield sup
    finally:
        sup.events.writer.close()
        sup.notifier.close()


def disk_back(sup: Supervisor, path: Path) -> None:
    """A real file again: the writer notices within a second that the path moved."""
    path.unlink()
    wait_for("the held events written", lambda: sup.events.flush() or not sup.events.pending)


def test_other_sinks_see_an_event_only_once_it_is_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with supervisor(tmp_path) as sup:
        in_file_when_seen: list[bool] = []
        sup.events.on_written.append(lambda r: in_file_when_seen.append(r["id"] in ids_in(path)))
        for n in range(3):
            sup.events.accept(record(n))
        assert in_file_when_seen == [True, True, True]


def test_held_events_reach_other_sinks_only_once_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "edged.router")
    path = tmp_path / "events.jsonl"
    with supervisor(tmp_path, full=True) as sup:
        seen: list[tuple[str, bool]] = []
        sup.events.on_written.append(lambda r: seen.append((r["id"], r["id"] in ids_in(path))))
        for n in range(1, 6):
            sup.events.accept(record(n))
            sup.events.flush()
        assert seen == [] and len(sup.events.pending) == 5
        assert "cannot write events" in caplog.text and "No space left" in caplog.text
        disk_back(sup, path)
        assert seen == [(f"e{n}", True) for n in range(1, 6)]
        assert ids_in(path) == [f"e{n}" for n in range(1, 6)]  # a new file, in order
        assert "event file writable again" in caplog.text


def test_held_events_are_bounded_in_bytes_oldest_dropped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.jsonl"
    with supervisor(tmp_path, 'max_pending_bytes = "1MiB"', full=True) as sup:
        for n in range(100):  # 5 MB of 50 KB events
            sup.events.accept(record(n, pad=50_000))
        assert sup.events.pending_bytes <= 1024**2
        kept = len(sup.events.pending)
        assert 15 <= kept <= 21 and sup.events.dropped == 100 - kept
        drops = [r for r in caplog.records if "dropping the oldest" in r.getMessage()]
        assert len(drops) == 1 and drops[0].levelno == logging.ERROR  # one per run of drops
        disk_back(sup, path)
        assert ids_in(path) == [f"e{n}" for n in range(100 - kept, 100)]
        assert f"{100 - kept} events were dropped while it was not" in caplog.text
        assert sup.events.dropped == 100 - kept  # the metric's source


def test_a_stop_keeps_unwritten_events_for_the_next_start_which_writes_them_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.jsonl"
    with supervisor(tmp_path, full=True) as sup:
        for n in range(4):
            sup.events.accept(record(n))
        sup.shutdown()
        spill = sup.events.spill_path()
    assert spill.parent == tmp_path / "state"
    assert "stopping with 4 events not written to the event file" in caplog.text
    assert f"kept in {spill}" in caplog.text
    assert ids_in(spill) == ["e0", "e1", "e2", "e3"]
    path.unlink()
    with supervisor(tmp_path) as again:
        seen: list[str] = []
        again.events.on_written.append(lambda r: seen.append(r["id"]))
        again.events.load_spill()
        again.events.accept(record(4))  # a new event waits behind the older ones
        again.events.flush()
        assert ids_in(path) == ["e0", "e1", "e2", "e3", "e4"] == seen
        assert not spill.exists()


def test_a_stop_that_cannot_keep_them_says_they_are_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with supervisor(tmp_path, full=True) as sup:
        (tmp_path / "state").write_text("not a folder")  # no spill file can be made in it
        sup.events.accept(record(0))
        sup.shutdown()
    [line] = [r for r in caplog.records if "stopping with" in r.getMessage()]
    assert line.levelno == logging.ERROR
    assert "1 events not written to the event file" in line.getMessage()
    assert "nor sent to MQTT" in line.getMessage() and "they are lost" in line.getMessage()


# -- the daemon, a real full disk, a real broker ----------------------------------------


def _namespace_problem() -> str | None:
    if os.geteuid() != 0:
        return "a private mount namespace with a small tmpfs needs root"
    for tool in ("unshare", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} not found (util-linux)"
    return None


def on_small_tmpfs(d: Daemon, folder: Path, size: str) -> Daemon:
    """Start ``d`` in a mount namespace of its own where ``folder`` is a fresh tmpfs of
    ``size``: only edged sees it (the host's folder stays as it is), and it is gone
    when edged exits. The test reaches it through ``/proc/PID/root``."""
    problem = _namespace_problem()
    if problem is not None:
        pytest.skip(problem)
    folder.mkdir(parents=True, exist_ok=True)
    mount = f'mount -t tmpfs -o size={size},mode=0755 tmpfs "$0" && exec "$@"'
    d.wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, str(folder)]
    return d.start()


def seen_by_edged(d: Daemon, path: Path) -> Path:
    return Path(f"/proc/{d.pid}/root{path}")


def fill(folder: Path) -> None:
    """Write into ``folder`` until its file system is full."""
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def daemon_toml(mqtt_port: int | None, events: str = "", processor: str = "") -> str:
    """One synthetic camera making ~20 events a second, events in ev/, state in state/."""
    toml = f'[events]\npath = "ev/events.jsonl"\n{events}\n[metrics]\nenabled = false\n'
    toml += '[daemon]\nstate_dir = "state"\n'
    if mqtt_port is not None:
        toml += f'[mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}\nnode = "box1"\n'
        toml += 'reconnect_max_delay = "1s"\n'
    toml += '[cameras.cam1]\nsource = "synthetic"\nwidth = 160\nheight = 120\nfps = 20\n'
    toml += '[cameras.cam1.processor]\ntype = "plugins:SlowProcessor"\ndelay = 0.05\n'
    return toml + processor


def mqtt_ids(sub: Subscriber) -> list[str]:
    return [json.loads(m.payload)["id"] for m in sub.received("edged/box1/cam1/events")]


@pytest.mark.slow
def test_daemon_full_event_disk_sends_nothing_to_mqtt_that_is_not_in_the_file(
    tmp_path: Path, mosquitto: Mosquitto, daemons: list[Daemon], subscribers: list[Subscriber]
) -> None:
    sub = Subscriber(mosquitto)
    subscribers.append(sub)
    ev = tmp_path / "ev"
    d = Daemon(tmp_path, daemon_toml(mosquitto.port))
    daemons.append(d)
    on_small_tmpfs(d, ev, "512k")
    events = seen_by_edged(d, ev / "events.jsonl")
    wait_for("events on MQTT", lambda: len(mqtt_ids(sub)) >= 5, timeout=30)
    fill(seen_by_edged(d, ev))
    mark = d.mark()
    d.wait_log("cannot write events", since=mark)
    full = time.monotonic()
    wait_for("2 s of events on a full disk", lambda: time.monotonic() - full >= 2, timeout=5)
    in_file = ids_in(events)
    on_mqtt = mqtt_ids(sub)
    assert set(on_mqtt) <= set(in_file), set(on_mqtt) - set(in_file)
    # SIGTERM while it is still full: what the file would not take is kept, and said so.
    assert d.stop() == 0
    spill = tmp_path / "state" / "events-unwritten.jsonl"
    kept = ids_in(spill)
    assert len(kept) >= 10 and not set(kept) & set(in_file)
    assert f"stopping with {len(kept)} events not written to the event file" in d.log
    assert set(mqtt_ids(sub)) <= set(in_file)  # the stop sent none of them either
    # The next start (the disk has room again) writes them first, then MQTT gets them.
    again = Daemon(tmp_path, daemon_toml(mosquitto.port))
    daemons.append(again)
    again.events_path = ev / "events.jsonl"
    again.start()
    again.wait_log(f"{len(kept)} events an earlier run could not write")
    wait_for("the kept events on MQTT", lambda: set(kept) <= set(mqtt_ids(sub)), timeout=30)
    assert again.stop() == 0
    assert ids_in(again.events_path)[: len(kept)] == kept
    assert not spill.exists()
    assert set(mqtt_ids(sub)) <= set(in_file) | set(ids_in(again.events_path))


@pytest.mark.slow
def test_daemon_holds_at_most_max_pending_bytes_of_big_events_on_a_full_disk(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    toml = daemon_toml(None, 'max_pending_bytes = "1MiB"', "pad = 50000\n")
    ev = tmp_path / "ev"
    d = Daemon(tmp_path, toml)
    daemons.append(d)
    on_small_tmpfs(d, ev, "512k")
    d.wait_log("cannot write events", timeout=30)  # 50 KB events fill 512 KiB at once
    d.wait_log("dropping the oldest", timeout=10)  # 1 MiB is about 20 of them
    assert d.stop() == 0
    spill = tmp_path / "state" / "events-unwritten.jsonl"
    assert 0 < spill.stat().st_size <= 1024**2
    assert "events were dropped while the event file could not be written" in d.log
    assert d.log.count("dropping the oldest") == 1
