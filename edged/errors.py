"""The error hierarchy and exit codes.

Every error a user can cause carries a message that names what is wrong and
where; the CLI prints it and exits with the matching code.
"""

from __future__ import annotations

import errno

EX_OK = 0
EX_USAGE = 64  # sysexits EX_USAGE: a command asked for what it cannot do
EX_SOFTWARE = 70  # an internal error: a bug, or a failure we did not foresee
EX_CONFIG = 78  # sysexits EX_CONFIG; units mark it RestartPreventExitStatus=78

# How a child tells the supervisor why it exited (besides 0, 70 and 78 above).
EXIT_END_OF_STREAM = 3  # a reader's file without loop=true played to its end: do not restart
EXIT_PROCESSOR_FAILING = 4  # a worker's processor failed too many frames in a row: restart it


class EdgedError(Exception):
    """Base class for errors edged reports to users."""

    exit_code = EX_SOFTWARE


class ConfigError(EdgedError):
    """The configuration is invalid. ``problems`` holds one line per mistake."""

    exit_code = EX_CONFIG

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        n = len(problems)
        head = f"{path}: {n} error{'s' if n != 1 else ''} in configuration"
        super().__init__("\n".join([head, *(f"  {p}" for p in problems)]))


class SourceError(EdgedError):
    """A video source could not be opened or read.

    ``cause`` names why in a few words when the source knows (``"authentication
    failed (check user and password)"``); otherwise the reader guesses it from
    FFmpeg's last messages."""

    def __init__(self, message: str, cause: str | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class SharedMemoryError(EdgedError):
    """A frame slot cannot get its memory: /dev/shm is too small or full."""


class PluginError(EdgedError):
    """A processor or source plugin could not be found, loaded or set up."""

    exit_code = EX_CONFIG


class CameraBusyError(EdgedError):
    """Another edged process already captures this camera (an edged@ unit and edged.service)."""

    exit_code = EX_CONFIG  # a deployment mistake: restarting will not fix it


# A path or address that is wrong, not busy: restarting will not fix these, so
# edged exits 78 and systemd does not restart it in a loop (a full disk or a
# port in use may clear up, and keep 70).
_PERMANENT = {
    errno.EEXIST,  # mkdir(exist_ok=True): there, and not a folder
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENAMETOOLONG,
    errno.ELOOP,
    errno.EADDRNOTAVAIL,
}


def exit_code_for(err: OSError | int | None) -> int:
    """EX_CONFIG for an OS error a restart cannot fix (a file where a folder
    should be, no permission, a read-only disk, an address not on this box)."""
    code = err.errno if isinstance(err, OSError) else err
    return EX_CONFIG if code in _PERMANENT else EX_SOFTWARE


class StartupError(EdgedError):
    """A folder or file the config names cannot be used when edged starts."""

    def __init__(self, message: str, err: OSError | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code_for(err)
