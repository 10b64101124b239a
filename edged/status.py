"""``edged status``: a running daemon's cameras, read from its metrics endpoint.

It fetches ``/readyz`` (state, reason, last error per camera) and
``/metrics`` (fps, frame-age histogram, counters), prints one row per camera
or ``--json``, and exits 0 when every camera is healthy, 1 when one is not,
2 when the daemon cannot be reached. Frame-age percentiles are estimated
from the histogram buckets as PromQL's ``histogram_quantile`` does, over the
daemon's whole run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import urllib.error
import urllib.request
from collections import defaultdict
from typing import Any, TextIO

from prometheus_client.parser import text_string_to_metric_families

from edged.config import MetricsConfig, parse_toml, read_config_text
from edged.config.listen import check_listen
from edged.errors import ConfigError
from edged.metrics import url_for

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1
EXIT_UNREACHABLE = 2
TIMEOUT = 5.0


class _Unreachable(Exception):
    pass


def status_url(path: str | os.PathLike[str], camera: str | None = None) -> str:
    """The URL of the daemon ``edged run --config PATH [--camera CAMERA]`` serves.

    Read from the TOML alone, by the rule of :func:`edged.metrics.listen_address`:
    no processor is imported and no password file or credential is read, so it
    works outside the daemon's environment (a shell without
    ``$CREDENTIALS_DIRECTORY``, say). Raises :class:`ConfigError`."""
    name = os.fspath(path)
    # The same bounded reader as the daemon's: a FIFO, /dev/zero or a deep table
    # is an error line, not a hang or a traceback.
    data = parse_toml(read_config_text(name), name)
    metrics = data.get("metrics", {})
    cameras = data.get("cameras", {})
    if not isinstance(metrics, dict) or not isinstance(cameras, dict):
        raise ConfigError(name, [f"{name}: [metrics] and [cameras] must be tables"])
    if camera is not None and camera not in cameras:
        known = ", ".join(cameras)
        raise ConfigError(name, [f"--camera {camera}: no such camera (configured: {known})"])
    if metrics.get("enabled") is False:
        raise ConfigError(name, [f"{name}: metrics.enabled: false: the daemon serves no status"])
    key, listen = "metrics.listen", metrics.get("listen", MetricsConfig().listen)
    names = [camera] if camera is not None else list(cameras)
    if len(names) == 1 and isinstance(cameras[names[0]], dict):
        own = cameras[names[0]].get("metrics_listen")
        if own is not None:
            key, listen = f"cameras.{names[0]}.metrics_listen", own
    try:
        return url_for(check_listen(str(listen)))
    except ValueError as exc:
        raise ConfigError(name, [f"{name}: {key}: {exc}"]) from None


def status_targets(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """Every URL a daemon of this config may serve, each once: [metrics] listen
    (edged.service, or edged@NAME of a camera without its own address) and each
    camera's ``metrics_listen`` (edged@NAME); and the configured cameras."""
    cameras = parse_toml(read_config_text(path), os.fspath(path)).get("cameras", {})
    names = list(cameras) if isinstance(cameras, dict) else []
    urls = [status_url(path)] + [status_url(path, name) for name in names]
    return list(dict.fromkeys(urls)), names


def _fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        # /readyz answers 503 with its JSON body when a camera is unhealthy.
        with exc:
            return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Unreachable(str(getattr(reason, "strerror", None) or reason)) from None
    except ValueError as exc:  # not a URL at all: --url garbage
        raise _Unreachable(f"not an http:// URL ({exc})") from None


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile from cumulative ``(upper bound, count)`` buckets, interpolated
    linearly inside a bucket as ``histogram_quantile`` does; None without observations."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower  # beyond the largest finite bucket: its bound is all we know
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def _parse_metrics(text: str) -> dict[str, dict[str, Any]]:
    """Per camera: the numbers the table shows."""
    cams: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(float))
    ages: dict[str, list[tuple[float, float]]] = defaultdict(list)
    simple = {
        "edged_camera_fps": "fps",
        "edged_frames_decoded_total": "decoded",
        "edged_frames_processed_total": "processed",
        "edged_frames_skipped_total": "skipped",
        "edged_events_total": "events",
        "edged_child_restarts_total": "restarts",
        "edged_camera_reconnects_total": "reconnects",
        "edged_processor_exceptions_total": "processor_errors",
        "edged_mqtt_topic_collision": "topic_collision",
    }
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            camera = sample.labels.get("camera")
            if camera is None:
                continue
            if sample.name in simple:
                cams[camera][simple[sample.name]] += sample.value
            elif sample.name == "edged_frame_age_seconds_bucket":
                ages[camera].append((float(sample.labels["le"]), sample.value))
    out: dict[str, dict[str, Any]] = {}
    for camera, values in cams.items():
        seen = values["processed"] + values["skipped"]
        out[camera] = {
            "fps": values["fps"],
            "frame_age_p50_s": quantile(0.5, ages[camera]),
            "frame_age_p95_s": quantile(0.95, ages[camera]),
            "frames_decoded": int(values["decoded"]),
            "frames_processed": int(values["processed"]),
            "frames_skipped": int(values["skipped"]),
            "skipped_ratio": values["skipped"] / seen if seen else 0.0,
            "events": int(values["events"]),
            "restarts": int(values["restarts"]),
            "reconnects": int(values["reconnects"]),
            "processor_errors": int(values["processor_errors"]),
            "topic_collision": bool(values["topic_collision"]),
        }
    return out


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f}ms" if seconds < 10 else f"{seconds:.0f}s"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def collect_status(url: str, camera: str | None = None) -> dict[str, Any]:
    """``{"url", "ready", "alive", "cameras": {name: {...}}}`` from the daemon at ``url``.

    Raises ``_Unreachable`` when it cannot be reached or does not answer like edged."""
    base = url.rstrip("/")
    code, body = _fetch(base + "/readyz")
    try:
        ready = json.loads(body)
        cameras_ready = ready["cameras"]
    except (ValueError, KeyError, TypeError):
        raise _Unreachable(f"/readyz answered HTTP {code} without edged's JSON") from None
    code, body = _fetch(base + "/metrics")
    if code != 200:
        raise _Unreachable(f"/metrics answered HTTP {code}")
    try:
        numbers = _parse_metrics(body.decode("utf-8", "replace"))
    except ValueError as exc:
        raise _Unreachable(f"/metrics is not a Prometheus exposition: {exc}") from None
    cameras: dict[str, Any] = {}
    for name, info in sorted(cameras_ready.items()):
        if camera is not None and name != camera:
            continue
        cameras[name] = {**info, **numbers.get(name, {})}
    # Another box on our topics loses data silently for both: not healthy.
    healthy = (
        bool(ready.get("alive", True))
        and bool(cameras)
        and all(c.get("ready") and not c.get("topic_collision") for c in cameras.values())
    )
    if camera is not None and camera not in cameras:
        healthy = False
    return {"url": base, "ready": healthy, "alive": ready.get("alive", True), "cameras": cameras}


