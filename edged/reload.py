"""``edged reload``: SIGHUP a running daemon and wait for its verdict.

``ExecReload=/bin/kill -HUP $MAINPID`` returns at once, so ``systemctl reload``
said 0 even when the daemon rejected the new configuration. The daemon writes
its verdict after every reload to ``STATE_DIR/reload-PID.json`` (a generation
counter, whether the reload was applied, the errors it logged), replaced
atomically; ``edged reload --pid PID`` reads the generation, sends SIGHUP, and
waits for the next one. It needs no metrics listener, only the state folder,
which it finds in the config file as the daemon does (``[daemon] state_dir``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
import tomllib
from pathlib import Path
from typing import Any

from edged.errors import EX_CONFIG, EX_OK, ConfigError, EdgedError

log = logging.getLogger(__name__)

TIMEOUT = 30.0  # a reload restarts changed cameras: up to [daemon] stop_timeout each


class ReloadError(EdgedError):
    """The daemon could not be asked, or did not answer in time."""


def verdict_path(state_dir: Path, pid: int) -> Path:
    return state_dir / f"reload-{pid}.json"


class ReloadVerdicts:
    """The daemon's side: ``reload-PID.json`` in its state folder, written at start
    (generation 0) and after each reload; removed when the daemon stops."""

    def __init__(self, state_dir: Path) -> None:
        self.path = verdict_path(state_dir, os.getpid())
        self.generation = 0

    def start(self) -> None:
        self._write({"ok": True, "problems": []})

    def record(self, ok: bool, problems: list[str]) -> None:
        self.generation += 1
        self._write({"ok": ok, "problems": problems})

    def _write(self, verdict: dict[str, Any]) -> None:
        record = {"pid": os.getpid(), "generation": self.generation, **verdict}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_text(json.dumps(record) + "\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            # `edged reload` then times out and says so; the daemon runs on.
            log.warning("cannot write the reload verdict %s: %s", self.path, exc.strerror or exc)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


def state_dir_of(config: str | os.PathLike[str]) -> Path:
    """``[daemon] state_dir`` of the config file, read from the TOML alone: the
    file may have just been broken by the edit the reload is about."""
    from edged.config import DaemonConfig

    name = os.fspath(config)
    try:
        with open(name, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(name, [f"{name}: cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, [f"{name}: TOML syntax error: {exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(name, [f"{name}: not UTF-8 text (TOML must be)"]) from None
    daemon = data.get("daemon", {})
    default = DaemonConfig.model_fields["state_dir"].default
    value = daemon.get("state_dir", default) if isinstance(daemon, dict) else default
    path = Path(str(value))
    if not path.is_absolute():
        path = Path(os.path.normpath(Path(os.path.abspath(name)).parent / path))
    return path


def _read(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def reload_daemon(pid: int, config: str | os.PathLike[str], timeout: float = TIMEOUT) -> list[str]:
    """SIGHUP ``pid`` and wait for its verdict: the errors that made it keep its
    previous configuration ([] when the reload was applied). Raises
    :class:`ReloadError` when it cannot be asked or does not answer, and
    :class:`ConfigError` when the config's TOML cannot even be read (the daemon
    is not signalled then: it would reject the file as well)."""
    path = verdict_path(state_dir_of(config), pid)
    before = _read(path)
    if before is None or before.get("pid") != pid:
        raise ReloadError(
            f"no reload verdict {path}: pid {pid} is not an edged daemon with this "
            "state_dir (a changed [daemon] state_dir takes effect when edged restarts)"
        )
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        raise ReloadError(f"cannot signal pid {pid}: {exc.strerror or exc}") from None
    deadline = time.monotonic() + timeout
    while True:
        now = _read(path)
        if now is not None and now.get("generation", 0) > before.get("generation", 0):
            if now.get("ok"):
                return []
            return [str(p) for p in now.get("problems") or ["(no reason given)"]]
        if time.monotonic() > deadline:
            raise ReloadError(f"pid {pid} gave no reload verdict within {timeout:.0f}s ({path})")
        time.sleep(0.05)


def run_reload_command(pid: int, config: str, timeout: float = TIMEOUT) -> int:
    """``edged reload``: 0 when the daemon applied the config, 78 when it kept the
    previous one (its errors printed, each with the err priority under the journal)."""
    from edged.logs import print_error

    problems = reload_daemon(pid, config, timeout)
    if not problems:
        print(f"edged reload: pid {pid} reloaded {config}", flush=True)
        return EX_OK
    print_error(
        "\n".join(
            [f"edged reload: pid {pid} rejected {config}; still running the previous one:"]
            + [f"  {p}" for p in problems]
        )
    )
    return EX_CONFIG
