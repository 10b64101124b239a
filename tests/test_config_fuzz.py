"""A seeded, bounded fuzz of ``edged check-config``: mutations of config/example.toml.

Every mutant must give exit 0, or exit 78 with a report of clear problem lines;
never 70, a traceback or a hang. Most cases call the CLI in-process (the same
code path as the command, at a fraction of the cost); a few go through a real
``python -m edged`` to keep that path honest.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edged.cli import main

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = (REPO / "config/example.toml").read_text()
SEED = 15
CASES = 300
SUBPROCESS_CASES = 4
HEAD = re.compile(r"\d+ errors? in configuration$")

_KEY_LINE = re.compile(r"^(\s*#?\s*)([A-Za-z0-9_-]+)(\s*=\s*)(.*)$")


def _key_lines(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if _KEY_LINE.match(line)]


def _deep(rng: random.Random) -> str:
    n = rng.choice([31, 33, 100, 500, 2000])
    return "{a = " * n + "1" + "}" * n if rng.random() < 0.5 else "[" * n + "]" * n


_VALUES: list[Callable[[random.Random], str]] = [
    lambda r: r.choice(['"x"', '""', "true", "[]", "{}", "1.5", "0", "nan", "inf", "-inf"]),
    lambda r: str(r.choice([-1, -(2**63), 2**63, 10**30, 2**31, 65536, 4097])),
    lambda r: f'"{r.choice(["-1s", "1e400s", "99999999h", "0KiB", "-5MiB", "1e30b"])}"',
    lambda r: '"' + "x" * r.choice([65, 256, 300, 5000, 100_000]) + '"',
    lambda r: '"/tmp/' + "p" * r.choice([255, 256, 400]) + '"',
    lambda r: r.choice(['"a\\u0000b"', '"a\\nb"', '"rtsp://cam/\\u0007x"', '"\\u007f"']),
    lambda r: r.choice(['"/dev/zero"', '"/proc/1/x"', '"/"', '"/etc/passwd/x"', '"."']),
    _deep,
]


def _mutate(text: str, rng: random.Random) -> bytes:
    """One to three mutations of the example's text."""
    for _ in range(rng.randint(1, 3)):
        lines = text.split("\n")
        keys = _key_lines(lines)
        i = rng.choice(keys)
        kind = rng.randrange(9)
        if kind == 0:  # delete a key
            del lines[i]
        elif kind == 1:  # duplicate a key
            lines.insert(i, lines[i].lstrip("# "))
        elif kind in (2, 3, 4):  # a hostile value, in a key that is set or commented out
            m = _KEY_LINE.match(lines[i])
            assert m is not None
            lines[i] = f"{m[2]}{m[3]}{rng.choice(_VALUES)(rng)}"
        elif kind == 5:  # a camera or table name
            name = rng.choice(["c" * 65, "c" * 300, "Front Door", "a.b", '"\\u0000"'])
            lines.append(f"[cameras.{name}]\nsource = 'synthetic'")
        elif kind == 6:  # truncated
            return text[: rng.randrange(len(text))].encode()
        elif kind == 7:  # invalid UTF-8 or a raw NUL byte, anywhere
            at = rng.randrange(len(text))
            raw = text.encode()
            return raw[:at] + rng.choice([b"\xff\xfe", b"\xc3", b"\x00"]) + raw[at:]
        else:  # a key no model knows, at any depth
            lines.insert(i + 1, rng.choice(["bogus = 1", "x" * 200 + " = 1", "a.b.c.d = 2"]))
        text = "\n".join(lines)
    return text.encode()


def _cases() -> list[bytes]:
    rng = random.Random(SEED)
    return [_mutate(EXAMPLE, rng) for _ in range(CASES)]


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # What the example names beside itself, so unmutated parts pass.
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets/yard.password").write_text("yard-pw\n")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _assert_clear(code: int, err: str, case: int) -> None:
    assert code in (0, 78), f"case {case}: exit {code}: {err[-2000:]}"
    assert "Traceback" not in err, f"case {case}: {err[-2000:]}"
    if code == 0:
        return
    head, *problems = err.splitlines()
    assert HEAD.search(head), f"case {case}: {head!r}"
    assert problems, f"case {case}: no problem named"
    for line in problems:
        # "  file[:line]: [key: ]reason", bounded whatever the value was.
        assert line.startswith("  edged.toml"), f"case {case}: {line[:300]!r}"
        assert len(line) < 1000, f"case {case}: a problem line of {len(line)} characters"
        assert "\x00" not in line


def test_check_config_survives_every_mutant(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    codes = []
    for n, case in enumerate(_cases()):
        (folder / "edged.toml").write_bytes(case)
        code = main(["check-config", "edged.toml"])
        _assert_clear(code, capsys.readouterr().err, n)
        codes.append(code)
    # The mutations are hostile enough to matter, and not all fatal.
    assert 0 in codes and codes.count(78) > CASES // 2


def test_check_config_command_on_a_few_mutants(folder: Path) -> None:
    cases = _cases()
    picked = random.Random(SEED).sample(range(CASES), SUBPROCESS_CASES)
    for n in picked:
        (folder / "edged.toml").write_bytes(cases[n])
        done = subprocess.run(
            [sys.executable, "-m", "edged", "check-config", "edged.toml"],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=60,
        )
        _assert_clear(done.returncode, done.stderr, n)
