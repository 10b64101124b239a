"""End-to-end: `edged run` as a real process, with real files, processes and shared memory."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from daemon import TESTS, shm_segments, start_daemon, wait_for
from helpers import daemon_toml

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_default_config_writes_motion_events_and_stops_cleanly(tmp_path, daemons):
    toml = (REPO / "config" / "edged.toml").read_text()
    toml = toml.replace("../var/events/events.jsonl", "events.jsonl")
    toml = toml.replace("../var/state", "state")
    toml = toml.replace('listen = "127.0.0.1:9850"', 'listen = "127.0.0.1:0"')
    d = start_daemon(daemons, tmp_path, toml)
    start = d.wait_events(1, "motion.start", timeout=10)[0]
    assert start["camera"] == "demo" and start["processor"] == "motion"
    assert set(start) >= {"schema", "id", "time", "seq", "frame_age_ms", "processing_ms", "data"}
    children = d.children()
    assert sorted(c.name() for c in children) == ["reader:demo", "worker:demo"]
    assert shm_segments(d.pid)
    assert d.stop() == 0
    for child in children:
        assert not child.is_running()
    assert shm_segments(d.pid) == []
    assert "edged stopped" in d.log


def test_process_fps_caps_the_rate_on_fresh_frames(tmp_path, daemons):
    camera = (
        'source = "synthetic"\nfps = 25\nprocess_fps = 5\n'
        '[cameras.cam1.processor]\ntype = "plugins:SlowProcessor"\ndelay = 0'
    )
    d = start_daemon(daemons, tmp_path, daemon_toml({"cam1": camera}))
    events = d.wait_events(16, "frame", timeout=30)[:16]
    assert d.stop() == 0
    # 15 intervals of the camera's own clock: about 5 frames a second, not 25
    span = events[-1]["seq"] - events[0]["seq"]  # in frames of a 25 fps camera
    rate = 15 * 25 / span
    assert 4.0 <= rate <= 5.5, (rate, [e["seq"] for e in events])
    # each one the frame that had just arrived, not one kept from before the rest
    ages = sorted(e["frame_age_ms"] for e in events)
    assert ages[len(ages) // 2] < 20, ages


def test_no_torn_frames_under_load(tmp_path, daemons):
    camera = (
        'source = "plugins:SolidSource"\n'
        "source_options = { width = 1280, height = 720 }\n"
        '[cameras.cam1.processor]\ntype = "plugins:SolidCheck"'
    )
    d = start_daemon(daemons, tmp_path, daemon_toml({"cam1": camera}))
    d.wait_events(20, "ok", timeout=30)
    assert d.events("torn") == []
    assert d.stop() == 0


def test_slow_processor_works_on_fresh_frames_and_memory_stays_flat(
    tmp_path, daemons, rtsp_server_factory
):
    server = rtsp_server_factory(width=1280, height=720, fps=25, pattern="moving")
    camera = (
        f'source = "{server.url}"\n'
        '[cameras.cam1.processor]\ntype = "plugins:SlowProcessor"\ndelay = 0.3\ntimestamps = true'
    )
    d = start_daemon(daemons, tmp_path, daemon_toml({"cam1": camera}))
    d.wait_events(5, "frame", timeout=20)
    procs = {p.name(): p for p in d.children()}
    rss_before = {n: p.memory_info().rss for n, p in procs.items()}
    events = d.wait_events(45, "frame", timeout=40)
    rss_after = {n: p.memory_info().rss for n, p in procs.items()}
    assert d.stop() == 0

    steady = events[5:]
    ages = sorted(e["frame_age_ms"] for e in steady)
    # Each frame is at most about one frame interval (40 ms) old when the
    # processor starts on it, plus scheduling noise: never a growing queue.
    assert ages[int(len(ages) * 0.95)] < 2 * 40 + 20, ages
    assert ages[-1] < 250, ages
    # Measured from the server's own clock (burned into the pixels): the
    # frame reaches the processor within decode delay plus two intervals.
    true_ages = sorted(e["data"]["true_age_ms"] for e in steady if e["data"]["true_age_ms"])
    assert len(true_ages) > len(steady) // 2
    assert true_ages[len(true_ages) // 2] < 400, true_ages
    # ~7 frames arrive per 300 ms processing: the rest are skipped, not queued.
    gaps = [b["seq"] - a["seq"] for a, b in itertools.pairwise(steady)]
    assert sum(gaps) / len(gaps) > 4, gaps
    assert "frames skipped" in d.log
    for name, before in rss_before.items():
        growth = rss_after[name] - before
        assert growth < 30 * 2**20, f"{name} grew by {growth / 2**20:.1f} MiB"


def test_killed_children_are_restarted(tmp_path, daemons):
    camera = (
        'source = "synthetic"\nfps = 25\nrestart_delay = "0.2s"\n'
        '[cameras.cam1.processor]\ntype = "plugins:SlowProcessor"\ndelay = 0.0'
    )
    d = start_daemon(daemons, tmp_path, daemon_toml({"cam1": camera}))
    d.wait_events(5, "frame")
    for role in ("reader", "worker"):
        (victim,) = d.children(role)
        victim.send_signal(signal.SIGKILL)
        wait_for(
            f"a new {role}",
            lambda victim=victim, role=role: [p for p in d.children(role) if p.pid != victim.pid],
        )
        n = len(d.events("frame"))
        d.wait_events(n + 10, "frame")
        assert f"{role} (pid {victim.pid}) killed by SIGKILL" in d.log
    assert d.stop() == 0
    assert shm_segments(d.pid) == []


def test_processor_that_raises_is_logged_counted_and_camera_carries_on(tmp_path, daemons):
    camera = (
        'source = "synthetic"\nfps = 25\n'
        '[cameras.cam1.processor]\ntype = "plugins:FlakyProcessor"\nfail_every = 2'
    )
    d = start_daemon(daemons, tmp_path, daemon_toml({"cam1": camera}))
    d.wait_events(20, "ok")
    assert d.stop() == 0
    log = d.log
    assert "RuntimeError: boom on frame" in log
    assert "Traceback" in log
    # One traceback per run of failures, not one per frame
    assert log.count("Traceback") <= 2
    assert "processor errors" in log


def test_supervisor_sigkill_leaves_no_children_or_shared_memory(tmp_path, daemons):
    d = start_daemon(daemons, tmp_path, daemon_toml({"cam1": 'source = "synthetic"'}))
    wait_for("children", lambda: len(d.children()) == 2)
    kids = d.children()
    wait_for("shared memory", lambda: shm_segments(d.pid))
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    gone = psutil.wait_procs(kids, timeout=10)[1]
    assert gone == [], f"children outlived the supervisor: {gone}"
    wait_for("shared memory cleaned up", lambda: shm_segments(d.pid) == [], timeout=10)


def test_unknown_camera_on_the_command_line_exits_78(tmp_path):
    cfg = tmp_path / "edged.toml"
    cfg.write_text(daemon_toml({"cam1": 'source = "synthetic"'}))
    r = subprocess.run(
        [sys.executable, "-m", "edged", "run", "--config", str(cfg), "--camera", "nope"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 78
    assert "--camera nope: no such camera (configured: cam1)" in r.stderr


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        # caught by the config check now, with the key and the path
        ('[daemon]\nstate_dir = "afile/state"', "daemon.state_dir: not a folder: "),
        ('[events]\npath = "afile/events.jsonl"', "events.path: not a folder: "),
        ('[metrics]\nlisten = "192.0.2.1:9850"', "cannot serve metrics on 192.0.2.1:9850"),
    ],
    ids=["state_dir", "events", "listen"],
)
def test_a_path_or_address_that_cannot_work_exits_78_with_what_and_where(
    tmp_path, setting, expected
):
    # Restarting cannot fix a file where a folder should be, or an address
    # that is not this box's: 78, so systemd does not restart edged in a loop.
    (tmp_path / "afile").write_text("not a folder\n")
    cfg = tmp_path / "edged.toml"
    body = '[cameras.cam1]\nsource = "synthetic"\n'
    defaults = {
        "[events]": '[events]\npath = "events.jsonl"',
        "[daemon]": '[daemon]\nstate_dir = "state"',
        "[metrics]": '[metrics]\nlisten = "127.0.0.1:0"',
    }
    section = setting.split("\n")[0]
    cfg.write_text("\n".join([setting, *(v for k, v in defaults.items() if k != section), body]))
    r = subprocess.run(
        [sys.executable, "-m", "edged", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 78, r.stderr
    assert expected in r.stderr
    assert "Traceback" not in r.stderr


def test_check_config_reports_every_mistake_and_exits_78(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        "[events]\n"
        "fsync = 'sometimes'\n"
        "[cameras.cam1]\n"
        "source = 'synthetic'\n"
        "stale_afer = '5s'\n"
        "[cameras.cam1.processor]\n"
        "type = 'motion'\n"
        "min_area = -3\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "edged", "check-config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 78
    err = r.stderr
    assert "3 errors" in err
    assert "bad.toml:2: events.fsync" in err
    assert "bad.toml:5: cameras.cam1.stale_afer: unknown key (did you mean 'stale_after'?)" in err
    assert "bad.toml:8: cameras.cam1.processor.min_area" in err


def test_check_config_accepts_the_shipped_default():
    r = subprocess.run(
        [sys.executable, "-m", "edged", "check-config", str(REPO / "config" / "edged.toml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert "demo: synthetic -> motion" in r.stdout


def test_motion_on_an_rtsp_camera_decodes_grey_through_pyav(tmp_path, daemons, rtsp_server):
    camera = f'source = "{rtsp_server.url}"\n[cameras.cam1.processor]\ntype = "motion"'
    (tmp_path / "check.toml").write_text(daemon_toml({"cam1": camera}))
    r = subprocess.run(
        [sys.executable, "-m", "edged", "check-config", str(tmp_path / "check.toml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert f"cam1: {rtsp_server.url} -> motion, grey frames" in r.stdout
    d = start_daemon(daemons, tmp_path, daemon_toml({"cam1": camera}))
    start = d.wait_events(1, "motion.start", timeout=20)[0]
    assert start["camera"] == "cam1" and start["frame_age_ms"] < 1000
    (reader,) = d.children("reader")
    libs = {os.path.basename(m.path).split("-")[0] for m in reader.memory_maps()
            if "/av.libs/" in m.path}  # fmt: skip
    assert "libavcodec" in libs  # PyAV's own FFmpeg decodes
    assert d.stop() == 0


@pytest.mark.parametrize("pixels", ["bgr", "gray"])  # OpenCV's and PyAV's errors
@pytest.mark.parametrize(
    ("credentials", "path", "cause"),
    [
        ("edged:wrong-Pa55word", "/stream", "authentication failed"),
        ("edged:right-Pa55word", "/nope", "stream not found"),
    ],
)
def test_camera_failures_name_their_cause_and_never_show_the_password(
    tmp_path, daemons, rtsp_server_factory, credentials, path, cause, pixels
):
    server = rtsp_server_factory(user="edged", password="right-Pa55word")
    url = f"rtsp://{credentials}@127.0.0.1:{server.port}{path}"
    camera = f'source = "{url}"\nopen_timeout = "3s"\npixel_format = "{pixels}"'
    d = start_daemon(daemons, tmp_path, daemon_toml({"cam1": camera}))
    d.wait_log(cause, timeout=20)
    d.wait_log("camera cam1: reconnecting")
    assert d.stop() == 0
    log = d.log
    assert "Pa55word" not in log
    assert f"rtsp://edged:***@127.0.0.1:{server.port}{path}" in log
    # FFmpeg's own words come along once, scrubbed: through fd 2 for both decoders
    expected = "DESCRIBE failed: 401" if "wrong" in credentials else "DESCRIBE failed: 404"
    assert log.count("FFmpeg said:") == 1 and expected in log
    # the reader's line with the detail and the supervisor's state line, not one per retry
    assert log.count(cause) == 2
    assert f"camera cam1: reconnecting ({cause}" in log


def test_events_command_shows_what_the_daemon_wrote(tmp_path, daemons):
    camera = (
        'source = "synthetic"\nfps = 25\n'
        '[cameras.cam1.processor]\ntype = "plugins:SlowProcessor"\ndelay = 0.0'
    )
    d = start_daemon(daemons, tmp_path, daemon_toml({"cam1": camera}))
    d.wait_events(10, "frame")
    assert d.stop() == 0
    written = d.events()

    def edged_events(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edged", "events", "--config", str(d.config), *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": str(TESTS)},
        )

    raw = edged_events("--json", "--camera", "cam1")
    assert raw.returncode == 0, raw.stderr
    assert [json.loads(line)["id"] for line in raw.stdout.splitlines()] == [
        e["id"] for e in written
    ]
    human = edged_events("--type", "frame")
    assert human.returncode == 0
    lines = human.stdout.splitlines()
    assert len(lines) == len(written)
    assert " cam1 frame seq=" in lines[0]
    assert edged_events("--camera", "nope").stdout == ""


def _starting(d) -> bool:
    """The daemon is past the interpreter's own start: it catches SIGHUP (edged's
    first act), or its heavy imports have begun (numpy mapped) without that."""
    if d.proc.poll() is not None:
        raise AssertionError(f"edged exited while starting (rc {d.proc.returncode}):\n{d.log}")
    try:
        status = Path(f"/proc/{d.pid}/status").read_text()
        maps = Path(f"/proc/{d.pid}/maps").read_text()
    except OSError:
        return False
    caught = re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M)
    assert caught is not None, status
    return bool(int(caught[1], 16) >> (signal.SIGHUP - 1) & 1) or "_multiarray_umath" in maps


def test_sighup_while_starting_does_not_kill_the_daemon(tmp_path, daemons):
    d = start_daemon(daemons, tmp_path, daemon_toml({"cam1": 'source = "synthetic"'}))
    wait_for("edged starting", lambda: _starting(d), every=0.002)
    assert "edged started" not in d.log  # the signals below come during the start

    def hup() -> bool:
        code = d.proc.poll()
        assert code is None, f"a SIGHUP while starting ended edged (rc {code}):\n{d.log}"
        d.proc.send_signal(signal.SIGHUP)
        return "edged started" in d.log

    wait_for("edged started", hup, timeout=20, every=0.02)
    d.wait_log("camera cam1: streaming")
    assert d.stop() == 0
    assert "Traceback" not in d.log


def test_sigterm_while_starting_stops_cleanly(tmp_path, daemons):
    d = start_daemon(daemons, tmp_path, daemon_toml({"cam1": 'source = "synthetic"'}))
    wait_for("edged starting", lambda: _starting(d), every=0.002)
    assert "edged started" not in d.log
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(20) == 0, d.log
    assert "SIGTERM" in d.log and "Traceback" not in d.log
    assert shm_segments(d.pid) == []
