"""Logging set-up shared by the supervisor and its children.

Under journald (stderr is the journal stream) lines carry ``<N>`` syslog
priority prefixes and no timestamps, so ``journalctl -p warning`` works;
elsewhere, a human format with timestamps. Every record passes a filter that
scrubs URL credentials, whatever code logged it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Iterator
from typing import TextIO

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


@dataclasses.dataclass(frozen=True)
class LogSettings:
    level: str = "info"
    format: str = "auto"  # auto | human | journal


def under_journal() -> bool:
    """True when stderr is the stream that systemd set up for this service."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def print_error(text: str, priority: int = logging.ERROR, file: TextIO | None = None) -> None:
    """Print why a command failed, ``text`` scrubbed, on stderr. Under the journal each line
    carries the syslog prefix of ``priority`` (a logging level), as a log record would:
    the CLI prints fatal errors before (or without) logging being set up, and
    ``journalctl -p warning`` must show them all the same."""
    from edged.redact import scrub

    out = sys.stderr if file is None else file
    lines = scrub(text).splitlines() or [""]
    if under_journal():
        prio = _PRIORITY.get(priority, 3)
        lines = [f"<{prio}>{line}" for line in lines]
    print("\n".join(lines), file=out, flush=True)


class _ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from edged.redact import scrub

        msg = record.getMessage()
        clean = scrub(msg)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        # journald splits on newlines: keep the priority on every line of a traceback
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def setup_logging(settings: LogSettings) -> None:
    """(Re)configure the root logger; called in the supervisor and in every child."""
    journal = settings.format == "journal" or (settings.format == "auto" and under_journal())
    handler = logging.StreamHandler(sys.stderr)
    if journal:
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(_ScrubFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level.upper())


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.addFilter(_ScrubFilter())
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def errors_logged() -> Iterator[list[str]]:
    """The messages logged at error or above inside the ``with`` block, scrubbed (the
    reasons a reload gives ``edged reload``)."""
    collector = _Collector()
    root = logging.getLogger()
    root.addHandler(collector)
    try:
        yield collector.messages
    finally:
        root.removeHandler(collector)
