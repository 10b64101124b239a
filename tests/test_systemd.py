"""systemd integration: the sd_notify protocol, the units, install-systemd, a real systemd.

Three layers: the :class:`Notifier` and STATUS text in-process; the real
daemon talking to a notify socket bound here (READY, STATUS, WATCHDOG cadence,
RELOADING/READY, STOPPING, children without NOTIFY_SOCKET); and the shipped
units under a real systemd 252 booted in a namespace (tests/components/systemd.py).
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import io
import itertools
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from components.rtsp import free_port
from components.systemd import SystemdSandbox, sandbox_problem
from daemon import Daemon, wait_for

from edged.camera import CameraSnapshot
from edged.install import MARKER, render_config, render_unit, run_install
from edged.systemd import Notifier, format_status, sanitize_status

REPO = Path(__file__).resolve().parent.parent
NOTIFY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


# ======================================================================================
# A notify socket, as systemd binds it
# ======================================================================================


@dataclasses.dataclass
class Message:
    time: float  # time.monotonic() at receipt
    pid: int  # the sender, from SCM_CREDENTIALS
    fields: dict[str, str]


class NotifySocket:
    """An AF_UNIX datagram socket with an abstract name; ``address`` is for NOTIFY_SOCKET."""

    def __init__(self) -> None:
        self.name = f"edged-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages: list[Message] = []
        self._seen = 0

    @property
    def address(self) -> str:
        return "@" + self.name

    def _receive(self, timeout: float) -> bool:
        if not select.select([self.sock], [], [], max(0.0, timeout))[0]:
            return False
        size = struct.calcsize("3i")
        data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(size))
        pid = -1
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = array.array("i", payload[:size])[0]
        fields = dict(line.split("=", 1) for line in data.decode("latin-1").splitlines())
        self.messages.append(Message(time.monotonic(), pid, fields))
        return True

    def wait(self, what: str, match: Callable[[Message], bool], timeout: float = 15) -> Message:
        """The next message (after the last one ``wait`` returned) that ``match``es."""
        deadline = time.monotonic() + timeout
        while True:
            while self._seen < len(self.messages):
                msg = self.messages[self._seen]
                self._seen += 1
                if match(msg):
                    return msg
            if not self._receive(deadline - time.monotonic()) and time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def _has(key: str, value: str | None = None) -> Callable[[Message], bool]:
    return lambda m: key in m.fields and (value is None or m.fields[key] == value)


# ======================================================================================
# STATUS text and the Notifier, in-process
# ======================================================================================


def _snap(name: str, state: str, fps: float = 0.0, age: float = float("inf"), reason: str = ""):
    return CameraSnapshot(
        name=name,
        state=state,
        reason=reason,
        state_since=0.0,
        up=state == "streaming",
        last_frame_time=0.0,
        frame_age=age,
        fps=fps,
        width=640,
        height=360,
        stale_after=5.0,
        counters={},
        restarts={},
        restart_reasons={},
        last_error="",
    )


def test_format_status_per_camera_state_fps_and_age():
    snaps = {
        "cam1": _snap("cam1", "streaming", 25.0, 0.04),
        "cam2": _snap("cam2", "reconnecting"),
        "cam3": _snap("cam3", "stalled", reason="no frame for 7.2s"),
    }
    assert format_status(snaps) == (
        "cam1 streaming 25.0fps age 40ms; cam2 reconnecting; cam3 stalled (no frame for 7.2s)"
    )
    assert format_status({"c": _snap("c", "streaming", 5.0, 42.0)}) == "c streaming 5.0fps age 42s"
    assert format_status({}) == "no cameras"


def test_format_status_summarises_many_cameras_within_the_limit():
    snaps = {f"camera-{i:02d}": _snap(f"camera-{i:02d}", "streaming", 25, 0.05) for i in range(30)}
    snaps["camera-07"] = _snap("camera-07", "restarting", reason="reader killed by SIGKILL")
    text = format_status(snaps)
    assert len(text) <= 200
    assert text.startswith("30 cameras: 29 streaming, 1 restarting; not streaming: camera-07")


def test_sanitize_status_keeps_one_short_ascii_line():
    assert sanitize_status("caméra ok\nREADY=1\tx") == "cam?ra ok READY=1 x"
    long = sanitize_status("x" * 500)
    assert len(long) == 200 and long.endswith("...")


@pytest.fixture
def clean_env(monkeypatch):
    for name in NOTIFY_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_notifier_is_a_no_op_outside_systemd(clean_env):
    n = Notifier()
    assert not n.enabled and n.watchdog_interval is None
    n.ready("x")
    n.status("y")
    n.reloading()
    n.stopping()
    assert not n.watchdog_due(0.0) and not n.ping()


def test_notifier_takes_the_variables_out_of_the_environment(clean_env, notify_socket):
    clean_env.setenv("NOTIFY_SOCKET", notify_socket.address)
    clean_env.setenv("WATCHDOG_USEC", "1000000")
    clean_env.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier()
    assert all(name not in os.environ for name in NOTIFY_VARS)
    assert n.enabled and n.watchdog_timeout == 1.0 and n.watchdog_interval == 0.5
    # cadence: due at once, then every half of WATCHDOG_USEC
    assert n.ping(100.0)
    assert not n.watchdog_due(100.4) and not n.ping(100.4)
    assert n.watchdog_due(100.5) and n.ping(100.5)
    # STATUS only when it changes
    n.ready("cam1 starting")
    n.status("cam1 starting")
    n.status("cam1 streaming")
    n.reloading()
    n.stopping()
    sock = notify_socket
    assert sock.wait("ping", _has("WATCHDOG", "1")).pid == os.getpid()
    sock.wait("ping", _has("WATCHDOG", "1"))
    ready = sock.wait("READY", lambda m: True)
    assert ready.fields == {"READY": "1", "STATUS": "cam1 starting"}
    assert sock.wait("STATUS", lambda m: True).fields == {"STATUS": "cam1 streaming"}
    reloading = sock.wait("RELOADING", lambda m: True)
    assert set(reloading.fields) == {"RELOADING", "MONOTONIC_USEC"}
    now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 <= now_us - int(reloading.fields["MONOTONIC_USEC"]) < 5_000_000
    assert sock.wait("STOPPING", lambda m: True).fields == {"STOPPING": "1"}
    n.close()
    assert not n.enabled and not n.ping(200.0)
    n.ready("closed")  # a no-op


def test_notifier_does_not_ping_for_another_process(clean_env, notify_socket):
    clean_env.setenv("NOTIFY_SOCKET", notify_socket.address)
    clean_env.setenv("WATCHDOG_USEC", "1000000")
    clean_env.setenv("WATCHDOG_PID", "1")
    n = Notifier()
    assert n.enabled and n.watchdog_interval is None and not n.ping()
    n.close()


def test_notifier_survives_a_missing_socket(clean_env):
    clean_env.setenv("NOTIFY_SOCKET", f"@edged-test-nobody-{uuid.uuid4().hex}")
    n = Notifier()
    assert not n.enabled and "NOTIFY_SOCKET" not in os.environ
    n.ready("x")


def test_notifier_connect_failure_leaves_no_unclosed_socket(clean_env):
    # sdnotify 0.3.2 drops its socket unclosed when connect() fails; under
    # filterwarnings=error the collector's ResourceWarning would fail this test.
    clean_env.setenv("NOTIFY_SOCKET", f"@edged-test-nobody-{uuid.uuid4().hex}")
    before = len(psutil.Process().open_files()) + psutil.Process().num_fds()
    for _ in range(20):
        assert not Notifier().enabled
    assert len(psutil.Process().open_files()) + psutil.Process().num_fds() <= before


def test_notifier_send_to_a_full_queue_does_not_hang(clean_env, notify_socket, monkeypatch, caplog):
    # Nobody reads the socket: fill its queue, then a STATUS must give up
    # after the send timeout instead of blocking the supervisor's loop forever.
    monkeypatch.setattr("edged.systemd.SEND_TIMEOUT", 0.2)
    clean_env.setenv("NOTIFY_SOCKET", notify_socket.address)
    n = Notifier()
    # A sender also stops at its own buffer's limit: more senders until a new
    # one cannot send a single datagram, which is the receiver's queue full.
    fillers: list[socket.socket] = []
    while len(fillers) < 1000:
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        fillers.append(filler)
        filler.setblocking(False)
        filler.connect("\0" + notify_socket.name)
        sent = 0
        with contextlib.suppress(BlockingIOError):
            for _ in range(100_000):
                filler.send(b"STATUS=filler")
                sent += 1
        if not sent:
            break
    done = threading.Event()
    worker = threading.Thread(target=lambda: (n.status("blocked?"), done.set()), daemon=True)
    worker.start()
    assert done.wait(10), "Notifier.status() blocked on systemd's full queue"
    assert "cannot notify systemd" in caplog.text
    n.close()
    for filler in fillers:
        filler.close()


# ======================================================================================
# The real daemon and a notify socket
# ======================================================================================

SYNTHETIC = """\
[events]
path = "events.jsonl"
[daemon]
state_dir = "state"
[cameras.cam1]
source = "synthetic"
width = 320
height = 180
fps = 25
"""


@pytest.fixture
def notified(tmp_path, notify_socket) -> Iterator[tuple[Daemon, NotifySocket]]:
    env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "1000000"}
    d = Daemon(tmp_path, SYNTHETIC, env=env)
    d.start()
    yield d, notify_socket
    d.kill()


def _environ(proc: psutil.Process) -> str:
    return Path(f"/proc/{proc.pid}/environ").read_bytes().decode(errors="replace")


@pytest.mark.slow
def test_daemon_ready_status_watchdog_and_stopping(notified):
    d, sock = notified
    ready = sock.wait("READY=1", _has("READY", "1"))
    assert ready.fields["STATUS"].startswith("cam1 ")
    # READY comes after the children are spawned; they never see the notify variables
    # reader, worker, resource tracker, and the fork server the first two come from
    assert len(psutil.Process(d.pid).children(recursive=True)) >= 4
    wait_for("named children", lambda: len(d.children()) == 2)
    for kid in psutil.Process(d.pid).children(recursive=True):
        assert not any(f"{v}=" in _environ(kid) for v in NOTIFY_VARS), kid.name()
    sock.wait("STATUS streaming", lambda m: "streaming" in m.fields.get("STATUS", ""))
    assert re.fullmatch(r"cam1 streaming \d+\.\dfps age \d+ms", sock.messages[-1].fields["STATUS"])
    # WATCHDOG_USEC=1000000: a ping about every 0.5 s
    pings = [sock.wait("WATCHDOG=1", _has("WATCHDOG", "1")).time for _ in range(7)]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert all(0.4 <= g <= 0.8 for g in gaps), gaps
    assert 0.45 <= sum(gaps) / len(gaps) <= 0.65, gaps
    d.proc.send_signal(signal.SIGTERM)
    stopping = sock.wait("STOPPING=1", _has("STOPPING", "1"))
    assert d.proc.wait(15) == 0
    # STATUS alone only when it changed (READY=1 repeats it)
    statuses = [m.fields for m in sock.messages if "STATUS" in m.fields]
    for a, b in itertools.pairwise(statuses):
        assert "READY" in b or a["STATUS"] != b["STATUS"], statuses
    assert all(m.pid == d.pid for m in sock.messages)
    assert [m for m in sock.messages if "READY" in m.fields] == [ready]
    assert stopping.fields == {"STOPPING": "1"}


@pytest.mark.slow
def test_daemon_reloading_then_ready_around_sighup(notified):
    d, sock = notified
    sock.wait("READY=1", _has("READY", "1"))
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    d.proc.send_signal(signal.SIGHUP)
    reloading = sock.wait("RELOADING=1", _has("RELOADING", "1"))
    assert before <= int(reloading.fields["MONOTONIC_USEC"])
    assert int(reloading.fields["MONOTONIC_USEC"]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    ready = sock.wait("READY=1 after the reload", _has("READY", "1"))
    assert "reload failed" not in ready.fields["STATUS"]
    # A broken config: still running the old one, the failure in STATUS
    d.config.write_text(SYNTHETIC.replace("fps = 25", "fps = -1\nbogus = 1"))
    d.proc.send_signal(signal.SIGHUP)
    sock.wait("RELOADING=1", _has("RELOADING", "1"))
    failed = sock.wait("READY=1 after the failed reload", _has("READY", "1"))
    assert failed.fields["STATUS"].startswith("reload failed: 2 error(s)"), failed.fields
    assert d.proc.poll() is None
    d.wait_log("cameras.cam1.bogus")
    d.config.write_text(SYNTHETIC)
    d.proc.send_signal(signal.SIGHUP)
    sock.wait("RELOADING=1", _has("RELOADING", "1"))
    fixed = sock.wait("READY=1 after the fix", _has("READY", "1"))
    assert fixed.fields["STATUS"].startswith("cam1 "), fixed.fields
    assert d.stop() == 0


# ======================================================================================
# Fatal errors under the journal: every line with its priority
# ======================================================================================


def _edged_under_journal(tmp_path: Path, *args: str) -> tuple[int, str]:
    """Run the real ``edged`` with stderr on a file that JOURNAL_STREAM names, as systemd
    sets it up for a unit: (exit status, what it wrote)."""
    out = tmp_path / "journal-stream.log"
    with open(out, "wb") as f:
        st = os.fstat(f.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        env.pop("NOTIFY_SOCKET", None)
        code = subprocess.run(
            [sys.executable, "-m", "edged", *args],
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=f,
            env=env,
            timeout=60,
        ).returncode
    return code, out.read_text()


def _all_prefixed(text: str, priorities: str = "23") -> bool:
    return bool(text.strip()) and all(
        re.match(rf"<[{priorities}]>", line) for line in text.splitlines()
    )


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_config_errors_carry_the_err_priority_under_the_journal(tmp_path, command):
    config = tmp_path / "edged.toml"
    config.write_text(SYNTHETIC.replace("fps = 25", "fps = -5"))
    args = ["run", "--config", str(config)] if command == "run" else ["check-config", str(config)]
    code, text = _edged_under_journal(tmp_path, *args)
    assert code == 78, text
    assert "cameras.cam1.fps" in text and _all_prefixed(text, "3"), text


def test_a_busy_metrics_address_is_logged_at_err_priority(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "edged.toml"
        config.write_text(SYNTHETIC + f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
        code, text = _edged_under_journal(tmp_path, "run", "--config", str(config))
    assert code == 70, text
    (line,) = [ln for ln in text.splitlines() if "cannot serve metrics" in ln]
    assert line.startswith("<3>edged: cannot serve metrics") and "Address already in use" in line


# ======================================================================================
# edged reload: SIGHUP and the daemon's verdict
# ======================================================================================


def _edged_reload(d: Daemon) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "edged", "reload", "--pid", str(d.pid), "--config", str(d.config)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_edged_reload_waits_for_the_verdict_and_fails_when_rejected(tmp_path):
    config = SYNTHETIC + "[metrics]\nenabled = false\n"  # the verdict needs no listener
    d = Daemon(tmp_path, config)
    d.start()
    try:
        d.wait_log("edged started")
        ok = _edged_reload(d)
        assert ok.returncode == 0 and f"pid {d.pid} reloaded" in ok.stdout, ok.stderr
        d.config.write_text(config.replace("fps = 25", "fps = 25\nbogus = 1"))
        bad = _edged_reload(d)
        assert bad.returncode == 78, bad.stdout + bad.stderr
        assert f"pid {d.pid} rejected" in bad.stderr and "cameras.cam1.bogus" in bad.stderr
        assert d.proc is not None and d.proc.poll() is None
        d.config.write_text("[cameras.cam1\n")  # not even TOML: refused before signalling
        broken = _edged_reload(d)
        assert broken.returncode == 78 and "TOML syntax error" in broken.stderr, broken.stderr
        d.config.write_text(config)
        assert _edged_reload(d).returncode == 0
        gone = subprocess.run(
            [sys.executable, "-m", "edged", "reload", "--pid", "1", "--config", str(d.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert gone.returncode == 70 and "pid 1 is not an edged daemon" in gone.stderr
        assert d.stop() == 0
        assert not list((tmp_path / "state").glob("reload-*.json"))
    finally:
        d.kill()


# ======================================================================================
# edged status of per-camera daemons
# ======================================================================================


@pytest.mark.slow
def test_status_without_camera_asks_every_per_camera_daemon(tmp_path):
    ports = {name: free_port() for name in ("default", "cam1", "cam2")}
    toml = (
        f'[metrics]\nlisten = "127.0.0.1:{ports["default"]}"\n'
        '[daemon]\nstate_dir = "state"\n'
        + "".join(
            f'[cameras.{cam}]\nsource = "synthetic"\nwidth = 160\nheight = 90\nfps = 10\n'
            f'metrics_listen = "127.0.0.1:{ports[cam]}"\n'
            for cam in ("cam1", "cam2")
        )
    )
    for cam in ("cam1", "cam2"):
        (tmp_path / cam).mkdir()  # each its own state and log; the same config
    units = [Daemon(tmp_path / cam, toml, "--camera", cam) for cam in ("cam1", "cam2")]
    config = units[0].config

    def status() -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "edged", "status", "--config", str(config)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    try:
        for d in units:
            d.start()
        done = wait_for("both cameras healthy", lambda: (r := status()).returncode == 0 and r)
        for cam in ("cam1", "cam2"):
            assert f"edged at http://127.0.0.1:{ports[cam]}: healthy" in done.stdout, done
            assert re.search(rf"^{cam}\s+streaming", done.stdout, re.M), done.stdout
        assert str(ports["default"]) not in done.stdout + done.stderr
        assert units[1].stop() == 0
        done = status()
        assert done.returncode == 1, done
        assert "camera cam2: not served by any edged reached" in done.stdout
    finally:
        for d in units:
            d.kill()


# ======================================================================================
# The units and install-systemd, on this machine's files
# ======================================================================================


def test_render_unit_runs_this_edged_and_quotes_for_systemd():
    text = (REPO / "systemd" / "edged@.service").read_text()
    out = render_unit(text, ["/srv/my venv/bin/python", "-m", "edged"], "x")
    assert out.startswith(MARKER)
    (line,) = [ln for ln in out.splitlines() if ln.startswith("ExecStart=")]
    assert line == (
        'ExecStart="/srv/my venv/bin/python" -m edged run --config /etc/edged/edged.toml '
        "--camera %i"
    )
    assert render_unit(text, ["/o/100%/$x"]).count("ExecStart=/o/100%%/$$x run") == 1


def test_render_config_points_at_the_writable_folders():
    import tomllib

    data = tomllib.loads(render_config((REPO / "config" / "example.toml").read_text()))
    assert data["events"]["path"] == "/var/log/edged/events.jsonl"
    assert data["daemon"]["state_dir"] == "/var/lib/edged"
    assert render_config("[cameras.a]\nsource = 'x'\n").count("[daemon]") == 1


def test_install_and_uninstall_in_a_prefix(tmp_path, capsys):
    assert run_install(tmp_path) == 0
    units = tmp_path / "etc/systemd/system"
    config = tmp_path / "etc/edged/edged.toml"
    assert sorted(p.name for p in units.iterdir()) == ["edged.service", "edged@.service"]
    edged = Path(sys.executable).parent / "edged"
    assert f"ExecStart={edged} run --config" in (units / "edged@.service").read_text()
    assert "skipped systemctl daemon-reload" in capsys.readouterr().out
    config.write_text("# mine\n")
    assert run_install(tmp_path) == 0
    assert config.read_text() == "# mine\n", "an existing config is never overwritten"
    wants = units / "multi-user.target.wants"
    wants.mkdir()
    (wants / "edged@cam1.service").symlink_to("/etc/systemd/system/edged@.service")
    (tmp_path / "var/lib/private/edged").mkdir(parents=True)
    dropin = units / "edged@cam1.service.d"  # systemctl edit edged@cam1
    dropin.mkdir()
    (dropin / "override.conf").write_text("[Service]\nLoadCredential=cam1.pw:/etc/cam1.pw\n")
    assert run_install(tmp_path, uninstall=True, dry_run=True) == 0
    assert (units / "edged.service").exists()
    capsys.readouterr()
    assert run_install(tmp_path, uninstall=True) == 0
    assert f"kept the drop-ins {dropin} (--purge removes them)" in capsys.readouterr().out
    assert sorted(units.iterdir()) == [dropin, wants] and list(wants.iterdir()) == []
    assert config.exists() and (tmp_path / "var/lib/private/edged").exists()
    assert run_install(tmp_path, uninstall=True, purge=True) == 0
    assert not config.parent.exists() and not (tmp_path / "var/lib/private/edged").exists()
    assert f"removed {dropin} (drop-ins)" in capsys.readouterr().out
    assert list(units.iterdir()) == [wants]


def test_the_installed_config_passes_its_check_and_names_a_camera_that_runs(tmp_path):
    edged = [sys.executable, "-m", "edged"]
    done = subprocess.run(
        [*edged, "install-systemd", "--prefix", str(tmp_path), "--no-reload"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "systemctl enable --now edged@demo " in done.stdout
    config = tmp_path / "etc/edged/edged.toml"
    text = config.read_text()
    assert "# [cameras.front-door]" in text and "# [cameras.yard.processor]" in text
    check = subprocess.run(
        [*edged, "check-config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "OK, 1 camera(s)" in check.stdout and "  demo: synthetic" in check.stdout


def test_install_refusals_are_usage_errors_not_internal_ones(tmp_path, monkeypatch, capsys):
    from edged import cli, install

    monkeypatch.setattr(install, "edged_command", lambda: ["/root/venv/bin/edged"])
    assert cli.main(["install-systemd", "--prefix", str(tmp_path)]) == 64
    err = capsys.readouterr().err
    assert "/root/venv/bin/edged is under /root, which ProtectHome=yes hides" in err, err
    assert "internal error" not in err


def test_install_reads_the_units_from_the_package_in_any_folder(tmp_path, monkeypatch):
    # The wheel's case, end to end: tests/test_package.py.
    monkeypatch.chdir(tmp_path)
    assert run_install(tmp_path / "root", out=io.StringIO()) == 0
    assert (tmp_path / "root/etc/systemd/system/edged@.service").exists()


def _render(folder: Path) -> Path:
    units = folder / "units"
    run_install(folder, unit_dir=units, reload=False)
    return units


def test_units_verify_clean_and_exposure_at_most_2(tmp_path):
    units = _render(tmp_path)
    for unit in ("edged@cam1.service", "edged.service"):
        result = subprocess.run(
            ["systemd-analyze", "verify", str(units / unit)], capture_output=True, text=True
        )
        assert (result.returncode, result.stdout + result.stderr) == (0, ""), unit
        result = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", "--no-pager", str(units / unit)],
            capture_output=True,
            text=True,
        )
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
        assert m, result.stdout + result.stderr
        assert float(m[1]) <= 2.0, result.stdout


# ======================================================================================
# A real systemd
# ======================================================================================

UNIT_DIR = "run/systemd/system"  # in the sandbox: its own tmpfs


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SystemdSandbox]:
    """systemd 252 as PID 1 of a namespace, with the units installed by install-systemd."""
    problem = sandbox_problem()
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    workdir = REPO / "var" / f"test-systemd-{os.getpid()}"
    # The units run this checkout's venv: seen at their paths even in /tmp.
    box = SystemdSandbox(workdir, keep=[REPO, Path(sys.prefix)])
    try:
        box.start()
        box.overlay("/etc", "/var/lib", "/var/log")
        # The sandbox's PIDs are not the host's: an edged in it would take the host's
        # edged segments for leftovers of dead processes.
        box.tmpfs("/dev/shm")
        box.systemctl("start", "systemd-journald.socket", "systemd-journald.service")
        units = str(box.root / UNIT_DIR)
        install = ["install-systemd", "--prefix", str(box.root), "--unit-dir", units]
        result = subprocess.run(
            [sys.executable, "-m", "edged", *install, "--no-reload"],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert (box.root / "etc/edged/edged.toml").exists()
        _bind_checkout(box)
        box.systemctl("daemon-reload")
        yield box
    finally:
        box.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def box(sandbox: SystemdSandbox) -> Iterator[SystemdSandbox]:
    """The module's sandbox, with every edged unit stopped and reset after the test."""
    sandbox.mark()
    yield sandbox
    sandbox.systemctl("stop", "edged.service", "edged@*.service", check=False)
    sandbox.systemctl("reset-failed", check=False)
    dropins = sandbox.root / UNIT_DIR / "edged@.service.d"
    added = [f for f in dropins.glob("*") if f.name != CHECKOUT_DROPIN]
    for extra in added:
        shutil.rmtree(extra) if extra.is_dir() else extra.unlink()
    if added:
        sandbox.systemctl("daemon-reload")


