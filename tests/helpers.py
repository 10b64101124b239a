"""The helpers every kind of test shares: one poll with a deadline, one config builder.

It imports nothing of the tests' own, so test files, ``daemon.py`` and the
component starters in ``components/`` all import it without a cycle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    what: str | Callable[[], str],
    predicate: Callable[[], T],
    timeout: float = 10.0,
    every: float = 0.05,
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Fails after ``timeout`` seconds naming ``what``; a callable ``what`` is called
    then, so the failure can say what was seen instead.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            said = what if isinstance(what, str) else what()
            raise AssertionError(f"timed out after {timeout}s waiting for {said}")
        time.sleep(every)


# The daemon's defaults, written out: a test's state stays in its folder, and a
# test that stops a daemon knows how long a stop may take.
DAEMON = 'state_dir = "state"\nstop_timeout = "5s"'


def daemon_toml(
    cameras: Mapping[str, str],
    *,
    processors: Mapping[str, str] | None = None,
    metrics: int | str | None = None,
    daemon: str = DAEMON,
    events: str = 'path = "events.jsonl"',
    sections: str = "",
) -> str:
    """A config for ``edged run`` whose relative paths land in the config's folder.

    ``cameras``: name -> the body of ``[cameras.NAME]``; ``processors``: name -> the
    body of its ``[cameras.NAME.processor]``; ``metrics``: a port to listen on at
    127.0.0.1, or the body of ``[metrics]`` (none: ``daemon.Daemon`` has it listen on
    a free port); ``daemon``, ``events``: the bodies of those tables; ``sections``:
    more tables (``[mqtt]`` ...) as TOML text. The text ends in the last camera's
    table (or its processor's): a test may append keys to it.
    """
    out = [f"[events]\n{events}", f"[daemon]\n{daemon}"]
    if metrics is not None:
        body = f'listen = "127.0.0.1:{metrics}"' if isinstance(metrics, int) else metrics
        out.append(f"[metrics]\n{body}")
    if sections:
        out.append(sections)
    for name, body in cameras.items():
        out.append(f"[cameras.{name}]\n{body}")
        if processors and name in processors:
            out.append(f"[cameras.{name}.processor]\n{processors[name]}")
    return "\n".join(out) + "\n"