def run_status_command(
    url: str, as_json: bool, out: TextIO | None = None, camera: str | None = None
) -> int:
    """Print a running daemon's per-camera status; 0 healthy, 1 unhealthy, 2 unreachable."""
    out = out or sys.stdout
    try:
        status = collect_status(url, camera)
    except _Unreachable as exc:
        print(f"edged status: cannot reach edged at {url}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if as_json:
        print(json.dumps(status, indent=2), file=out)
    else:
        _print_status(status, out, camera)
    return EXIT_HEALTHY if status["ready"] else EXIT_UNHEALTHY


def run_status_all(
    urls: list[str], cameras: list[str], as_json: bool, out: TextIO | None = None
) -> int:
    """``edged status`` of a config whose cameras have their own addresses (edged@NAME
    units): every daemon reached, and the configured cameras none of them serves.
    0 all served and healthy, 1 otherwise, 2 when no daemon can be reached."""
    out = out or sys.stdout
    found: list[dict[str, Any]] = []
    unreachable: dict[str, str] = {}
    for url in urls:
        try:
            found.append(collect_status(url))
        except _Unreachable as exc:
            unreachable[url] = str(exc)
    served = {name for status in found for name in status["cameras"]}
    missing = [name for name in cameras if name not in served]
    if not found:
        for url, reason in unreachable.items():
            print(f"edged status: cannot reach edged at {url}: {reason}", file=sys.stderr)
        return EXIT_UNREACHABLE
    ready = not missing and all(status["ready"] for status in found)
    if as_json:
        summary = {"ready": ready, "daemons": found, "missing": missing, "unreachable": unreachable}
        print(json.dumps(summary, indent=2), file=out)
    else:
        for status in found:
            _print_status(status, out)
        for name in missing:
            print(f"camera {name}: not served by any edged reached", file=out)
        # An address nobody serves is normal (edged.service stopped while the
        # edged@ units run): worth a line only when a camera is missing.
        for url, reason in unreachable.items() if missing else ():
            print(f"  (no edged at {url}: {reason})", file=out)
    return EXIT_HEALTHY if ready else EXIT_UNHEALTHY


def _print_status(status: dict[str, Any], out: TextIO, camera: str | None = None) -> None:
    verdict = "healthy" if status["ready"] else "UNHEALTHY"
    loop = "" if status["alive"] else " (supervisor loop not ticking)"
    print(f"edged at {status['url']}: {verdict}{loop}", file=out)
    rows = [
        [
            "CAMERA",
            "STATE",
            "FPS",
            "AGE p50",
            "AGE p95",
            "SKIPPED",
            "EVENTS",
            "RESTARTS",
            "LAST ERROR",
        ]
    ]
    for name, c in status["cameras"].items():
        state = c.get("state", "?")
        if c.get("reason") and not c.get("ready"):
            state += f" ({c['reason']})"
        if c.get("topic_collision"):
            state += " (MQTT topics shared with another box: see the log)"
        rows.append(
            [
                name,
                state,
                f"{c.get('fps', 0.0):.1f}",
                _ms(c.get("frame_age_p50_s")),
                _ms(c.get("frame_age_p95_s")),
                f"{100 * c.get('skipped_ratio', 0.0):.1f}%",
                str(c.get("events", 0)),
                str(c.get("restarts", 0)),
                c.get("last_error") or "-",
            ]
        )
    if camera is not None and camera not in status["cameras"]:
        rows.append([camera, "not served here", "", "", "", "", "", "", "-"])
    print(_table(rows), file=out)