CHECKOUT_DROPIN = "test-checkout.conf"


def _bind_checkout(box: SystemdSandbox) -> None:
    """A checkout (and venv) in /tmp is bound into the sandbox at its own path, but
    DynamicUser= implies PrivateTmp=: the units get a /tmp of their own. A drop-in
    binds it into theirs too; the units themselves stay as shipped."""
    hidden = [
        str(p)
        for p in dict.fromkeys([REPO, Path(sys.prefix)])
        if any(p.is_relative_to(h) for h in ("/tmp", "/var/tmp"))
    ]
    if not hidden:
        return
    for unit in ("edged.service", "edged@.service"):
        dropin = box.root / UNIT_DIR / f"{unit}.d" / CHECKOUT_DROPIN
        dropin.parent.mkdir(exist_ok=True)
        dropin.write_text("[Service]\n" + "".join(f"BindReadOnlyPaths={p}\n" for p in hidden))


def _write_config(box: SystemdSandbox, cameras: dict[str, str], extra: str = "") -> None:
    text = [
        '[events]\npath = "/var/log/edged/events.jsonl"',
        '[daemon]\nstate_dir = "/var/lib/edged"\nstop_timeout = "5s"',
        extra or '[metrics]\nlisten = "127.0.0.1:0"',
    ]
    text += [f"[cameras.{name}]\n{body}" for name, body in cameras.items()]
    path = box.root / "etc/edged/edged.toml"
    path.write_text("\n".join(text) + "\n")
    path.chmod(0o644)


