"""SIGHUP reload and the per-camera lock, against the real daemon."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from components.rtsp import free_port
from daemon import TESTS, Daemon, wait_for

pytestmark = pytest.mark.slow


def _config(cameras: dict[str, str], extra: str = "") -> str:
    out = ['[events]\npath = "events.jsonl"\n[daemon]\nstate_dir = "state"\n' + extra]
    for name, processor_delay in cameras.items():
        out.append(
            f'[cameras.{name}]\nsource = "synthetic"\nfps = 25\n'
            f'[cameras.{name}.processor]\ntype = "plugins:SlowProcessor"\n'
            f"delay = {processor_delay}\n"
        )
    return "\n".join(out)


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path, _config({"cam1": "0.0", "cam2": "0.0"}))
    d.start()
    yield d
    d.kill()


def _pids(d: Daemon) -> dict[str, int]:
    return {p.name(): p.pid for p in d.children()}


def _reload(d: Daemon, toml: str, expect: str) -> None:
    before = d.log.count(expect)
    d.config.write_text(toml)
    d.proc.send_signal(signal.SIGHUP)
    wait_for(f"{expect!r} after SIGHUP", lambda: d.log.count(expect) > before, timeout=20)


def test_reload_restarts_only_changed_cameras(daemon):
    d = daemon
    wait_for("both cameras", lambda: len(d.children()) == 4)
    d.wait_events(10, "frame")
    before = _pids(d)
    _reload(d, _config({"cam1": "0.0", "cam2": "0.01"}), "reloaded:")
    assert "0 added, 0 removed, 1 restarted, 1 unchanged" in d.log
    wait_for("cam2 restarted", lambda: len(d.children()) == 4)
    after = _pids(d)
    assert after["reader:cam1"] == before["reader:cam1"]
    assert after["worker:cam1"] == before["worker:cam1"]
    assert after["reader:cam2"] != before["reader:cam2"]
    # cam1 kept streaming through the reload: its frames keep consecutive seqs
    n = len(d.events("frame"))
    d.wait_events(n + 40, "frame")
    cam1 = [e["seq"] for e in d.events("frame") if e["camera"] == "cam1"]
    assert cam1 == sorted(cam1) and cam1[-1] - cam1[0] + 1 - len(cam1) < 10
    assert d.stop() == 0


def test_reload_adds_and_removes_cameras(daemon):
    d = daemon
    wait_for("both cameras", lambda: len(d.children()) == 4)
    _reload(d, _config({"cam1": "0.0", "cam3": "0.0"}), "reloaded:")
    assert "1 added, 1 removed, 0 restarted, 1 unchanged" in d.log
    wait_for(
        "cam3 up and cam2 gone",
        lambda: sorted(_pids(d)) == ["reader:cam1", "reader:cam3", "worker:cam1", "worker:cam3"],
    )
    wait_for("cam3 events", lambda: any(e["camera"] == "cam3" for e in d.events("frame")))
    assert d.stop() == 0


def test_broken_config_on_reload_keeps_the_old_one_running(daemon):
    d = daemon
    wait_for("both cameras", lambda: len(d.children()) == 4)
    before = _pids(d)
    _reload(d, "[cameras.cam1]\nsource = 'synthetic'\nfsp = 3\n", "still running the previous")
    assert "reload failed:" in d.log and "cameras.cam1.fsp: unknown key" in d.log
    assert _pids(d) == before
    n = len(d.events("frame"))
    d.wait_events(n + 10, "frame")
    assert d.proc.poll() is None
    assert d.stop() == 0


def test_a_camera_is_captured_by_one_daemon_only(daemon, tmp_path):
    d = daemon
    wait_for("both cameras", lambda: len(d.children()) == 4)
    r = subprocess.run(
        [sys.executable, "-m", "edged", "run", "--config", str(d.config), "--camera", "cam2"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
    )
    assert r.returncode == 78
    assert f"camera cam2 is already captured by another edged process (pid {d.pid}" in r.stderr
    assert d.stop() == 0


def _counting(log: object, delay: float) -> str:
    return (
        '[events]\npath = "events.jsonl"\n[daemon]\nstate_dir = "state"\n'
        '[cameras.cam1]\nsource = "synthetic"\nfps = 25\n'
        f'[cameras.cam1.processor]\ntype = "plugins:CountingProcessor"\nlog = "{log}"\n'
        f"delay = {delay}\n"
    )


def test_reload_keeps_the_events_of_the_cameras_it_stops(tmp_path):
    # The camera's settings change, so the reload stops its worker while its
    # processor is inside process(): the event of that frame, sent after the
    # stop began, must reach the file like every other.
    noted = tmp_path / "processed.log"
    d = Daemon(tmp_path, _counting(noted, 2.0))
    d.start()
    try:
        wait_for(
            "the processor inside process()",
            lambda: noted.exists() and noted.read_text().endswith(" start\n"),
            timeout=20,
        )
        _reload(d, _counting(noted, 2.5), "reloaded:")
        assert "0 added, 0 removed, 1 restarted, 0 unchanged" in d.log
        # And the new worker, stopped by SIGTERM inside process() in its turn.
        wait_for(
            "the new worker inside process()",
            lambda: (
                len({line.split()[0] for line in noted.read_text().splitlines()}) == 2
                and noted.read_text().endswith(" start\n")
            ),
            timeout=20,
        )
        assert d.stop() == 0
    finally:
        d.kill()
    lines = [line.split() for line in noted.read_text().splitlines()]
    done = {(int(pid), int(n)) for pid, n, what in lines if what == "end"}
    got = {(e["data"]["pid"], e["data"]["n"]) for e in d.events("count")}
    assert len({pid for pid, _ in done}) == 2  # the worker before the reload, and after
    assert done <= got, f"processed but not in the event file: {sorted(done - got)}"


def test_reload_to_an_event_file_that_cannot_be_opened_changes_nothing(daemon, tmp_path):
    d = daemon
    wait_for("both cameras", lambda: len(d.children()) == 4)
    before = _pids(d)
    (tmp_path / "afile").write_text("not a folder\n")
    toml = _config({"cam1": "0.0", "cam2": "0.01"}).replace(
        'path = "events.jsonl"', 'path = "afile/events.jsonl"'
    )
    _reload(d, toml, "still running the previous configuration")
    assert "reload failed:" in d.log and "afile: cannot create directory" in d.log
    assert _pids(d) == before  # cam2's change was not applied either
    n = len(d.events("frame"))
    d.wait_events(n + 10, "frame")  # still written to the old file
    assert d.proc.poll() is None
    assert d.stop() == 0


def test_a_slow_stop_during_reload_keeps_the_other_cameras_and_health_going(tmp_path):
    # cam1's processor takes 12 s to finish the frame it is on when the reload
    # stops it: longer than /healthz's 10 s, and long enough for cam2's events
    # to fill a pipe nobody reads.
    port = free_port()
    noted = tmp_path / "processed.log"

    def toml(delay: float) -> str:
        return (
            '[events]\npath = "events.jsonl"\n[daemon]\nstate_dir = "state"\n'
            f'stop_timeout = "30s"\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
            '[cameras.cam1]\nsource = "synthetic"\nfps = 25\n'
            f'[cameras.cam1.processor]\ntype = "plugins:CountingProcessor"\nlog = "{noted}"\n'
            f"delay = {delay}\n"
            '[cameras.cam2]\nsource = "synthetic"\nfps = 25\n'
            '[cameras.cam2.processor]\ntype = "plugins:SlowProcessor"\ndelay = 0\n'
        )

    d = Daemon(tmp_path, toml(12.0))
    d.start()
    try:
        wait_for(
            "cam1's processor inside process()",
            lambda: noted.exists() and noted.read_text().endswith(" start\n"),
            timeout=20,
        )
        d.wait_events(10, "frame")
        d.config.write_text(toml(0.0))
        d.proc.send_signal(signal.SIGHUP)
        wait_for("the reload under way", lambda: "reloading" in d.log, timeout=10)
        health, frames = [], []
        while "reloaded:" not in d.log:
            assert d.proc.poll() is None
            health.append(_get(f"http://127.0.0.1:{port}/healthz"))
            frames.append(len(d.events("frame")))
            time.sleep(0.5)  # sampling what a monitor would see, not synchronising
        assert len(health) >= 16, "the stop was not slow: the test proves nothing"
        assert set(health) == {200}
        assert frames[-1] > frames[0] + 100, "cam2's events stopped during the reload"
        assert "silent for" not in d.log and "stuck" not in d.log
        assert d.stop() == 0
    finally:
        d.kill()


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
