"""SIGHUP reload and the per-camera lock, against the real daemon."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from components.rtsp import free_port
from daemon import TESTS, Daemon, wait_for
from helpers import daemon_toml

pytestmark = pytest.mark.slow


def _config(cameras: dict[str, str]) -> str:
    """Synthetic cameras, each with a SlowProcessor of the given delay."""
    return daemon_toml(
        dict.fromkeys(cameras, 'source = "synthetic"\nfps = 25'),
        processors={n: f'type = "plugins:SlowProcessor"\ndelay = {d}' for n, d in cameras.items()},
    )


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
    return daemon_toml(
        {"cam1": 'source = "synthetic"\nfps = 25'},
        processors={"cam1": f'type = "plugins:CountingProcessor"\nlog = "{log}"\ndelay = {delay}'},
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
    # A folder where the event file should be: the config check (which sees
    # only that its folder is usable) passes, opening the file fails.
    (tmp_path / "taken.jsonl").mkdir()
    toml = _config({"cam1": "0.0", "cam2": "0.01"}).replace(
        'path = "events.jsonl"', 'path = "taken.jsonl"'
    )
    _reload(d, toml, "still running the previous configuration")
    assert "reload failed:" in d.log and "taken.jsonl: cannot open event file" in d.log
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
        return daemon_toml(
            {"cam1": 'source = "synthetic"\nfps = 25', "cam2": 'source = "synthetic"\nfps = 25'},
            processors={
                "cam1": f'type = "plugins:CountingProcessor"\nlog = "{noted}"\ndelay = {delay}',
                "cam2": 'type = "plugins:SlowProcessor"\ndelay = 0',
            },
            daemon='state_dir = "state"\nstop_timeout = "30s"',
            metrics=port,
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


ONE_CAMERA = daemon_toml(
    {
        "cam1": 'source = "synthetic"\nfps = 25\n'
        'processor = { type = "plugins:SlowProcessor", delay = 0 }'
    }
)
NOBODY = 65534
# Root without the capabilities that let it into other users' folders: an
# unprivileged daemon, as under the units' DynamicUser. (setpriv --reuid would
# be closer, but this machine's venv lives in root's home, out of nobody's reach.)
UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def _survives_reload(d: Daemon, toml: str, problem: str) -> None:
    """Reload ``toml``: the reload fails naming ``problem``, the cameras keep running."""
    before = _pids(d)
    _reload(d, toml, "still running the previous configuration")
    assert problem in d.log
    assert d.proc.poll() is None and _pids(d) == before
    n = len(d.events("frame"))
    d.wait_events(n + 5, "frame")


def _refused_at_start(config: Path, problem: str, prefix: list[str] | None = None) -> None:
    """``edged run`` on ``config`` exits 78 with the problem line, no traceback."""
    done = subprocess.run(
        [*(prefix or []), sys.executable, "-m", "edged", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
    )
    assert done.returncode == 78, done.stderr
    assert "Traceback" not in done.stderr and problem in done.stderr
    assert len(done.stderr.splitlines()) == 2, done.stderr  # the count, then the problem


def test_no_config_kills_a_running_daemon_or_a_start_with_70(tmp_path):
    d = Daemon(tmp_path, ONE_CAMERA)
    d.start()
    try:
        d.wait_events(5, "frame")
        bad = {
            "a source with a 300-character name": (
                ONE_CAMERA.replace('"synthetic"', f'"clips/{"x" * 300}.mp4"'),
                "a path component is 304 bytes long",
            ),
            "an inline table nested 1000 deep": (
                ONE_CAMERA + "source_options = " + "{a=" * 1000 + "1" + "}" * 1000 + "\n",
                "nested too deeply",
            ),
            "a password file that never ends": (
                ONE_CAMERA.replace('"synthetic"', '"rtsp://cam/s"')
                + 'username = "u"\npassword_file = "/dev/zero"\n',
                "not a regular file: /dev/zero",
            ),
        }
        for what, (toml, problem) in bad.items():
            _survives_reload(d, toml, problem)
            path = tmp_path / "start.toml"
            path.write_text(toml)
            _refused_at_start(path, problem)
            assert what
        assert d.stop() == 0
    finally:
        d.kill()


def test_a_camera_added_where_its_lock_cannot_be_made_does_not_stop_the_daemon(tmp_path):
    d = Daemon(tmp_path, ONE_CAMERA)
    d.start()
    try:
        d.wait_events(5, "frame")
        # A state_dir the config check accepts, whose locks/ is a file: the
        # added camera's lock fails inside apply(), after the check.
        (tmp_path / "other").mkdir()
        (tmp_path / "other/locks").write_text("not a folder\n")
        toml = ONE_CAMERA.replace('"state"', '"other"') + (
            '[cameras.cam2]\nsource = "synthetic"\n[metrics]\nlisten = "127.0.0.1:0"\n'
        )
        _reload(d, toml, "reloaded:")
        assert "not starting camera cam2: cannot use daemon.state_dir" in d.log
        assert d.proc.poll() is None
        n = len(d.events("frame"))
        d.wait_events(n + 5, "frame")
        assert d.stop() == 0
    finally:
        d.kill()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_a_source_a_non_root_daemon_cannot_reach_fails_the_reload_not_the_daemon(tmp_path):
    # A file source in a folder only another user may enter.
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "clip.mp4").write_bytes(b"\0" * 1024)
    os.chown(private, NOBODY, NOBODY)
    d = Daemon(tmp_path, ONE_CAMERA, wrap=UNPRIVILEGED)
    d.start()
    try:
        d.wait_events(5, "frame")
        toml = ONE_CAMERA.replace('"synthetic"', f'"{private}/clip.mp4"')
        problem = f"cannot access (Permission denied): {private}/clip.mp4"
        _survives_reload(d, toml, problem)
        path = tmp_path / "start.toml"
        path.write_text(toml + '[metrics]\nlisten = "127.0.0.1:0"\n')
        _refused_at_start(path, problem, UNPRIVILEGED)
        assert d.stop() == 0
    finally:
        d.kill()