def _show(box: SystemdSandbox, unit: str, *props: str) -> dict[str, str]:
    return box.show(unit, *props)


def _status_text(box: SystemdSandbox, unit: str) -> str:
    return _show(box, unit, "StatusText")["StatusText"]


def _wait_streaming(box: SystemdSandbox, unit: str, camera: str, timeout: float = 20) -> str:
    return wait_for(
        f"{unit}: STATUS {camera} streaming",
        lambda: (t := _status_text(box, unit)).startswith(f"{camera} streaming") and t,
        timeout,
    )


def _procs(box: SystemdSandbox, unit: str) -> list[psutil.Process]:
    """The unit's processes (host PIDs), from its cgroup."""
    cgroup = _show(box, unit, "ControlGroup")["ControlGroup"]
    if not cgroup:
        return []
    # cgroup v2, or the hybrid layout (v1 controllers beside a "unified" v2 tree)
    for tree in ("unified", "systemd", ""):
        path = box.root / "sys/fs/cgroup" / tree / cgroup.lstrip("/") / "cgroup.procs"
        if path.exists():
            break
    else:
        return []
    pids = [int(x) for x in path.read_text().split()]
    return [psutil.Process(p) for p in pids if psutil.pid_exists(p)]


def _children(box: SystemdSandbox, unit: str) -> dict[str, int]:
    out = {}
    for proc in _procs(box, unit):
        try:
            out[proc.name()] = proc.pid
        except psutil.Error:
            continue
    return out


