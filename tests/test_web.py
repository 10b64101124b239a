"""The web page: real HTTP against a real daemon with synthetic cameras, and a real
headless browser (Debian's chromium) that loads it, runs its script and takes the
screenshot the README shows."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from components.rtsp import free_port
from daemon import Daemon, start_daemon
from helpers import daemon_toml, wait_for

from edged.cli import main
from edged.errors import EX_CONFIG

pytestmark = pytest.mark.slow

DEMO = 'source = "synthetic"\nwidth = 640\nheight = 360\nfps = 15\nsnapshots = { enabled = true }\n'
ZONE = "[cameras.demo.zones.left]\npoints = [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]\n"


def get(
    port: int, path: str, auth: tuple[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a request to 127.0.0.1:port."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def status_of(port: int, path: str) -> int | None:
    """The status of a GET, None while the daemon does not answer (for wait_for)."""
    try:
        return get(port, path)[0]
    except OSError:
        return None


def web_daemon(daemons: list, tmp_path: Path, extra: str = "", web: str = "") -> Daemon:
    port = free_port()
    cameras = {
        "demo": DEMO + 'processor = "motion"\n',
        "hidden": 'source = "synthetic"\nweb = false\n',
        # A camera whose server is not there: it shows its state and why.
        "gone": f'source = "rtsp://127.0.0.1:{free_port()}/stream"\n',
    }
    toml = daemon_toml(cameras, metrics=port, sections=web) + ZONE + extra
    d = start_daemon(daemons, tmp_path, toml)
    d.port = port  # type: ignore[attr-defined]
    wait_for("the frame", lambda: status_of(port, "/cameras/demo/frame.jpg") == 200, timeout=30)
    return d


def test_cards_frames_overlays_and_what_is_not_shown(tmp_path: Path, daemons: list) -> None:
    d = web_daemon(daemons, tmp_path)
    port = d.port  # type: ignore[attr-defined]
    code, headers, page = get(port, "/")
    text = page.decode()
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    for name in ("demo", "hidden", "gone"):
        assert f'id="camera-{name}"' in text
    assert 'src="/cameras/demo/frame.jpg?width=480"' in text
    assert "not shown here (web = false)" in text
    assert "/cameras/hidden/frame.jpg" not in text
    # The camera that is not streaming shows its state and reason, not a frame.
    wait_for("gone is reconnecting", lambda: "reconnecting" in get(port, "/")[2].decode())
    gone = get(port, "/cameras/gone/frame.jpg")
    assert gone[0] == 503 and b"reconnecting" in gone[2] and b"connection refused" in gone[2]

    # A real JPEG of the newest frame, scaled on request, and newer over time.
    code, headers, jpeg = get(port, "/cameras/demo/frame.jpg")
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert code == 200 and headers["Content-Type"] == "image/jpeg" and image.shape == (360, 640, 3)
    first = int(headers["X-Frame-Seq"])
    small = get(port, "/cameras/demo/frame.jpg?width=160")[2]
    assert cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_COLOR).shape == (90, 160, 3)
    wait_for(
        "a newer frame",
        lambda: int(get(port, "/cameras/demo/frame.jpg")[1]["X-Frame-Seq"]) > first + 3,
    )
    assert get(port, "/cameras/demo/frame.jpg?width=x")[0] == 400
    assert get(port, "/cameras/demo/frame.jpg", method="HEAD")[2] == b""

    # The motion processor's boxes, and the zone, for the live overlay.
    def boxes() -> list | None:
        body = json.loads(get(port, "/cameras/demo/overlay.json")[2])
        return body["boxes"] or None

    found = wait_for("motion boxes", boxes)
    assert all(0 <= v <= 1 for b in found for v in b["box"]) and found[0]["label"] == "motion"
    overlay = json.loads(get(port, "/cameras/demo/overlay.json")[2])
    assert overlay["zones"] == {"left": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]}
    page = get(port, "/cameras/demo")[2].decode()
    assert 'class="zone" points="0.0000,0.0000 0.5000,0.0000' in page

    # web = false: the state only; unknown names and paths: 404; nothing but GET/HEAD.
    for path in ("/cameras/hidden/frame.jpg", "/cameras/hidden/overlay.json"):
        assert get(port, path)[0] == 404
    assert get(port, "/cameras/nope")[0] == 404
    assert get(port, "/cameras/nope/frame.jpg")[0] == 404
    assert get(port, "/cameras/demo/snapshots/..%2F..%2Fedged.toml")[0] == 404
    assert get(port, "/cameras/demo/snapshots/../../edged.toml")[0] == 404
    assert get(port, "/cameras/demo", method="POST")[0] == 501
    assert d.stop() == 0


def test_recent_events_and_their_snapshots(tmp_path: Path, daemons: list) -> None:
    d = web_daemon(daemons, tmp_path)
    port = d.port  # type: ignore[attr-defined]
    d.wait_events(1, "motion.start", timeout=30)
    event = d.events("motion.start")[0]
    name = event["snapshot"].rsplit("/", 1)[1]
    page = wait_for(
        "the event on the page",
        lambda: (p := get(port, "/cameras/demo")[2].decode()) and "motion.start" in p and p,
    )
    assert f"/cameras/demo/snapshots/{name}" in page
    code, headers, jpeg = get(port, f"/cameras/demo/snapshots/{name}")
    assert code == 200 and jpeg == (tmp_path / "state" / event["snapshot"]).read_bytes()
    assert get(port, "/cameras/hidden/snapshots/" + name)[0] == 404
    events_hour = page.split("events, last hour</dt><dd>")[1].split("<")[0]
    assert int(events_hour) >= 1
    assert d.stop() == 0


def test_a_password_guards_every_page_route_in_constant_time(tmp_path: Path, daemons: list) -> None:
    (tmp_path / "web.password").write_text("s3cret pass\n")
    web = '[web]\nusername = "viewer"\npassword_file = "web.password"'
    port = free_port()
    toml = daemon_toml({"demo": DEMO}, metrics=port, sections=web)
    d = start_daemon(daemons, tmp_path, toml)
    wait_for("the listener", lambda: status_of(port, "/healthz") == 200, timeout=30)
    for path in ("/", "/cameras/demo", "/cameras/demo/frame.jpg", "/cameras/demo/overlay.json"):
        code, headers, _ = get(port, path)
        assert code == 401 and headers["WWW-Authenticate"].startswith("Basic"), path
        assert get(port, path, ("viewer", "wrong"))[0] == 401
        assert get(port, path, ("other", "s3cret pass"))[0] == 401
    wait_for(
        "a frame", lambda: get(port, "/cameras/demo/frame.jpg", ("viewer", "s3cret pass"))[0] == 200
    )
    assert get(port, "/", ("viewer", "s3cret pass"))[0] == 200
    assert get(port, "/metrics")[0] == 200  # Prometheus scrapes as before
    assert "s3cret" not in d.log
    assert d.stop() == 0


def test_off_loopback_the_page_needs_a_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "edged.toml"
    base = daemon_toml({"demo": DEMO}, metrics='listen = "0.0.0.0:9851"')
    # Off loopback the page is off unless asked for...
    path.write_text(base)
    assert main(["check-config", str(path)]) == 0
    # ...and asked for, it needs a password.
    path.write_text(base + "[web]\nenabled = true\n")
    assert main(["check-config", str(path)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert "web: the page shows camera pictures and 0.0.0.0:9851 is not loopback" in err
    assert "Traceback" not in err
    (tmp_path / "pw").write_text("x\n")
    path.write_text(base + '[web]\nenabled = true\npassword_file = "pw"\n')
    assert main(["check-config", str(path)]) == 0, capsys.readouterr().err


def test_a_slow_client_stalls_nothing(tmp_path: Path, daemons: list) -> None:
    d = web_daemon(daemons, tmp_path)
    port = d.port  # type: ignore[attr-defined]
    # Clients that connect and send half a request, then nothing: each holds a
    # thread of the server until its idle timeout, never the supervisor's loop.
    stuck = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
    try:
        for s in stuck:
            s.sendall(b"GET /cameras/demo/frame.jpg HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()
        for _ in range(5):
            assert get(port, "/cameras/demo/frame.jpg")[0] == 200
            assert get(port, "/healthz")[0] == 200  # the supervisor's loop turns
        assert time.monotonic() - start < 10
        # A client that asks for pictures and never reads them: the same.
        greedy = socket.create_connection(("127.0.0.1", port))
        greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        greedy.sendall(b"GET /cameras/demo/frame.jpg HTTP/1.1\r\nHost: x\r\n\r\n" * 50)
        stuck.append(greedy)
        n = len(d.events())
        assert get(port, "/cameras/demo/frame.jpg")[0] == 200
        d.wait_events(n + 1)
    finally:
        for s in stuck:
            s.close()
    assert d.stop() == 0


CHROMIUM = shutil.which("chromium")


def chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM, "chromium is installed by scripts/setup --test"
    flags = [
        "--headless=new",
        "--no-sandbox",  # root, in a VM: chromium's own sandbox needs user namespaces
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--user-data-dir=" + str(Path.cwd() / "profile"),
    ]
    return subprocess.run(
        [CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_a_real_browser_shows_the_cards_and_the_live_picture(
    tmp_path: Path, daemons: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = web_daemon(daemons, tmp_path)
    port = d.port  # type: ignore[attr-defined]
    monkeypatch.chdir(tmp_path)  # chromium's profile folder
    (tmp_path / "profile").mkdir()
    url = f"http://127.0.0.1:{port}/cameras/demo"
    # The DOM after the script has run a while: the picture was replaced by newer
    # frames (data-frames counts them) and the boxes were drawn (data-boxes).
    done = chromium("--virtual-time-budget=4000", "--run-all-compositor-stages-before-draw",
                    "--dump-dom", url)  # fmt: skip
    dom = done.stdout
    assert "<h2>Recent events</h2>" in dom, done.stderr[-2000:]
    frames = int(dom.split('data-frames="')[1].split('"')[0])
    assert frames >= 2, dom[:3000]
    assert 'class="zone"' in dom
    shot = tmp_path / "web.png"
    done = chromium(f"--screenshot={shot}", "--window-size=1100,900",
                    "--virtual-time-budget=3000", f"http://127.0.0.1:{port}/")  # fmt: skip
    picture = cv2.imread(str(shot))
    assert picture is not None and picture.shape[:2] == (900, 1100), done.stderr[-2000:]
    assert picture.std() > 10  # not a blank page
    assert d.stop() == 0
