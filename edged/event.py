"""An event: the record a processor's finding becomes, and its one encoding.

:func:`make_event` builds the record in the worker (schema, id, camera,
frame time and age, the processor's data, bounded in size);
:func:`encode_event` is the one serialisation every sink uses: the JSONL
line, and byte for byte the MQTT payload. Sinks import this module, never
each other.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import uuid
from typing import TYPE_CHECKING, Any

from edged.processor import Event

if TYPE_CHECKING:
    from edged.processor import Frame

__all__ = [
    "MAX_EVENT_DATA",
    "SCHEMA_VERSION",
    "EventRecord",
    "encode_event",
    "encode_plain",
    "make_event",
    "utc_iso",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_EVENT_TYPE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")
_MAX_DEPTH = 64  # nesting kept when coercing unserialisable data


def _plain(obj: Any) -> Any:
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [_plain(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalars and arrays, what processors return most
        return _plain(obj.tolist())
    return repr(obj)


def jsonable(data: dict[str, Any]) -> dict[str, Any]:
    """The processor's data as plain JSON types (NaN and infinities become null)."""
    result: dict[str, Any] = _plain(data)
    return result


def utc_iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# An event is a small record: every sink writes it in the supervisor's loop,
# and brokers refuse big messages. A frame put in an event by mistake (a 1080p
# array is 20 MB of JSON) would stall them all.
MAX_EVENT_DATA = 64 * 1024  # bytes of the data's JSON
_oversize_logged = False


class EventRecord(dict[str, Any]):
    """An event record (a dict, as written to JSONL) that also carries the image the
    processor gave for its snapshot (:attr:`edged.Event.snapshot`) while it is in
    the worker. Pickled (to the supervisor) it is a plain dict: the image stays."""

    __slots__ = ("image",)

    image: Any  # np.ndarray | None; Any: this module does not import numpy

    def __reduce__(self) -> tuple[type[dict[str, Any]], tuple[dict[str, Any]]]:
        return (dict, (dict(self),))


def make_event(
    cam: str, processor: str, event: Event, frame: Frame, age: float, took: float, node: str = ""
) -> EventRecord:
    """The event record, exactly as written to JSONL and published to MQTT."""
    global _oversize_logged
    if not isinstance(event, Event):
        raise TypeError(f"process() produced {type(event).__name__}, not edged.Event")
    if not isinstance(event.type, str) or not _EVENT_TYPE.match(event.type):
        raise ValueError(f"bad event type {event.type!r}: use letters, digits, '_', '.', '-'")
    if not isinstance(event.data, dict):
        raise TypeError(f"event data must be a dict, not {type(event.data).__name__}")
    data = jsonable(event.data)
    size = len(encode_event(data)) - 1  # as the sinks will write it, less the newline
    if size > MAX_EVENT_DATA:
        # The event still happened: keep it, and say what its data was.
        if not _oversize_logged:
            _oversize_logged = True
            log.warning(
                "camera %s: processor %s made a %s event with %d bytes of data, over the "
                "%d-byte limit: its data is replaced by a note (save frames as snapshots, "
                "not in events); further ones are not logged",
                cam,
                processor,
                event.type,
                size,
                MAX_EVENT_DATA,
            )
        data = {"edged_error": "data too large", "bytes": size, "limit": MAX_EVENT_DATA}
    record = EventRecord(
        {
            "schema": SCHEMA_VERSION,
            "id": uuid.uuid4().hex,
            "node": node,  # with camera, where it happened: a fleet's consumer needs both
            "camera": cam,
            "processor": processor,
            "type": event.type,
            "time": utc_iso(frame.timestamp),
            "seq": frame.seq,
            "frame_age_ms": round(age * 1000, 3),
            "processing_ms": round(took * 1000, 3),
            "data": data,
        }
    )
    record.image = event.snapshot
    return record


def encode_event(event: dict[str, Any]) -> bytes:
    """Serialise one event as a UTF-8 JSON line (ending in ``\\n``); never raises.

    NaN and infinities become ``null``; values JSON cannot represent are
    converted (numpy scalars and arrays to numbers and lists, datetimes to ISO
    strings, anything else to its ``repr``) instead of losing the event.
    """
    try:
        text = _dumps(event)
    except (TypeError, ValueError, RecursionError):
        text = _dumps(_coerce(event, 0, set()))
    # A lone surrogate (from a badly decoded name, say) cannot be encoded as
    # UTF-8; it can only sit inside a JSON string, where "\udc80" is a valid
    # escape, so backslashreplace keeps the line valid JSON.
    return (text + "\n").encode("utf-8", "backslashreplace")


def encode_plain(event: dict[str, Any]) -> bytes | None:
    """The line of an event made only of plain JSON types; None when it would
    need :func:`encode_event`'s conversions (a caller that counts those)."""
    try:
        return (_dumps(event) + "\n").encode("utf-8")
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError):
        return None


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _coerce(obj: Any, depth: int, active: set[int]) -> Any:
    """A JSON-safe copy of ``obj``: see :func:`encode_event`."""
    if obj is None or isinstance(obj, str | bool):
        return obj
    if isinstance(obj, int):
        # Python refuses to print ints of more than 4300 digits (CVE-2020-10735).
        return obj if obj.bit_length() < 4000 else f"<int of {obj.bit_length()} bits>"
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if depth >= _MAX_DEPTH:
        return "<too deep>"
    if isinstance(obj, dict | list | tuple):
        if id(obj) in active:
            return "<circular>"
        active.add(id(obj))
        try:
            if isinstance(obj, dict):
                return {_coerce_key(k): _coerce(v, depth + 1, active) for k, v in obj.items()}
            return [_coerce(v, depth + 1, active) for v in obj]
        finally:
            active.discard(id(obj))
    tolist = getattr(obj, "tolist", None)  # numpy arrays and scalars, without importing numpy
    if callable(tolist):
        try:
            converted = tolist()
        except Exception:
            converted = obj
        if converted is not obj:
            return _coerce(converted, depth + 1, active)
    isoformat = getattr(obj, "isoformat", None)
    if callable(isoformat):
        try:
            return str(isoformat())
        except Exception:
            pass
    try:
        return repr(obj)
    except Exception:
        return f"<unrepresentable {type(obj).__name__}>"


def _coerce_key(key: Any) -> str | int | bool | None:
    if key is None or isinstance(key, str | bool):
        return key
    if isinstance(key, int) and key.bit_length() < 4000:
        return key
    if isinstance(key, float):
        return repr(key)  # allow_nan=False rejects NaN keys too; "nan" is a fine string
    tolist = getattr(key, "tolist", None)  # a numpy scalar
    if callable(tolist):
        try:
            value = tolist()
        except Exception:
            value = key
        if value is not key and (value is None or isinstance(value, str | bool | int | float)):
            return _coerce_key(value)
    try:
        return repr(key)
    except Exception:
        return f"<unrepresentable {type(key).__name__}>"
