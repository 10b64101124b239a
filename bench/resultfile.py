"""The one shape of a benchmark's JSON result file: ``<results>/<UTC start>Z-<kind>.json``.

Every bench command writes its run there (``started_utc`` first, then what the
bench chose to keep) and draws its PNGs beside it, with the same stem.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's settings, as JSON can hold them."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def write_results(results: Path, started: dt.datetime, kind: str, data: dict[str, Any]) -> Path:
    """Write ``data`` (with ``started_utc`` first) and return the file's path."""
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{started:%Y-%m-%d-%H%M}Z-{kind}.json"
    path.write_text(json.dumps({"started_utc": started.isoformat(), **data}, indent=1))
    return path
