"""Packaging: the wheel stands alone, and the Debian package installs, upgrades,
removes and purges under a real systemd without losing an event.

The wheel is built with ``python -m build`` (the sdist, then the wheel from it)
and installed into a fresh virtualenv outside the checkout. The Debian package is
built by ``scripts/build-deb`` once per session and installed with ``dpkg -i``
inside the systemd sandbox (tests/components/systemd.py), whose /etc, /usr,
/var/lib (dpkg's database) and /var/log are copy-on-write overlays: nothing lands
on this machine's own folders.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from components.mqtt import Mosquitto, Subscriber, check_mosquitto
from components.rtsp import free_port
from components.systemd import SystemdSandbox, sandbox_problem
from daemon import wait_for

from edged.install import EXAMPLE, UNIT_NAMES, shipped

REPO = Path(__file__).resolve().parent.parent
PY = "/usr/bin/python3"  # Debian's: the interpreter the package's venv is made with
DATA = {name: REPO / "systemd" / name for name in UNIT_NAMES} | {
    EXAMPLE: REPO / "config" / "example.toml"
}


def test_the_package_data_are_the_documented_files():
    # One copy: edged/data/ links to what users read in systemd/ and config/.
    for name, documented in DATA.items():
        link = REPO / "edged" / "data" / name
        assert link.is_symlink() and link.resolve() == documented.resolve(), link
        assert shipped(name) == documented.read_text()


def _run(cmd: list[str], timeout: float, **kw: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done


@pytest.fixture
def readable_tmp() -> Iterator[Path]:
    """A folder every user may read: install-systemd refuses a venv that the units'
    transient user could not run, and pytest's own tmp folders are 0700."""
    folder = Path(tempfile.mkdtemp(prefix="edged-test-package-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_the_wheel_installs_the_units_from_any_folder(readable_tmp):
    dist = readable_tmp / "dist"
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)], 300)
    (wheel,) = dist.glob("edged-*.whl")
    assert len(list(dist.glob("edged-*.tar.gz"))) == 1
    with zipfile.ZipFile(wheel) as zf:
        for name, documented in DATA.items():
            assert zf.read(f"edged/data/{name}").decode() == documented.read_text(), name
    venv = readable_tmp / "venv"
    _run([PY, "-m", "venv", str(venv)], 120)
    _run([str(venv / "bin/pip"), "install", "-q", str(wheel)], 600)
    edged = str(venv / "bin/edged")
    root = readable_tmp / "root"
    done = _run([edged, "install-systemd", "--dry-run", "--prefix", str(root)], 60, cwd="/")
    assert f"would write {root}/etc/systemd/system/edged@.service (ExecStart: {edged})" in (
        done.stdout
    )
    assert not root.exists()
    _run([edged, "install-systemd", "--prefix", str(root), "--no-reload"], 60, cwd="/")
    unit = (root / "etc/systemd/system/edged@.service").read_text()
    assert f"ExecStart={edged} run --config /etc/edged/edged.toml --camera %i" in unit
    check = _run([edged, "check-config", str(root / "etc/edged/edged.toml")], 60, cwd="/")
    assert "  demo: synthetic" in check.stdout


# ======================================================================================
# The Debian package
# ======================================================================================


def _repack(deb: Path, version: str, out: Path) -> Path:
    """``deb`` rebuilt by dpkg-deb with another version (a faster stand-in for a second
    scripts/build-deb: the upgrade path is the same)."""
    tree = out / f"tree-{version}"
    _run(["dpkg-deb", "-R", str(deb), str(tree)], 120)
    control = tree / "DEBIAN/control"
    lines = control.read_text().splitlines()
    control.write_text(
        "\n".join(f"Version: {version}" if ln.startswith("Version:") else ln for ln in lines) + "\n"
    )
    new = out / f"edged_{version}.deb"
    _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(tree), str(new)], 300)
    shutil.rmtree(tree)
    return new


