"""A real systemd (Debian 12's 252) booted as PID 1 of its own PID + mount namespace.

Read ../../../shared/notes/systemd-sandbox.md first: booted carelessly, this
systemd empties the host's /tmp. The boot script below is the note's, word for
word: its own tmpfs on /run, /tmp and /var/tmp, the boot-time units that touch
the host masked before systemd starts, and `mount --make-rshared /` (the note's
LoadCredential= section) so credentials reach the units. The sandbox is never powered off from
inside; :meth:`SystemdSandbox.stop` sends SIGKILL to its PID 1 from outside,
which ends every process in the namespace.

Beyond the note, :meth:`SystemdSandbox.overlay` puts a copy-on-write overlay
on /etc, /var/lib and /var/log inside the namespace, so what the units write
there (``/etc/edged``, ``StateDirectory=``, ``LogsDirectory=``, DynamicUser's
``private/`` folders) lands in the sandbox's own folder, never on the host.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
from helpers import wait_for

SYSTEMD = "/lib/systemd/systemd"

BOOT_SCRIPT = """\
#!/bin/sh
mount -t proc proc /proc
{open_kept}for d in /run /tmp /var/tmp; do mount -t tmpfs tmpfs $d; done
{bind_kept}# LoadCredential= mounts must reach the unit; the host's / stays private
# (unshare --propagation private).
mount --make-rshared /
mkdir -p /run/systemd/system /run/systemd/journald.conf.d
printf '[Journal]\\nStorage=volatile\\n' > /run/systemd/journald.conf.d/volatile.conf
printf '[Unit]\\nDescription=test target\\n' > /run/systemd/system/sandbox.target
for u in systemd-tmpfiles-setup.service systemd-tmpfiles-clean.timer \\
         systemd-tmpfiles-setup-dev.service systemd-remount-fs.service \\
         systemd-sysctl.service systemd-modules-load.service systemd-binfmt.service \\
         systemd-sysusers.service systemd-update-utmp.service ldconfig.service \\
         systemd-journal-flush.service; do
    ln -s /dev/null /run/systemd/system/$u
