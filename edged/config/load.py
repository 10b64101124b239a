"""Reading a config file within its bounds, and the errors it gives."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)

from edged.config.base import (
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    MAX_KEY_CHARS,
    MAX_STRING_CHARS,
    invalid,
    read_bounded,
)
from edged.config.cameras import CameraConfig, check_camera_name
from edged.config.model import Config
from edged.config.report import key_lines, problems, syntax_problem
from edged.errors import ConfigError
from edged.redact import scrub

# --- loading and error reports -----------------------------------------------------------


def load_config(
    path: str | os.PathLike[str],
    credentials_optional: bool = False,
    cameras: Iterable[str] | None = None,
) -> Config:
    """Read and validate the config file at ``path``; raise :class:`ConfigError`.

    ``credentials_optional``: for commands run outside the daemon's unit (check-config,
    events): without ``$CREDENTIALS_DIRECTORY`` a ``password_credential`` is not read
    (nor its password known); :meth:`Config.unread_credentials` lists them.
    ``cameras``: read the secrets of these cameras only (``edged run --camera``): the
    others' password files and credentials are not read, nor their passwords known."""
    name = os.fspath(path)
    return parse_config(read_config_text(name), name, credentials_optional, cameras)


def read_config_text(path: str | os.PathLike[str]) -> str:
    """The text of the config file at ``path``; :class:`ConfigError` if it is not a
    regular file of UTF-8 text of at most MAX_CONFIG_BYTES."""
    name = os.fspath(path)
    try:
        return read_bounded(name, MAX_CONFIG_BYTES).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(name, [f"{name}: not UTF-8 text (byte {exc.start})"]) from None
    except ValueError as exc:
        raise ConfigError(name, [f"{name}: {exc}"]) from None


def parse_toml(text: str, path: str | os.PathLike[str]) -> dict[str, Any]:
    """TOML ``text`` (read from ``path``) as a dict, within the bounds above (nesting,
    key and string lengths, no NUL byte); raise :class:`ConfigError`."""
    name = os.fspath(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, [syntax_problem(name, str(exc))]) from None
    except RecursionError:  # tomllib recurses once per level
        message = f"tables and arrays nested too deeply (at most {MAX_DEPTH} levels)"
        raise ConfigError(name, [f"{name}: {message}"]) from None
    if found := _out_of_bounds(data):
        raise ConfigError(name, problems(name, invalid(found, "Config"), key_lines(text)))
    return data


def _out_of_bounds(data: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """(key path, problem) for what no option can want, found without recursion (a
    deep value would overflow the stack of whatever recursed over it next)."""
    found: list[tuple[tuple[str | int, ...], str]] = []
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), data)]
    while stack and len(found) < 10:
        where, value = stack.pop()
        if isinstance(value, dict | list) and len(where) >= MAX_DEPTH:
            found.append((where, f"nested too deeply (at most {MAX_DEPTH} levels)"))
        elif isinstance(value, dict):
            for key, item in value.items():
                if len(key) > MAX_KEY_CHARS:
                    short = f"{key[:16]}..."  # the whole key would flood the report
                    found.append(((*where, short), f"key longer than {MAX_KEY_CHARS} characters"))
                else:
                    stack.append(((*where, key), item))
        elif isinstance(value, list):
            stack.extend(((*where, i), item) for i, item in enumerate(value))
        elif isinstance(value, str) and len(value) > MAX_STRING_CHARS:
            found.append((where, f"longer than {MAX_STRING_CHARS} characters"))
        elif isinstance(value, str) and "\x00" in value:
            found.append((where, "must not contain a NUL byte"))
    return sorted(found)


def camera_from_dict(
    name: str, options: Mapping[str, Any], base_dir: str | os.PathLike[str] | None = None
) -> CameraConfig:
    """One camera from keyword options (as in a ``[cameras.NAME]`` table), for using
    the reader as a library; relative paths are resolved against ``base_dir`` (default:
    the current folder). Raises :class:`ConfigError` naming the camera."""
    base = Path(os.path.abspath(base_dir if base_dir is not None else os.curdir))
    label = f"camera {name!r}"
    try:
        check_camera_name(name)
        return CameraConfig.model_validate({"name": name, **options}, context={"base_dir": base})
    except ValueError as exc:  # ValidationError is a ValueError
        if not isinstance(exc, ValidationError):
            raise ConfigError(label, [f"{label}: {exc}"]) from None
        raise ConfigError(label, problems(label, exc, {})) from None


def parse_config(
    text: str,
    path: str | os.PathLike[str],
    credentials_optional: bool = False,
    cameras: Iterable[str] | None = None,
) -> Config:
    """Validate TOML ``text`` as if read from ``path`` (which relative paths in it
    are resolved against); raise :class:`ConfigError` listing every problem.
    ``credentials_optional``, ``cameras``: as for :func:`load_config`."""
    name = os.fspath(path)
    data = parse_toml(text, name)
    file = Path(os.path.abspath(name))
    context = {
        "path": file,
        "base_dir": file.parent,
        "credentials_optional": credentials_optional,
        "secret_cameras": None if cameras is None else frozenset(cameras),
    }
    try:
        return Config.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(name, problems(name, exc, key_lines(text))) from None
    except (OSError, RecursionError) as exc:
        # What a config can cause that no check above foresaw is still the
        # config's doing: exit 78 (or keep the running config), not a traceback.
        reason = scrub(f"{type(exc).__name__}: {exc}")[:500]
        raise ConfigError(name, [f"{name}: cannot be checked: {reason}"]) from None