@pytest.mark.slow
def test_unit_is_active_only_after_ready_and_shows_status(box, rtsp_server):
    _write_config(box, {"cam1": f'source = "{rtsp_server.url}"'})
    box.systemctl("start", "--no-block", "edged@cam1.service")
    seen = []
    props = ("ActiveState", "SubState", "MainPID", "StatusText")

    def active() -> bool:
        state = _show(box, "edged@cam1.service", *props)
        seen.append(state)
        if state["ActiveState"] == "failed":
            raise AssertionError(box.journal("edged@cam1.service"))
        return state["ActiveState"] == "active"

    wait_for("edged@cam1 active", active, timeout=30)
    # The process ran for a while before it said READY, and READY came with a STATUS
    assert any(s["ActiveState"] == "activating" and s["MainPID"] != "0" for s in seen), seen
    assert seen[-1]["StatusText"].startswith("cam1 "), seen[-1]
    _wait_streaming(box, "edged@cam1.service", "cam1")
    status = box.systemctl("status", "--no-pager", "edged@cam1.service").stdout
    assert re.search(r'Status: "cam1 streaming \d+\.\dfps age \d+ms"', status), status
    unit = _show(
        box,
        "edged@cam1.service",
        "Type",
        "NotifyAccess",
        "WatchdogUSec",
        "Restart",
        "UID",
        "KillMode",
    )
    assert unit["Type"] == "notify" and unit["NotifyAccess"] == "main", unit
    assert unit["WatchdogUSec"] == "10s" and unit["Restart"] == "on-failure", unit
    assert unit["KillMode"] == "mixed" and int(unit["UID"]) != 0, unit
    kids = _children(box, "edged@cam1.service")
    assert {"reader:cam1", "worker:cam1"} <= set(kids), kids
    main_env = _environ(psutil.Process(kids["edged"]))
    assert "NOTIFY_SOCKET=" in main_env and "WATCHDOG_USEC=" in main_env
    for name in ("reader:cam1", "worker:cam1"):
        assert "NOTIFY_SOCKET=" not in _environ(psutil.Process(kids[name])), name
    journal = wait_for(
        "the journal",
        lambda: "camera cam1: streaming" in (j := box.journal("edged@cam1.service")) and j,
    )
    assert "edged started: 1 camera(s): cam1" in journal