@pytest.fixture(scope="session")
def debs() -> Iterator[tuple[Path, Path]]:
    """The package from scripts/build-deb and a rebuild with a higher version."""
    if shutil.which("dpkg-deb") is None:
        pytest.fail("dpkg-deb is missing: run scripts/setup --test", pytrace=False)
    out = REPO / "var" / f"test-package-{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    try:
        done = _run([str(REPO / "scripts/build-deb"), "--fast", "--out", str(out)], 600)
        first = Path(done.stdout.strip().splitlines()[-1])
        version = subprocess.run(
            ["dpkg-deb", "-f", str(first), "Version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        yield first, _repack(first, f"{version}+upgrade1", out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.mark.slow
def test_lintian_finds_nothing_left(debs):
    if shutil.which("lintian") is None:
        pytest.fail("lintian is missing: run scripts/setup --test", pytrace=False)
    # Errors fixed, the rest argued in packaging/deb/lintian-overrides.
    done = subprocess.run(
        ["lintian", "--tag-display-limit", "0", str(debs[0])],
        capture_output=True,
        text=True,
        timeout=600,
    )
    tags = [ln for ln in done.stdout.splitlines() if ln[:2] in ("E:", "W:")]
    assert done.returncode == 0 and tags == [], done.stdout + done.stderr


HOST_PATHS = ("/usr/lib/edged", "/usr/bin/edged", "/etc/edged", "/lib/systemd/system/edged.service")


@pytest.fixture
def box() -> Iterator[SystemdSandbox]:
    """A sandbox whose /etc, /usr, /var/lib and /var/log are its own overlays."""
    problem = sandbox_problem() or check_mosquitto()
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    before = {p: os.path.lexists(p) for p in HOST_PATHS}
    workdir = REPO / "var" / f"test-package-box-{os.getpid()}"
    sandbox = SystemdSandbox(workdir, keep=[REPO])
    try:
        sandbox.start()
        sandbox.overlay("/etc", "/usr", "/var/lib", "/var/log")
        sandbox.tmpfs("/dev/shm")
        sandbox.systemctl("start", "systemd-journald.socket", "systemd-journald.service")
        yield sandbox
    finally:
        sandbox.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        assert {p: os.path.lexists(p) for p in HOST_PATHS} == before, "the host was touched"


def _version(box: SystemdSandbox) -> str:
    done = box.run("dpkg-query", "-W", "-f", "${Version} ${db:Status-Abbrev}", "edged", check=False)
    return done.stdout.strip()


def _event_ids(box: SystemdSandbox) -> list[str]:
    try:
        text = (box.root / "var/log/edged/events.jsonl").read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line)["id"] for line in text.splitlines() if line.strip()]


def _delivered(sub: Subscriber) -> set[str]:
    return {json.loads(m.payload)["id"] for m in sub.received() if m.topic.endswith("/events")}


def _streaming(box: SystemdSandbox, unit: str) -> bool:
    def status() -> str:
        return box.show(unit, "StatusText")["StatusText"]

    return wait_for(f"{unit} streaming", lambda: status().startswith("demo streaming"), 30)


@pytest.mark.slow
def test_the_package_installs_upgrades_without_losing_events_and_purges(box, debs, tmp_path):
    first, second = debs
    unit = "edged@demo.service"
    start = time.monotonic()
    box.run("dpkg", "-i", str(first), timeout=300)
    print(f"dpkg -i took {time.monotonic() - start:.1f}s")
    assert _version(box).endswith(" ii"), _version(box)
    box.run("edged", "check-config", "/etc/edged/edged.toml")
    assert (box.root / "lib/systemd/system/edged@.service").exists()
    assert box.show(unit, "ActiveState")["ActiveState"] == "inactive", "nothing starts by itself"

    broker = Mosquitto(tmp_path / "broker").start()
    sub = Subscriber(broker, "edged/#", client_id="test-package")
    try:
        # A user's edits of the conffile: a free metrics port, a broker.
        config = box.root / "etc/edged/edged.toml"
        text = config.read_text()
        assert 'listen = "127.0.0.1:9850"' in text
        text = text.replace('listen = "127.0.0.1:9850"', f'listen = "127.0.0.1:{free_port()}"')
        text += f'\n[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
        config.write_text(text)
        box.systemctl("enable", "--now", unit)
        _streaming(box, unit)
        wait_for("an event over MQTT", lambda: _delivered(sub), 30)

        # Events pile up in the outbox while the broker is away, then the upgrade.
        broker.stop()
        seen = len(_event_ids(box))
        wait_for("2 events while the broker is away", lambda: len(_event_ids(box)) >= seen + 2, 40)
        pid = box.show(unit, "MainPID")["MainPID"]
        box.run("dpkg", "-i", str(second), timeout=300)
        assert _version(box).startswith(f"{second.stem.split('_')[1]} ii"), _version(box)
        assert box.show(unit, "ActiveState")["ActiveState"] == "active"
        assert box.show(unit, "MainPID")["MainPID"] not in (pid, "0"), "restarted"
        _streaming(box, unit)
        assert config.read_text() == text, "the edited conffile is kept"
        assert not list(config.parent.glob("edged.toml.dpkg-*"))

        recorded = set(_event_ids(box))  # the JSONL file is written before MQTT sees any
        broker.start()
        wait_for(
            "every event recorded before the upgrade delivered",
            lambda: recorded <= _delivered(sub),
            40,
        )
    finally:
        sub.close()
        broker.stop()

    box.run("dpkg", "-r", "edged", timeout=120)
    assert box.show(unit, "ActiveState")["ActiveState"] == "inactive"
    assert not list((box.root / "etc/systemd/system").glob("*.wants/edged*"))
    assert not (box.root / "usr/bin/edged").exists()
    assert not (box.root / "lib/systemd/system/edged@.service").exists()
    assert config.read_text() == text, "remove keeps the config"
    assert (box.root / "var/lib/private/edged").is_dir(), "and the state"
    assert _event_ids(box), "and the events"

    box.run("dpkg", "-P", "edged", timeout=120)
    assert _version(box) == ""
    for gone in ("etc/edged", "var/lib/private/edged", "var/log/private/edged", "usr/lib/edged"):
        assert not os.path.lexists(box.root / gone), gone
