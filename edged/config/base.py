"""What every config model shares: the bounds on what a config may hold, path and
file checks, bounded reads, and how problems become pydantic errors."""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.functional_validators import ModelWrapValidatorHandler
from pydantic_core import InitErrorDetails, PydanticCustomError


def scalar_to_str(value: Any) -> Any:
    # FFmpeg options are strings, but `stimeout = 5000000` in TOML is an int.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


# --- helpers for validators ------------------------------------------------------


def context_of(info: ValidationInfo) -> dict[str, Any]:
    return info.context if isinstance(info.context, dict) else {}


# What a config may hold, bounded so that no value reaches the OS or a log unchecked.
MAX_CONFIG_BYTES = 1024**2  # a real config is a few KiB
MAX_SECRET_BYTES = 64 * 1024  # a password file: its first line is used
MAX_DEPTH = 32  # tables and arrays within each other; the reference config uses 4
MAX_KEY_CHARS = 128
MAX_STRING_CHARS = 64 * 1024  # below Linux's 128 KiB for one environment string
MAX_PATH_BYTES = 4095  # PATH_MAX, less its NUL
MAX_NAME_BYTES = 255  # NAME_MAX: one path component
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_path(path: Path) -> Path:
    """``path``, if the OS can take it; errors never show it (it may be 100k long)."""
    text = str(path)
    if CONTROL.search(text):
        raise ValueError("a path must not contain control characters (a NUL byte, a newline)")
    raw = os.fsencode(text)
    if len(raw) > MAX_PATH_BYTES:
        raise ValueError(f"path too long: {len(raw)} bytes, at most {MAX_PATH_BYTES}")
    longest = max((len(part) for part in raw.split(b"/")), default=0)
    if longest > MAX_NAME_BYTES:
        raise ValueError(
            f"a path component is {longest} bytes long; a file or folder name has at most "
            f"{MAX_NAME_BYTES}"
        )
    return path


def resolve_path(path: Path, info: ValidationInfo) -> Path:
    """``path`` made absolute against the config file's folder, checked by check_path."""
    base = context_of(info).get("base_dir")
    if base is not None and not path.is_absolute():
        path = Path(os.path.normpath(Path(base) / path))
    return check_path(path)


def check_file(path: Path) -> None:
    """Raise ValueError unless ``path`` is a regular file this process can see."""
    try:
        if path.is_file():
            return
        problem = "not a file" if path.exists() else "file not found"
    except OSError as exc:  # a folder on the way this user cannot enter, say
        problem = f"cannot access ({exc.strerror or exc})"
    raise ValueError(f"{problem}: {path}")


def check_folder(folder: Path) -> None:
    """Raise ValueError unless ``folder`` is a folder this process can write in, or one
    it could create (as ``mkdir -p`` would), so a config check fails where ``run`` would."""
    probe, missing = folder, None
    try:
        while not probe.exists():
            probe, missing = probe.parent, probe
        if not probe.is_dir():
            raise ValueError(f"not a folder: {probe}")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise ValueError(f"cannot write in {probe}: permission denied")
        if missing is not None:
            # access() says yes to root everywhere (/proc/1, say): only trying tells.
            try:
                os.mkdir(missing, 0o700)
            except FileExistsError:
                return  # made meanwhile (by a starting daemon)
            with contextlib.suppress(OSError):  # someone uses it already
                os.rmdir(missing)
    except OSError as exc:
        raise ValueError(f"cannot create folder {folder}: {exc.strerror or exc}") from None


def read_bounded(path: str | os.PathLike[str], limit: int) -> bytes:
    """The content of the regular file at ``path``, if at most ``limit`` bytes.

    Raises ValueError with the reason alone (the caller names the file): not
    found, not readable, not a regular file (a FIFO or /dev/zero would hang or
    never end), or too large."""
    try:
        # O_NONBLOCK: opening a FIFO waits for a writer without it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ValueError("file not found") from None
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ValueError("a folder, not a file")
        if not stat.S_ISREG(mode):
            raise ValueError("not a regular file")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, min(1024**2, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise ValueError(f"larger than {limit} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def invalid(
    problems: Sequence[tuple[str | tuple[str | int, ...], str]], title: str, data: Any = None
) -> ValidationError:
    """A ValidationError with one custom error per (key or key path, message); pydantic
    merges it into the enclosing model's errors with the key path prefixed."""
    details = [
        InitErrorDetails(
            type=PydanticCustomError("edged", message),
            loc=key if isinstance(key, tuple) else (key,),
            input=data,
        )
        for key, message in problems
    ]
    return ValidationError.from_exception_data(title, details)


def did_you_mean(key: str, known: Iterable[str]) -> str:
    hint = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def explain_unknown(
    exc: ValidationError, known: Iterable[str], hints: dict[str, str], title: str
) -> ValidationError | None:
    """``exc`` with its top-level unknown-key errors given a did-you-mean, or None if
    there are none. Every error is rebuilt as a custom one keeping its message."""
    errors = exc.errors()
    if not any(e["type"] == "extra_forbidden" and len(e["loc"]) == 1 for e in errors):
        return None
    known = list(known)
    details = []
    for err in errors:
        kind, msg = err["type"], err["msg"]
        if kind == "extra_forbidden" and len(err["loc"]) == 1:
            key = str(err["loc"][0])
            # A new type, so enclosing models leave the message alone.
            kind, msg = "unknown_key", hints.get(key) or f"unknown key{did_you_mean(key, known)}"
        details.append(
            InitErrorDetails(
                type=PydanticCustomError(kind, msg), loc=err["loc"], input=err["input"]
            )
        )
    return ValidationError.from_exception_data(title, details)


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    _key_hints: ClassVar[dict[str, str]] = {}
    """Messages for keys that are not allowed here, instead of a did-you-mean."""

    @model_validator(mode="wrap")
    @classmethod
    def _unknown_keys(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        try:
            return handler(data)
        except ValidationError as exc:
            better = explain_unknown(exc, cls.model_fields, cls._key_hints, cls.__name__)
            if better is None:
                raise
            raise better from None
