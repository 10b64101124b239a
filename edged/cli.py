"""The ``edged`` command: run, check-config, events."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edged import __version__, install
from edged.errors import EX_CONFIG, EX_OK, EX_SOFTWARE, ConfigError, EdgedError

if TYPE_CHECKING:
    from edged.config import Config

log = logging.getLogger("edged")

DEFAULT_CONFIG = os.environ.get("EDGED_CONFIG", "/etc/edged/edged.toml")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edged",
        description="Edge daemon for cameras: slow algorithms always see the newest frame.",
    )
    p.add_argument("--version", action="version", version=f"edged {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument(
        "--config", "-c", default=DEFAULT_CONFIG, help="TOML config (default: %(default)s)"
    )
    run.add_argument(
        "--camera",
        action="append",
        metavar="NAME",
        help="run only this camera (repeatable; default: all)",
    )

    check = sub.add_parser("check-config", help="validate a config file; exit 78 if invalid")
    check.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    check.add_argument(
        "--camera",
        action="append",
        metavar="NAME",
        help="read the secrets of this camera only, as `edged run --camera` does "
        "(repeatable; default: every camera's)",
    )

    events = sub.add_parser("events", help="print events from the event file")
    events.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    events.add_argument("--file", type=Path, help="event file (default: [events] path)")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    events.add_argument("--camera", help="only this camera")
    events.add_argument("--type", dest="type_", metavar="TYPE", help="only this type or prefix")
    events.add_argument("--json", action="store_true", help="raw JSON lines")

    status = sub.add_parser(
        "status", help="a running daemon's cameras; exit 0 healthy, 1 unhealthy, 2 unreachable"
    )
    status.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    status.add_argument("--url", help="the daemon's metrics URL (default: from the config)")
    status.add_argument("--camera", help="the edged@NAME daemon of this camera, only this camera")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    reload = sub.add_parser(
        "reload",
        help="reload a running daemon's config and wait for its verdict; exit 78 if rejected",
    )
    reload.add_argument("--pid", type=int, required=True, help="the daemon (systemd: $MAINPID)")
    reload.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    reload.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait (default: %(default)s)"
    )
    install.add_arguments(
        sub.add_parser("install-systemd", help="install the systemd units and a config")
    )
    return p


def _load(  # type: ignore[no-untyped-def]
    path: str, credentials_optional: bool = False, cameras: list[str] | None = None
):
    from edged.config import load_config

    return load_config(path, credentials_optional, cameras)


# What stops (SIGTERM, SIGINT) or reloads (SIGHUP) the daemon: the signals
# Supervisor._install_signals handles (imported from there, it would load it all).
_DAEMON_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _hold_signals() -> list[int]:
    """Catch the daemon's signals from the first moment of ``edged run``, into the
    list returned, for the supervisor to handle once its own handlers exist: the
    imports and the config before that take about a second, and SIGHUP's default
    action would kill the daemon meanwhile. (Caught, not blocked: a blocked mask
    would be inherited by every child, while a handler is reset by exec.)"""
    held: list[int] = []

    def hold(signum: int, frame: object) -> None:
        held.append(signum)

    for sig in _DAEMON_SIGNALS:
        signal.signal(sig, hold)
    return held


def cmd_run(args: argparse.Namespace) -> int:
    held = _hold_signals()  # first: before anything slow
    from edged.logs import LogSettings, setup_logging
    from edged.supervisor import Supervisor

    setup_logging(LogSettings())
    # A reload asked for before the config is read is what reading it does.
    held[:] = [sig for sig in held if sig != signal.SIGHUP]
    # Only the cameras run need their secrets: edged@cam2 has no LoadCredential= of cam1's.
    config = _load(args.config, cameras=args.camera)
    setup_logging(LogSettings(config.logging.level, config.logging.format))
    stop = next((sig for sig in held if sig != signal.SIGHUP), None)
    if stop is not None:
        log.info("received %s while starting: stopping", signal.Signals(stop).name)
        return EX_OK
    cameras = args.camera or None
    if cameras:
        unknown = [c for c in cameras if c not in config.cameras]
        if unknown:
            known = ", ".join(config.cameras)
            raise ConfigError(
                args.config,
                [f"--camera {c}: no such camera (configured: {known})" for c in unknown],
            )
    return Supervisor(config, cameras).run(held)


def cmd_check_config(args: argparse.Namespace) -> int:
    from edged.redact import scrub

    # Run in a shell, where $CREDENTIALS_DIRECTORY is unset although the unit sets it.
    config = _load(args.config, credentials_optional=True, cameras=args.camera)
    lines = [f"{args.config}: OK, {len(config.cameras)} camera(s)"]
    for cam in config.cameras.values():
        grey = ", grey frames" if cam.frame_format == "gray" else ""
        lines.append(f"  {cam.name}: {cam.display_source} -> {cam.processor.type}{grey}")
    lines += _shared_report(config, args.config)
    for key in config.unread_credentials():
        section, _, rest = key.partition(".")
        camera = rest.partition(".")[0] if section == "cameras" else None
        if args.camera and camera is not None and camera not in args.camera:
            continue  # not read, as `edged run --camera` does not read it
        owner = config.cameras[camera] if camera is not None else config.mqtt
        units = f"edged@{camera} and edged.service need" if camera else "every edged unit needs"
        lines.append(
            f"  note: {key}: not checked: $CREDENTIALS_DIRECTORY is not set "
            f"(systemd's LoadCredential= sets it for the unit): {units} "
            f"LoadCredential={owner.password_credential}:FILE"
        )
    print("\n".join(scrub(line) for line in lines))
    sys.stdout.flush()  # a closed pipe raises here, where main() handles it
    return EX_OK


def _shared_report(config: Config, path: str) -> list[str]:
    """A line per [processors] table: its cameras, or a warning that none uses it."""
    from edged.config.load import read_config_text
    from edged.config.report import key_lines

    lines = []
    for name, table in config.processors.items():
        cams = [c.name for c in config.cameras.values() if c.shared_processor == name]
        if not cams:
            line = key_lines(read_config_text(path)).get(("processors", name))
            where = f"{path}:{line}" if line else path
            lines.append(f"  warning: {where}: processors.{name}: no camera uses it")
            continue
        n = min(table.instances, len(cams))
        lines.append(
            f"  processor {name} ({table.type}, {n} instance{'s' if n > 1 else ''}, "
            f"batch {table.batch_size}): {', '.join(cams)}"
        )
    return lines


def cmd_events(args: argparse.Namespace) -> int:
    from edged.eventlog import run_events_command

    path = args.file
    if path is None:
        path = _load(args.config, credentials_optional=True).events.path
    return run_events_command(
        path, follow=args.follow, camera=args.camera, type_=args.type_, as_json=args.json
    )


def cmd_status(args: argparse.Namespace) -> int:
    from edged.status import run_status_all, run_status_command, status_targets, status_url

    if args.url is None and args.camera is None:
        # Cameras with their own metrics_listen run as edged@NAME units: ask each.
        urls, cameras = status_targets(args.config)
        if len(urls) > 1:
            return run_status_all(urls, cameras, args.json)
    url = args.url or status_url(args.config, args.camera)
    return run_status_command(url, args.json, camera=args.camera)


def cmd_reload(args: argparse.Namespace) -> int:
    from edged.reload import run_reload_command

    return run_reload_command(args.pid, args.config, args.timeout)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {
        "run": cmd_run,
        "check-config": cmd_check_config,
        "events": cmd_events,
        "status": cmd_status,
        "reload": cmd_reload,
        "install-systemd": install.main,
    }
    from edged.logs import print_error

    try:
        return handler[args.command](args)
    except ConfigError as exc:
        print_error(str(exc))
        return EX_CONFIG
    except EdgedError as exc:
        print_error(f"edged: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `edged check-config | head -1`: the reader is gone, so say nothing, as cat
        # does. Pointing stdout at /dev/null keeps Python's flush at exit quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception:
        if not logging.getLogger().handlers:
            # check-config and the other short commands set up no logging: without
            # this, Python's last-resort handler would print it without a priority.
            from edged.logs import LogSettings, setup_logging

            setup_logging(LogSettings())
        log.critical("edged: internal error", exc_info=True)
        return EX_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())
