"""Run ``edged`` as a real subprocess for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

# wait_for lives in helpers (components/ use it too); test files import it from
# here as well as from there.
from helpers import wait_for

__all__ = ["TESTS", "Daemon", "readyz", "shm_segments", "start_daemon", "wait_for"]

TESTS = Path(__file__).resolve().parent


def readyz(port: int) -> dict[str, Any] | None:
    """The JSON body of ``/readyz`` on 127.0.0.1:``port`` (ready or not); None while
    nothing answers there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return json.loads(exc.read())
    except OSError:
        return None


def shm_segments(pid: int) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"edged_{pid}_")]


class Daemon:
    """``edged run`` on a config written into a temporary folder."""

    def __init__(
        self,
        tmp: Path,
        toml: str,
        *args: str,
        env: dict[str, str] | None = None,
        wrap: list[str] | None = None,
    ) -> None:
        self.dir = tmp
        self.env = env or {}  # set in the daemon's environment (e.g. NOTIFY_SOCKET)
        # A command that execs its arguments (same pid): into a mount namespace, as
        # another user (setpriv), ...
        self.wrap = wrap or []
        self.config = tmp / "edged.toml"
        if "[metrics]" not in toml:
            # Tests run daemons one after another and beside a developer's own:
            # never the default port, let the kernel pick a free one.
            toml += '\n[metrics]\nlisten = "127.0.0.1:0"\n'
        self.config.write_text(toml)
        self.events_path = tmp / "events.jsonl"
        self.stderr_path = tmp / "stderr.log"
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
        env.pop("NOTIFY_SOCKET", None)
        env.update(self.env)
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115
        command = [sys.executable, "-m", "edged", "run", "--config", str(self.config), *self.args]
        self.proc = subprocess.Popen(
            self.wrap + command,
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=subprocess.STDOUT,
            env=env,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        try:
            lines = self.events_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        found = [json.loads(line) for line in lines if line.endswith("}")]
        return [e for e in found if type_ is None or e["type"] == type_]

    def wait_events(self, n: int, type_: str | None = None, timeout: float = 15) -> list[dict]:
        return wait_for(
            f"{n} {type_ or ''} events",
            lambda: len(self.events(type_)) >= n and self.events(type_),
            timeout,
        )

    def mark(self) -> int:
        """The log's length now: pass it to ``wait_log(since=)`` to wait for a *new* line."""
        return len(self.log)

    def wait_log(self, text: str, timeout: float = 15, since: int = 0) -> None:
        wait_for(f"{text!r} in the log", lambda: text in self.log[since:], timeout)

    def children(self, role: str | None = None) -> list[psutil.Process]:
        """The reader and worker processes (named "reader:CAMERA", "worker:CAMERA").

        Children of the supervisor's fork server (edged/startmethod.py), itself
        a child of the supervisor: hence recursive."""
        found = []
        for kid in psutil.Process(self.pid).children(recursive=True):
            try:
                name = kid.name()
            except psutil.Error:
                continue
            if name.startswith(("reader:", "worker:")) and (
                role is None or name.startswith(role + ":")
            ):
                found.append(kid)
        return found

    def stop(self, timeout: float = 10) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        finally:
            self.kill()
        return code

    def kill(self) -> None:
        """SIGKILL the supervisor, as the OOM killer would, and let its children follow.

        Readers and workers die with it (parent-death signal) and the resource
        tracker then removes the shared memory: killing those too would test
        nothing and leave segments behind. Stragglers are killed after a grace.
        """
        if self.proc is not None and self.proc.poll() is None:
            kids = psutil.Process(self.pid).children(recursive=True)
            self.proc.kill()
            self.proc.wait()
            for kid in psutil.wait_procs(kids, timeout=10)[1]:
                kid.kill()
        if not self._stderr.closed:
            self._stderr.close()


def start_daemon(started: list[Daemon], tmp: Path, toml: str, *args: str) -> Daemon:
    """Start a daemon and remember it in ``started`` (the ``daemons`` fixture kills them)."""
    d = Daemon(tmp, toml, *args).start()
    started.append(d)
    return d
