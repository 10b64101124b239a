"""Where a config mistake is: TOML syntax errors and pydantic errors as report lines.

tomllib gives no positions, so :func:`key_lines` scans the TOML text itself
for table headers and keys and maps each dotted key path to its line; a
problem is reported at its key's line, else at the nearest enclosing table's.
Each line reads ``file:line: dotted.key.path: reason``, never the value.
"""

from __future__ import annotations

import bisect
import json
import re

from pydantic import ValidationError

from edged.redact import scrub


def syntax_problem(name: str, message: str) -> str:
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if not match:
        return f"{name}: TOML syntax error: {message}"
    reason = message[: match.start()]
    return f"{name}:{match[1]}: TOML syntax error: {reason} (column {match[2]})"


_MESSAGES = {
    "missing": "required key is missing",
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
    "dict_type": "expected a table",
}
_PREFIXES = ("Value error, ", "Assertion failed, ")


def problems(name: str, exc: ValidationError, lines: dict[tuple[str | int, ...], int]) -> list[str]:
    found: list[tuple[int | None, str]] = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if p != "[key]")
        msg = _MESSAGES.get(err["type"], err["msg"])
        for prefix in _PREFIXES:
            msg = msg.removeprefix(prefix)
        msg = scrub(msg)  # a plugin's message, or a path, may hold a URL with a password
        line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
        where = f"{name}:{line}" if line else name
        key = _dotted(loc)
        problem = f"{where}: {key}: {msg}" if key else f"{where}: {msg}"
        if all(problem != p for _, p in found):
            found.append((line, problem))
    found.sort(key=lambda f: (f[0] is None, f[0] or 0))
    return [p for _, p in found]


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + (part if _BARE_KEY.fullmatch(part) else json.dumps(part))
    return out


_SCALAR = re.compile(r"[^,\]}\n#]+")


class _Stop(Exception):
    pass


class _KeyScanner:
    """Maps dotted key paths to 1-based line numbers in valid TOML text, which tomllib
    does not report. It is approximate by design: on anything unexpected it stops,
    keeping what it found, and the error report falls back to an enclosing table."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.lines: dict[tuple[str | int, ...], int] = {}
        self._starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def scan(self) -> dict[tuple[str | int, ...], int]:
        table: tuple[str | int, ...] = ()
        arrays: dict[tuple[str | int, ...], int] = {}
        try:
            while True:
                self._skip(newlines=True)
                if self.pos >= len(self.text):
                    break
                start = self.pos
                if self._peek() == "[":
                    double = self.text.startswith("[[", self.pos)
                    self.pos += 2 if double else 1
                    key = self._key()
                    self._record(key, start)
                    if double:
                        table = (*key, arrays.get(key, 0))
                        arrays[key] = arrays.get(key, 0) + 1
                        self._record(table, start)
                    else:
                        table = key
                else:
                    path = (*table, *self._key())
                    self._record(path, start)
                    self._expect("=")
                    self._value(path)
                self._to_line_end()
        except (_Stop, IndexError):
            pass
        return self.lines

    def _record(self, path: tuple[str | int, ...], pos: int) -> None:
        line = bisect.bisect_right(self._starts, pos)
        for n in range(1, len(path) + 1):
            self.lines.setdefault(path[:n], line)

    def _peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def _skip(self, newlines: bool = False) -> bool:
        while True:
            c = self._peek()
            if c in (" ", "\t", "\r") or (newlines and c == "\n"):
                self.pos += 1
            elif c == "#" and newlines:
                self._to_line_end()
            else:
                return False

    def _to_line_end(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end + 1

    def _expect(self, char: str) -> None:
        self._skip()
        if self._peek() != char:
            raise _Stop
        self.pos += 1

    def _key(self) -> tuple[str, ...]:
        parts: list[str] = []
        while True:
            self._skip()
            c = self._peek()
            if c in ('"', "'"):
                start = self.pos
                self._string()
                raw = self.text[start : self.pos]
                try:
                    parts.append(json.loads(raw) if c == '"' else raw[1:-1])
                except ValueError:
                    parts.append(raw[1:-1])
            else:
                match = _BARE_KEY.match(self.text, self.pos)
                if not match:
                    raise _Stop
                parts.append(match[0])
                self.pos = match.end()
            self._skip()
            if self._peek() != ".":
                return tuple(parts)
            self.pos += 1

    def _string(self) -> None:
        quote_char = self._peek()
        triple = quote_char * 3
        if self.text.startswith(triple, self.pos):
            i = self.pos + 3
            while True:
                i = self.text.index(triple, i)
                escapes = 0
                while quote_char == '"' and self.text[i - 1 - escapes] == "\\":
                    escapes += 1
                if escapes % 2 == 0:
                    break
                i += 1
            # Up to two quotes just before the closing three belong to the string.
            end = i + 3
            while end < i + 5 and self.text[end : end + 1] == quote_char:
                end += 1
            self.pos = end
            return
        i = self.pos + 1
        while self.text[i] != quote_char:
            if self.text[i] == "\n":
                raise _Stop
            i += 2 if quote_char == '"' and self.text[i] == "\\" else 1
        self.pos = i + 1

    def _value(self, path: tuple[str | int, ...]) -> None:
        self._skip()
        c = self._peek()
        if c in ('"', "'"):
            self._string()
        elif c in ("[", "{"):
            self.pos += 1
            index = 0
            while True:
                self._skip(newlines=True)
                if self._peek() in ("]", "}"):
                    self.pos += 1
                    return
                start = self.pos
                if c == "[":
                    self._record((*path, index), start)
                    self._value((*path, index))
                    index += 1
                else:
                    key = (*path, *self._key())
                    self._record(key, start)
                    self._expect("=")
                    self._value(key)
                self._skip(newlines=True)
                if self._peek() == ",":
                    self.pos += 1
                elif self._peek() not in ("]", "}"):
                    raise _Stop
        else:
            match = _SCALAR.match(self.text, self.pos)
            if not match:
                raise _Stop
            self.pos = match.end()


def key_lines(text: str) -> dict[tuple[str | int, ...], int]:
    return _KeyScanner(text).scan()