@pytest.mark.slow
def test_reload_applies_changes_and_survives_a_broken_config(box, rtsp_server):
    unit = "edged@cam1.service"
    cams = {"cam1": f'source = "{rtsp_server.url}"', "cam2": 'source = "synthetic"'}
    _write_config(box, cams)
    box.systemctl("start", unit)
    _wait_streaming(box, unit, "cam1")
    main = _show(box, unit, "MainPID")["MainPID"]
    before = _children(box, unit)

    def reload(expect: str, ok: bool = True) -> None:
        n = box.journal(unit).count(expect)
        # ExecReload= waits for the verdict: systemctl reload fails when edged rejects it
        assert (box.systemctl("reload", unit, check=False).returncode == 0) == ok
        wait_for(f"{expect!r} after reload", lambda: box.journal(unit).count(expect) > n)

    # another camera changed: cam1 keeps its processes
    _write_config(box, {**cams, "cam2": 'source = "synthetic"\nfps = 5'})
    reload("reloaded:")
    assert _children(box, unit)["reader:cam1"] == before["reader:cam1"]
    # cam1 changed: its reader and worker restart, the supervisor stays
    _write_config(box, {**cams, "cam1": cams["cam1"] + '\nstale_after = "7s"'})
    reload("1 restarted")
    wait_for(
        "a new reader",
        lambda: _children(box, unit).get("reader:cam1") not in (None, before["reader:cam1"]),
    )
    _wait_streaming(box, unit, "cam1")
    # broken: still running, the failure in STATUS and in the journal at error priority
    _write_config(box, {"cam1": cams["cam1"] + "\nstale_afer = 3"})
    reload("still running the previous configuration", ok=False)
    state = _show(box, unit, "ActiveState", "MainPID", "StatusText")
    assert state["ActiveState"] == "active" and state["MainPID"] == main, state
    assert state["StatusText"].startswith("reload failed: "), state
    errors = box.journal(unit, "-p", "err")
    assert "cameras.cam1.stale_afer" in errors, box.journal(unit, "-o", "short-monotonic")
    assert f"edged reload: pid {main} rejected /etc/edged/edged.toml" in errors, errors
    assert "edged started" not in errors
    warnings = box.journal(unit, "-p", "warning")
    assert "reload failed" in warnings and "camera cam1: streaming" not in warnings
    assert "camera cam1: streaming" in box.journal(unit, "-p", "info")
    _write_config(box, cams)
    reload("reloaded:")
    wait_for("STATUS without the failure", lambda: _status_text(box, unit).startswith("cam1 "))


