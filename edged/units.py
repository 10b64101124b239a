"""Durations and sizes as people write them in a config: ``"500ms"``, ``"2m"``, ``"10MiB"``.

``Duration`` and ``ByteSize`` are pydantic types for any model, processor
options included.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(rf"(?:\s*{_NUMBER}\s*(?:ms|s|m|h))+\s*")
_DURATION_PART = re.compile(rf"({_NUMBER})\s*(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_BYTE_SIZE = re.compile(rf"\s*({_NUMBER})\s*([a-z]*)\s*")
# Bare K/M/G/T are binary, as in systemd's size settings; kB/MB/GB/TB are SI.
_BYTE_UNITS = {"": 1, "b": 1}
for _i, _p in enumerate("kmgt", start=1):
    _BYTE_UNITS |= {_p: 1024**_i, f"{_p}ib": 1024**_i, f"{_p}b": 1000**_i}


def parse_duration(value: str | float) -> float:
    """Seconds in ``value``: a number of seconds, or ``"500ms"``, ``"1.5s"``, ``"2m"``,
    ``"1h"``, ``"1m30s"``. Raises ``ValueError`` (without echoing the value)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("expected a duration: seconds, or a string like '500ms', '5s', '2m'")
    if isinstance(value, str):
        text = value.strip().lower()
        negative = text.startswith("-")
        text = text.removeprefix("-")
        if re.fullmatch(_NUMBER, text):
            seconds = float(text)
        elif _DURATION.fullmatch(text):
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
        else:
            raise ValueError(
                "invalid duration: use seconds, or a number with a unit ms, s, m or h "
                "(e.g. '500ms', '1.5s', '2m')"
            )
        seconds = -seconds if negative else seconds
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError("a duration must be a finite number")
    if seconds < 0:
        raise ValueError("a duration must not be negative")
    return seconds


def parse_byte_size(value: str | int | float) -> int:
    """Bytes in ``value``: an integer, or ``"512k"``, ``"10MB"``, ``"10MiB"``, ``"1GiB"``.

    ``kB``/``MB``/``GB``/``TB`` are powers of 1000; ``KiB``... and bare ``K``/``M``/
    ``G``/``T`` (as in systemd) are powers of 1024. Case is ignored."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("expected a size: bytes, or a string like '512k', '10MB', '10MiB'")
    if isinstance(value, str):
        text = value.strip().lower()
        if text.startswith("-"):
            raise ValueError("a size must not be negative")
        match = _BYTE_SIZE.fullmatch(text)
        if not match or match[2] not in _BYTE_UNITS:
            raise ValueError(
                "invalid size: use bytes, or a number with a unit such as k, MB, MiB, GiB"
            )
        size = float(match[1]) * _BYTE_UNITS[match[2]]
    else:
        size = float(value)
    if not math.isfinite(size) or size != int(size):
        raise ValueError("a size must be a whole number of bytes")
    if size < 0:
        raise ValueError("a size must not be negative")
    return int(size)


def _duration_before(value: Any) -> Any:
    return parse_duration(value)


def _byte_size_before(value: Any) -> Any:
    return parse_byte_size(value)


Duration = Annotated[float, BeforeValidator(_duration_before)]
"""Seconds as a float; accepts a number or a string like ``"500ms"``, ``"5s"``, ``"2m"``."""
ByteSize = Annotated[int, BeforeValidator(_byte_size_before)]
"""Bytes as an int; accepts an integer or a string like ``"512k"``, ``"10MB"``, ``"1GiB"``."""
