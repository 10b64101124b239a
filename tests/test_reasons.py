"""Why a camera is down reaches every place its state is shown (issue 15, item 9)."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from components.rtsp import free_port
from daemon import Daemon, readyz, wait_for

from edged.config import camera_from_dict
from edged.errors import SourceError
from edged.nativelog import AUTH_FAILED, NOT_PLAYABLE, TLS_FAILED, classify
from edged.reader import _with_cause
from edged.redact import scrub
from edged.sources import open_source

SECRET = "Pa55word"


def test_ffmpeg_lines_map_to_causes_that_say_what_to_check() -> None:
    moov = ["[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55d] moov atom not found"]
    assert classify(moov, file=True) == NOT_PLAYABLE  # not "stream not found (check the URL path)"
    invalid = ["Invalid data found when processing input"]
    assert classify(invalid, file=True) == NOT_PLAYABLE
    assert classify(invalid) == "unreadable stream"
    # rtsps:// to a server without TLS: OpenCV's and PyAV's FFmpeg
    assert classify(["[tls @ 0x55] error:1408F10B:SSL routines:ssl3_get_record:wrong version"])
    assert classify(["[tls @ 0x55] An unexpected TLS packet was received."]) == TLS_FAILED
    assert classify(["[rtsp @ 0x55] method DESCRIBE failed: 401 (Unauthorized)"]) == AUTH_FAILED


def test_a_cause_the_message_already_says_is_not_said_twice() -> None:
    said = "cannot open rtsp://h/x: Connection refused"
    assert _with_cause(said, "connection refused") == said
    assert _with_cause("cannot open rtsp://h/x", "connection refused") == (
        "cannot open rtsp://h/x: connection refused"
    )
    assert _with_cause("lost it", None) == "lost it"


def test_a_query_password_keeps_the_separator_after_it_when_scrubbed_again() -> None:
    # The reader's message holds the scrubbed URL (display_source), then the
    # cause; the log handler scrubs the whole line again.
    line = f"cannot open {scrub(f'http://cam/v?password={SECRET}')}: {AUTH_FAILED}"
    assert line == f"cannot open http://cam/v?password=***: {AUTH_FAILED}"
    assert scrub(line) == line
    assert scrub(f"http://cam/v?pwd=***{SECRET} x") == "http://cam/v?pwd=*** x"


class NotifySocket:
    """systemd's notify socket, as a test sees it: the daemon's STATUS= lines."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(f"\0edged-test-{free_port()}")
        self.sock.settimeout(0.2)
        self.address = "@" + self.sock.getsockname()[1:].decode()
        self.statuses: list[str] = []

    def status_with(self, text: str) -> bool:
        try:
            msg = self.sock.recv(4096).decode()
            self.statuses += [m[7:] for m in msg.splitlines() if m.startswith("STATUS=")]
        except TimeoutError:
            pass
        return any(text in s for s in self.statuses)


@pytest.mark.slow
@pytest.mark.parametrize("pixels", ["bgr", "gray"])
def test_the_cause_of_a_failing_camera_is_in_readyz_status_and_systemd_status(
    tmp_path: Path, daemons: list[Daemon], rtsp_server_factory, pixels: str
) -> None:
    server = rtsp_server_factory(user="edged", password=f"right-{SECRET}")
    cameras = {
        "auth": (f"rtsp://edged:wrong-{SECRET}@127.0.0.1:{server.port}/stream", AUTH_FAILED),
        "refused": (f"rtsp://127.0.0.1:{free_port()}/x", "connection refused"),
    }
    port = free_port()
    toml = f'[events]\npath = "events.jsonl"\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
    for name, (url, _) in cameras.items():
        toml += (
            f'[cameras.{name}]\nsource = "{url}"\npixel_format = "{pixels}"\nopen_timeout = "3s"\n'
            f'[cameras.{name}.processor]\ntype = "null"\n'
        )
    notify = NotifySocket()
    try:
        _check_everywhere(tmp_path, daemons, toml, port, notify, cameras)
    finally:
        notify.sock.close()


def _check_everywhere(
    tmp_path: Path,
    daemons: list[Daemon],
    toml: str,
    port: int,
    notify: NotifySocket,
    cameras: dict[str, tuple[str, str]],
) -> None:
    d = Daemon(tmp_path, toml, env={"NOTIFY_SOCKET": notify.address}).start()
    daemons.append(d)

    def down_with_causes() -> dict | None:
        body = readyz(port)
        if not body:
            return None
        cams = body["cameras"]
        ok = all(
            cams[n]["state"] == "reconnecting" and cause in cams[n]["reason"]
            for n, (_, cause) in cameras.items()
        )
        return cams if ok else None

    cams = wait_for("/readyz naming both causes", down_with_causes, timeout=30)
    assert cams["auth"]["last_error"] == f"reconnecting: {AUTH_FAILED}"
    wait_for("STATUS naming the cause", lambda: notify.status_with("auth reconnecting (auth"))
    wait_for("STATUS naming the refusal", lambda: notify.status_with("(connection refused"))
    r = subprocess.run(
        [sys.executable, "-m", "edged", "status", "--config", str(d.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert AUTH_FAILED in r.stdout and "connection refused" in r.stdout, r.stdout
    assert d.stop() == 0
    everything = d.log + r.stdout + json.dumps(cams) + "".join(notify.statuses)
    assert SECRET not in everything
    assert "Connection refused: connection refused" not in d.log


@pytest.mark.slow
@pytest.mark.parametrize("pixels", ["bgr", "gray"])
def test_an_empty_or_truncated_video_file_is_said_to_be_unplayable(
    tmp_path: Path, daemons: list[Daemon], make_clip, pixels: str
) -> None:
    clip = make_clip(2.0)
    data = clip.read_bytes()
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # the index (moov) is at the end
    port = free_port()
    toml = f'[events]\npath = "events.jsonl"\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
    for name in ("empty", "cut"):
        toml += (
            f'[cameras.{name}]\nsource = "{tmp_path / name}.mp4"\npixel_format = "{pixels}"\n'
            f'[cameras.{name}.processor]\ntype = "null"\n'
        )
    d = Daemon(tmp_path, toml).start()
    daemons.append(d)

    def unplayable() -> bool:
        body = readyz(port)
        return bool(body) and all(NOT_PLAYABLE in c["reason"] for c in body["cameras"].values())

    wait_for("both files said to be unplayable", unplayable, timeout=20)
    assert d.stop() == 0
    assert "stream not found" not in d.log and "check the URL path" not in d.log


class _Unauthorized(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="cam"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("pixels", ["bgr", "gray"])
def test_an_http_camera_refusing_the_password_says_so(pixels: str) -> None:
    # OpenCV does not print FFmpeg's HTTP errors: a bare "cannot open" before.
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unauthorized)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://admin:{SECRET}@127.0.0.1:{httpd.server_address[1]}/video.mjpg"
        cam = camera_from_dict("c", {"source": url, "pixel_format": pixels, "open_timeout": "3s"})
        src = open_source(cam)
        with pytest.raises(SourceError) as info:
            src.open()
        src.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
    assert info.value.cause == AUTH_FAILED
    assert "401" in str(info.value) and SECRET not in str(info.value)