done
exec env container=sandbox /lib/systemd/systemd --system --unit=sandbox.target
"""


HIDDEN = ("/run", "/tmp", "/var/tmp")  # the sandbox's own tmpfs on each


def boot_script(keep: Sequence[Path] = ()) -> str:
    """The note's boot script; folders in ``keep`` that its tmpfs mounts would hide (a
    checkout in /tmp and its venv) are bind-mounted back at the same path. Each is
    opened before the tmpfs covers it and bound from /proc/self/fd/N after:
    --no-canonicalize, or mount(8) would resolve that link to the covered path."""
    hidden = [k for k in dict.fromkeys(keep) if any(k.is_relative_to(h) for h in HIDDEN)]
    opened = "".join(f'exec {fd}<"{k}"\n' for fd, k in enumerate(hidden, 3))
    bound = "".join(
        f'mkdir -p "{k}" && mount --no-canonicalize --bind /proc/self/fd/{fd} "{k}"\nexec {fd}<&-\n'
        for fd, k in enumerate(hidden, 3)
    )
    return BOOT_SCRIPT.format(open_kept=opened, bind_kept=bound)


class SandboxError(AssertionError):
    """The sandbox could not be started or a command in it failed."""


def sandbox_problem() -> str | None:
    """Why a systemd sandbox cannot run here, or None."""
    if os.geteuid() != 0:
        return "the systemd sandbox needs root (unshare --pid --mount, nsenter)"
    for tool in ("unshare", "nsenter", "systemctl", "journalctl"):
        if shutil.which(tool) is None:
            return f"the systemd sandbox needs {tool} (util-linux / systemd packages)"
    if not os.access(SYSTEMD, os.X_OK):
        return f"the systemd sandbox needs {SYSTEMD} (Debian's systemd package)"
    # The units run this checkout's .venv as a DynamicUser: it must be readable by
    # all (a checkout in /tmp is bound into the sandbox: see boot_script()).
    repo = Path(__file__).resolve().parents[2]
    for folder in (repo, *repo.parents):
        if not folder.stat().st_mode & 0o005:
            return f"the systemd tests need {folder} readable by all users (DynamicUser)"
    return None


class SystemdSandbox:
    """systemd as PID 1 of a namespace; every command runs in it through nsenter.

    ``workdir`` holds the boot log and the overlays' upper folders; under /tmp, /run
    or /var/tmp it must be inside one of the folders in ``keep``, which the sandbox
    sees at their own paths although it has its own tmpfs there (a checkout in
    /tmp, its venv).
    """

    def __init__(self, workdir: Path, keep: Sequence[Path] = ()) -> None:
        self.workdir = workdir
        self.keep = list(keep)
        self._unshare: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._since: float | None = None

    @property
    def pid(self) -> int:
        """systemd's PID as the host sees it."""
        if self._pid is None:
            raise SandboxError("the sandbox is not running")
        return self._pid

    @property
    def root(self) -> Path:
        """The sandbox's file system seen from the host (its mounts, its /run)."""
        return Path(f"/proc/{self.pid}/root")

    def start(self, timeout: float = 30.0) -> SystemdSandbox:
        self.workdir.mkdir(parents=True, exist_ok=True)
        boot = self.workdir / "boot.sh"
        boot.write_text(boot_script(self.keep))
        boot.chmod(0o755)
        with open(self.workdir / "boot.log", "wb") as log:
            self._unshare = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--mount", "--propagation", "private", str(boot)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._pid = wait_for("systemd to start in the namespace", self._find_systemd, 10)
            wait_for("systemctl is-system-running: running", self._booted, timeout, every=0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def _find_systemd(self) -> int | None:
        assert self._unshare is not None
        if self._unshare.poll() is not None:
            raise SandboxError(f"unshare exited with {self._unshare.returncode}: {self.boot_log()}")
        try:
            kids = psutil.Process(self._unshare.pid).children()
        except psutil.NoSuchProcess:
            return None
        for kid in kids:
            try:
                if kid.cmdline()[:1] == [SYSTEMD]:
                    return kid.pid
            except psutil.Error:
                continue
        return None

    def _booted(self) -> bool:
        state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
        if state in ("running", "degraded"):
            return True
        if state in ("stopping", "offline"):
            raise SandboxError(f"systemd in the sandbox is {state}: {self.boot_log()}")
        return False

    def boot_log(self) -> str:
        try:
            return (self.workdir / "boot.log").read_text(errors="replace")
        except OSError:
            return ""

    def run(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the sandbox's mount and PID namespaces."""
        cmd = ["nsenter", "-t", str(self.pid), "-m", "-p", *args]
        result = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        if check and result.returncode != 0:
            raise SandboxError(
                f"{' '.join(args)} exited with {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", *args, check=check)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show -p PROP,... UNIT`` as a dict."""
        out = self.systemctl("show", "-p", ",".join(props), unit).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def mark(self) -> None:
        """From now on :meth:`journal` shows only what is logged after this call."""
        # --since, not --after-cursor: journalctl 252 with a match (-u, -p) and
        # --after-cursor drops the first matching entry.
        self._since = time.time()

    def journal(self, unit: str, *args: str) -> str:
        """The messages (``-o cat``) that ``unit`` logged since :meth:`mark`, with extra
        journalctl ``args`` (``-p warning``)."""
        since = [f"--since=@{self._since:.6f}"] if self._since else []
        cmd = ["journalctl", "--no-pager", "-o", "cat", "-u", unit, *since, *args]
        return self.run(*cmd, check=False).stdout

    def overlay(self, *folders: str) -> None:
        """Copy-on-write overlays on these folders, inside the namespace only."""
        for folder in folders:
            base = self.workdir / "overlay" / folder.strip("/").replace("/", "-")
            upper, work = base / "upper", base / "work"
            upper.mkdir(parents=True, exist_ok=True)
            work.mkdir(parents=True, exist_ok=True)
            opts = f"lowerdir={folder},upperdir={upper},workdir={work}"
            self.run("mount", "-t", "overlay", "overlay", "-o", opts, folder)

    def tmpfs(self, folder: str, mode: str = "1777") -> None:
        """A fresh tmpfs on ``folder``, inside the namespace only (e.g. its own /dev/shm)."""
        self.run("mount", "-t", "tmpfs", "-o", f"mode={mode},nosuid,nodev", "tmpfs", folder)

    def stop(self) -> None:
        """SIGKILL to the sandbox's PID 1 (never poweroff inside); wait for it to go."""
        pids = [self._pid] if self._pid is not None else []
        if not pids and self._unshare is not None:
            # Failed before systemd was found: PID 1 is unshare's child, whatever it runs.
            with contextlib.suppress(psutil.NoSuchProcess):
                pids = [kid.pid for kid in psutil.Process(self._unshare.pid).children()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._unshare is not None:
            try:
                self._unshare.wait(30)
            except subprocess.TimeoutExpired:
                self._unshare.kill()
                self._unshare.wait()
        if self._pid is not None:
            pid = self._pid
            wait_for("systemd to exit", lambda: not psutil.pid_exists(pid), 30)
        self._pid = None