@pytest.mark.slow
def test_watchdog_kills_and_restarts_a_stopped_daemon(box, rtsp_server):
    unit = "edged@cam1.service"
    dropin = box.root / UNIT_DIR / "edged@.service.d" / "watchdog.conf"
    dropin.parent.mkdir(exist_ok=True)
    dropin.write_text("[Service]\nWatchdogSec=2s\n")  # the shipped 10s, made quicker
    box.systemctl("daemon-reload")
    _write_config(box, {"cam1": f'source = "{rtsp_server.url}"'})
    box.systemctl("start", unit)
    _wait_streaming(box, unit, "cam1")
    old = _procs(box, unit)
    main = _show(box, unit, "MainPID")["MainPID"]
    assert len(old) >= 3
    box.systemctl("kill", "--kill-whom=main", "--signal=SIGSTOP", unit)

    def restarted() -> bool:
        s = _show(box, unit, "NRestarts", "ActiveState", "MainPID")
        return s["NRestarts"] == "1" and s["ActiveState"] == "active" and s["MainPID"] != main

    wait_for("a watchdog restart", restarted, timeout=30)
    journal = box.journal(unit)
    assert "Watchdog timeout" in journal
    # SIGABRT, and PYTHONFAULTHANDLER shows where the supervisor was, at error priority
    assert "Fatal Python error: Aborted" in journal, journal
    assert "Fatal Python error: Aborted" in box.journal(unit, "-p", "err"), journal
    assert not [p for p in old if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    _wait_streaming(box, unit, "cam1")


@pytest.mark.slow
def test_stop_is_clean_and_in_time(box, rtsp_server):
    unit = "edged@cam1.service"
    _write_config(box, {"cam1": f'source = "{rtsp_server.url}"'})
    box.systemctl("start", unit)
    _wait_streaming(box, unit, "cam1")
    procs = _procs(box, unit)
    assert len(procs) >= 3
    t0 = time.monotonic()
    box.systemctl("stop", unit)
    took = time.monotonic() - t0
    assert took < 15, f"stop took {took:.1f}s (TimeoutStopSec=15s)"
    assert _show(box, unit, "ActiveState")["ActiveState"] == "inactive"
    assert not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    # An inactive unit is unloaded at once: systemd's own lines tell how it ended
    journal = wait_for(
        "the end in the journal",
        lambda: "Deactivated successfully" in (j := box.journal(unit)) and j,
    )
    assert "edged stopped" in journal
    for bad in ("SIGKILL", "timed out", "Failed with result", "status="):
        assert bad not in journal, journal


@pytest.mark.slow
def test_bad_config_fails_once_with_78(box):
    unit = "edged@cam1.service"
    _write_config(box, {"cam1": 'source = "synthetic"\nfps = -5'})
    assert box.systemctl("start", unit, check=False).returncode != 0
    state = _show(box, unit, "ActiveState", "SubState", "ExecMainStatus", "NRestarts", "Result")
    # "failed", not "activating (auto-restart)": no restart is scheduled
    assert state == {
        "ActiveState": "failed",
        "SubState": "failed",
        "ExecMainStatus": "78",
        "NRestarts": "0",
        "Result": "exit-code",
    }, state
    journal = box.journal(unit)
    assert "cameras.cam1.fps" in journal, journal
    assert "cameras.cam1.fps" in box.journal(unit, "-p", "err"), journal


@pytest.mark.slow
def test_instances_side_by_side_and_the_all_cameras_unit_refuses(box, rtsp_server_factory):
    one, two = rtsp_server_factory(), rtsp_server_factory()
    port1, port2 = free_port(), free_port()
    _write_config(
        box,
        {
            "cam1": f'source = "{one.url}"\nmetrics_listen = "127.0.0.1:{port1}"',
            "cam2": f'source = "{two.url}"\nmetrics_listen = "127.0.0.1:{port2}"',
        },
    )
    box.systemctl("start", "edged@cam1.service", "edged@cam2.service")
    _wait_streaming(box, "edged@cam1.service", "cam1")
    _wait_streaming(box, "edged@cam2.service", "cam2")
    for port, camera in ((port1, "cam1"), (port2, "cam2")):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        assert f'camera="{camera}"' in body
    main1 = _show(box, "edged@cam1.service", "MainPID")["MainPID"]
    assert box.systemctl("start", "edged.service", check=False).returncode != 0
    state = _show(box, "edged.service", "ActiveState", "ExecMainStatus", "NRestarts")
    assert state == {"ActiveState": "failed", "ExecMainStatus": "78", "NRestarts": "0"}, state
    assert "already captured by another edged" in box.journal("edged.service", "-p", "err")
    for unit, cam in (("edged@cam1.service", "cam1"), ("edged@cam2.service", "cam2")):
        assert _status_text(box, unit).startswith(f"{cam} streaming")
    assert _show(box, "edged@cam1.service", "MainPID")["MainPID"] == main1


@pytest.mark.slow
def test_a_credential_of_one_camera_unit_is_not_needed_by_the_others(box):
    secret = box.root / "etc/edged/cam1.pw"
    secret.write_text(f"pw-{uuid.uuid4().hex}\n")
    secret.chmod(0o600)  # root's: systemd reads it for the unit's LoadCredential=
    dropin = box.root / UNIT_DIR / "edged@cam1.service.d" / "credential.conf"
    dropin.parent.mkdir(exist_ok=True)
    dropin.write_text("[Service]\nLoadCredential=cam1.pw:/etc/edged/cam1.pw\n")
    box.systemctl("daemon-reload")
    try:
        cam1 = 'source = "synthetic"\nusername = "u"\npassword_credential = "cam1.pw"'
        _write_config(box, {"cam1": cam1, "cam2": 'source = "synthetic"'})
        box.systemctl("start", "edged@cam2.service")  # has no credential, needs none
        _wait_streaming(box, "edged@cam2.service", "cam2")
        box.systemctl("start", "edged@cam1.service")
        _wait_streaming(box, "edged@cam1.service", "cam1")
        box.systemctl("reload", "edged@cam2.service")
        assert _status_text(box, "edged@cam2.service").startswith("cam2 ")
        box.systemctl("stop", "edged@cam1.service", "edged@cam2.service")
        # Every camera in one unit: it needs cam1's credential, and says which.
        assert box.systemctl("start", "edged.service", check=False).returncode != 0
        assert _show(box, "edged.service", "ExecMainStatus")["ExecMainStatus"] == "78"
        errors = box.journal("edged.service", "-p", "err")
        assert "cameras.cam1.password_credential" in errors, errors
        assert "LoadCredential=cam1.pw:FILE" in errors, errors
    finally:
        shutil.rmtree(dropin.parent)
        box.systemctl("daemon-reload")


@pytest.mark.slow
def test_the_installed_config_runs_as_installed(box):
    config = box.root / "etc/edged/edged.toml"
    config.unlink()
    units = str(box.root / UNIT_DIR)
    install = ["install-systemd", "--prefix", str(box.root), "--unit-dir", units, "--no-reload"]
    done = subprocess.run([sys.executable, "-m", "edged", *install], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    (step,) = re.findall(r"systemctl enable --now (edged@\S+)", done.stdout)
    box.systemctl("start", step)  # the printed next step, less enable
    _wait_streaming(box, f"{step}.service", "demo")
