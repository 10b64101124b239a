"""``edged install-systemd``: install the systemd units and a config, or remove them.

The units and the reference config ship inside the package (``edged/data/``,
links to ``systemd/`` and ``config/example.toml`` in a checkout, copies in a
wheel), so this works from any folder wherever edged was installed from. The
shipped units run ``/opt/edged/venv/bin/edged``; the installed copies run the
``edged`` of the interpreter doing the install (this checkout's or this
virtualenv's), so ``.venv/bin/edged install-systemd`` is all it takes. The
config is created from the reference config only when there is none (its
cameras commented out, a synthetic camera ``demo`` added, so that it runs as
is): an existing one is never overwritten, and ``--uninstall`` keeps it (and the
state and events) unless ``--purge`` is given. :func:`write_package_files` renders
the same files for the Debian package (scripts/build-deb).
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import edged
from edged.errors import EX_OK, EX_USAGE, EdgedError

__all__ = [
    "CONFIG_PATH",
    "UNIT_NAMES",
    "InstallError",
    "add_arguments",
    "edged_command",
    "main",
    "render_config",
    "render_unit",
    "run_install",
    "shipped",
    "write_package_files",
]

UNIT_NAMES = ("edged.service", "edged@.service")
EXAMPLE = "example.toml"  # the reference config, beside the units in edged/data/
SHIPPED_EXEC = "/opt/edged/venv/bin/edged"  # ExecStart= in systemd/, replaced on install
MARKER = "# Installed by `edged install-systemd`"
# The Debian package's units and conffile: no MARKER, so that `install-systemd
# --uninstall` never takes them for its own; no version, so that the conffile stays
# the same from one version to the next and dpkg keeps a user's edits without asking.
PACKAGED = "# Installed by the edged Debian package"
PACKAGE_EDGED = "/usr/bin/edged"
# What the units run and where DynamicUser= lets the service write.
CONFIG_PATH = "/etc/edged/edged.toml"
STATE_DIR = "/var/lib/edged"
EVENTS_PATH = "/var/log/edged/events.jsonl"
# ProtectHome=yes hides these from the service.
HIDDEN = ("/home", "/root", "/run/user")
# What --purge removes besides the units (DynamicUser keeps data under private/).
PURGED = (
    "etc/edged",
    "var/lib/edged",
    "var/lib/private/edged",
    "var/log/edged",
    "var/log/private/edged",
)


class InstallError(EdgedError):
    """The units cannot be installed as asked."""

    exit_code = EX_USAGE  # not a bug of edged's: where and how it was asked to install


def shipped(name: str) -> str:
    """The text of a file shipped inside the package, ``edged/data/NAME``: a unit
    (``edged@.service``, ``edged.service``) or the reference config (``example.toml``)."""
    resource = importlib.resources.files(edged) / "data" / name
    try:
        return resource.read_text(encoding="utf-8")
    except OSError as exc:
        raise InstallError(
            f"cannot read {resource}: {exc.strerror or exc}: this edged installation is "
            "incomplete, reinstall it"
        ) from None


def edged_command() -> list[str]:
    """How the service runs this edged: the ``edged`` script beside this
    interpreter (a virtualenv's bin/), else ``python -m edged``."""
    exe = Path(sys.executable)  # not resolved: a venv's python is a symlink out of it
    script = exe.parent / "edged"
    if os.access(script, os.X_OK):
        return [str(script)]
    return [str(exe), "-m", "edged"]


def _quote(arg: str) -> str:
    # Unit files expand %-specifiers and $VARIABLES in ExecStart=.
    arg = arg.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9/._+@:=,%$-]+", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(
    text: str, command: Sequence[str], source: str = "", head: Sequence[str] | None = None
) -> str:
    """A shipped unit with ExecStart= and ExecReload= running ``command``, marked as
    installed by us (or headed by ``head``)."""
    if SHIPPED_EXEC not in text:
        raise InstallError(f"{source or 'unit'}: no ExecStart={SHIPPED_EXEC} to replace")
    exec_ = " ".join(_quote(a) for a in command)
    lines = [
        line.replace(SHIPPED_EXEC, exec_, 1)
        if line.startswith(("ExecStart=", "ExecReload="))
        else line
        for line in text.splitlines()
    ]
    if head is None:
        head = [
            f"{MARKER} (edged {edged.__version__}) from {source or 'systemd/'}.",
            "# Reinstalling overwrites this file: change settings with `systemctl edit`.",
        ]
    return "\n".join([*head, *lines]) + "\n"


def _set_key(lines: list[str], section: str, key: str, value: str) -> None:
    """Set ``key = value`` in ``[section]`` of TOML ``lines``, keeping its comment."""
    current = ""
    header = None
    for i, line in enumerate(lines):
        m = re.match(r"\s*\[([^\[\]]+)\]\s*(#.*)?$", line)
        if m:
            current = m[1].strip()
            if current == section:
                header = i
            continue
        m = re.match(rf"(\s*{re.escape(key)}\s*=\s*)(\"[^\"]*\"|'[^']*'|[^#\s]+)(.*)$", line)
        if current == section and m:
            lines[i] = f"{m[1]}{value}{m[3]}"
            return
    if header is None:
        lines[:0] = [f"[{section}]", f"{key} = {value}", ""]
    else:
        lines.insert(header + 1, f"{key} = {value}")


def _comment_cameras(lines: list[str]) -> list[str]:
    """``lines`` with every setting from the first ``[cameras.NAME]`` table on commented
    out: the example's cameras need addresses and passwords this box does not have."""
    out: list[str] = []
    in_cameras = False
    for line in lines:
        if re.match(r"\s*\[cameras\.", line):
            in_cameras = True
        if in_cameras and line.strip() and not line.lstrip().startswith("#"):
            line = "# " + line
        out.append(line)
    return out


DEMO_CAMERA = [
    "",
    "# Installed so that the first start works on any box: a generated test pattern.",
    "# Add your cameras (the examples above), then `systemctl disable --now edged@demo`",
    "# and remove this table.",
    "[cameras.demo]",
    'source = "synthetic"',
    "width = 640",
    "height = 360",
    "fps = 15",
]


def render_config(example: str, origin: str | None = None) -> str:
    """``config/example.toml`` with the paths that a hardened unit can write to, its
    cameras commented out and a synthetic camera ``demo``: it passes check-config
    and runs as it is. ``origin`` is its first line (default: install-systemd's)."""
    lines = example.splitlines()
    _set_key(lines, "events", "path", f'"{EVENTS_PATH}"')
    _set_key(lines, "daemon", "state_dir", f'"{STATE_DIR}"')
    head = [
        origin or f"{MARKER} (edged {edged.__version__}) from config/example.toml.",
        "# Under systemd edged can write only to /var/lib/edged (state_dir) and",
        "# /var/log/edged (events). This file must stay readable by the service user:",
        "# give camera passwords with LoadCredential= (`systemctl edit edged@NAME`) and",
        "# password_credential, not in this file (edged.service, every camera in one",
        "# unit, needs every camera's). Check it: edged check-config " + CONFIG_PATH,
        "",
    ]
    return "\n".join(head + _comment_cameras(lines) + DEMO_CAMERA) + "\n"


def _unreadable(paths: Sequence[Path]) -> list[str]:
    """Why the service's transient user could not run these files, if it could not."""
    problems: list[str] = []
    for path in paths:
        for hidden in HIDDEN:
            if path == Path(hidden) or Path(hidden) in path.parents:
                problems.append(f"{path} is under {hidden}, which ProtectHome=yes hides")
        for part in [*reversed(path.parents), path]:
            try:
                mode = part.stat().st_mode
            except OSError as exc:
                problems.append(f"{part}: {exc.strerror}")
                break
            need = 0o005 if stat.S_ISDIR(mode) or part == path else 0o004
            if mode & need != need:
                problems.append(f"{part} is not readable by other users (mode {mode & 0o777:o})")
                break
    return problems


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)


def _systemd_running(prefix: Path) -> bool:
    return prefix == Path("/") and Path("/run/systemd/system").is_dir()


def _systemctl(out: TextIO, *args: str) -> None:
    cmd = ["systemctl", *args]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    print(
        f"ran {' '.join(cmd)}" + (f" (exit {result.returncode})" if result.returncode else ""),
        file=out,
    )
    if result.returncode and result.stderr.strip():
        print("  " + result.stderr.strip().replace("\n", "\n  "), file=out)


def _camera_names(config: Path) -> list[str]:
    try:
        data = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return []
    cameras = data.get("cameras")
    return list(cameras) if isinstance(cameras, dict) else []


def run_install(
    prefix: str | Path = "/",
    *,
    unit_dir: str | Path | None = None,
    command: Sequence[str] | None = None,
    dry_run: bool = False,
    uninstall: bool = False,
    purge: bool = False,
    reload: bool = True,
    out: TextIO | None = None,
) -> int:
    """Install (or with ``uninstall`` remove) the units under ``prefix``.

    Units go to ``unit_dir`` (default ``PREFIX/etc/systemd/system``), the
    config to ``PREFIX/etc/edged/edged.toml`` unless it exists.
    ``systemctl daemon-reload`` runs when ``reload`` and systemd manages
    ``prefix``. ``dry_run`` only prints what would be done.
    """
    out = sys.stdout if out is None else out
    root = Path(prefix)
    units = Path(unit_dir) if unit_dir is not None else root / "etc/systemd/system"
    if uninstall:
        return _uninstall(root, units, dry_run=dry_run, purge=purge, reload=reload, out=out)
    if purge:
        raise InstallError("--purge goes with --uninstall")
    cmd = list(command) if command is not None else edged_command()
    # The script's interpreter too: a venv made by a Python under /root (pyenv) links to it.
    runs = [Path(cmd[0]), Path(os.path.realpath(cmd[0]))]
    if command is None:
        runs.append(Path(os.path.realpath(sys.executable)))
    problems = _unreadable(runs)
    problems += _unreadable([Path(edged.__file__).parent])
    if problems:
        raise InstallError(
            "the service runs as a transient user (DynamicUser=yes) that could not run this "
            "edged:\n  "
            + "\n  ".join(dict.fromkeys(problems))
            + "\ninstall edged where every user can read it, e.g.:\n"
            "  python3 -m venv /opt/edged/venv && /opt/edged/venv/bin/pip install .\n"
            "  /opt/edged/venv/bin/edged install-systemd"
        )
    verb = "would write" if dry_run else "wrote"
    for name in UNIT_NAMES:
        text = render_unit(shipped(name), cmd, f"systemd/{name}")
        target = units / name
        if target.exists() and MARKER not in target.read_text(errors="replace"):
            raise InstallError(f"{target} exists and was not installed by edged: remove it first")
        if not dry_run:
            _write(target, text, 0o644)
        print(f"{verb} {target} (ExecStart: {' '.join(cmd)})", file=out)
    config = root / CONFIG_PATH.lstrip("/")
    if config.exists():
        print(f"kept {config} (it exists; never overwritten)", file=out)
    else:
        text = render_config(shipped(EXAMPLE))
        if not dry_run:
            _write(config, text, 0o644)
        done = "would create" if dry_run else "created"
        print(f"{done} {config} from the reference config/example.toml", file=out)
    if dry_run:
        pass
    elif reload and _systemd_running(root):
        _systemctl(out, "daemon-reload")
    else:
        print("skipped systemctl daemon-reload: run it before starting the units", file=out)
    cam = (_camera_names(config) or ["NAME"])[0]
    print(
        "\nnext:\n"
        f"  edit {CONFIG_PATH}, then: {' '.join(cmd)} check-config {CONFIG_PATH}\n"
        f"  systemctl enable --now edged@{cam}   # one unit per camera, or\n"
        "  systemctl enable --now edged   # every camera in one unit\n"
        f"  systemctl status edged@{cam}; journalctl -u edged@{cam} -f",
        file=out,
    )
    return EX_OK


def write_package_files(root: Path, command: Sequence[str] = (PACKAGE_EDGED,)) -> list[Path]:
    """The Debian package's units (``ROOT/lib/systemd/system``, running ``command``) and
    its conffile ``ROOT/etc/edged/edged.toml`` (the installed demo config); the paths
    written. The same renderers as install-systemd, without its marker or version."""
    head = [
        f"{PACKAGED}: upgrades replace this file.",
        "# Change settings with `systemctl edit`, which keeps them in a drop-in.",
    ]
    written = []
    for name in UNIT_NAMES:
        path = root / "lib/systemd/system" / name
        _write(path, render_unit(shipped(name), command, head=head), 0o644)
        written.append(path)
    origin = f"{PACKAGED}: a conffile, your edits are kept on upgrade."
    config = root / CONFIG_PATH.lstrip("/")
    _write(config, render_config(shipped(EXAMPLE), origin), 0o644)
    return [*written, config]


def _uninstall(
    root: Path, units: Path, *, dry_run: bool, purge: bool, reload: bool, out: TextIO
) -> int:
    verb = "would remove" if dry_run else "removed"
    systemd = reload and _systemd_running(root)
    if systemd and not dry_run:
        _systemctl(out, "stop", "edged.service", "edged@*.service")
    ours = []
    for name in UNIT_NAMES:
        target = units / name
        if not target.exists():
            continue
        if MARKER not in target.read_text(errors="replace"):
            print(f"left {target}: not installed by edged install-systemd", file=out)
            continue
        ours.append(name)
    # `systemctl enable` links: multi-user.target.wants/edged@cam1.service -> edged@.service
    for link in sorted(units.glob("*.wants/edged*.service")) + sorted(
        units.glob("*.requires/edged*.service")
    ):
        if link.is_symlink() and Path(os.readlink(link)).name in ours:
            if not dry_run:
                link.unlink()
            print(f"{verb} {link} (enabled)", file=out)
    for name in ours:
        if not dry_run:
            (units / name).unlink()
        print(f"{verb} {units / name}", file=out)
    # `systemctl edit edged@NAME` drop-ins (LoadCredential=, limits): the user's own
    # settings, so removed only with --purge, and said either way.
    dropins = sorted(p for p in units.glob("edged*.service.d") if p.is_dir())
    if purge:
        for path in dropins:
            if not dry_run:
                shutil.rmtree(path)
            print(f"{verb} {path} (drop-ins)", file=out)
    elif dropins:
        shown = ", ".join(str(p) for p in dropins)
        print(f"kept the drop-ins {shown} (--purge removes them)", file=out)
    if purge:
        for rel in PURGED:
            path = root / rel
            if path.is_symlink() or path.is_file():
                if not dry_run:
                    path.unlink()
            elif path.is_dir():
                if not dry_run:
                    shutil.rmtree(path)
            else:
                continue
            print(f"{verb} {path}", file=out)
    else:
        print(
            f"kept {root / CONFIG_PATH.lstrip('/')}, {STATE_DIR} and /var/log/edged "
            "(--purge removes them)",
            file=out,
        )
    if systemd and not dry_run:
        _systemctl(out, "daemon-reload")
    return EX_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``install-systemd`` subcommand's options."""
    parser.add_argument(
        "--prefix", default="/", help="install under this root (packaging; default: %(default)s)"
    )
    parser.add_argument(
        "--unit-dir", help="folder for the unit files (default: PREFIX/etc/systemd/system)"
    )
    parser.add_argument("--dry-run", "-n", action="store_true", help="only say what would be done")
    parser.add_argument(
        "--uninstall", action="store_true", help="stop and remove the units (keeps the config)"
    )
    parser.add_argument(
        "--purge",
        action="store_true",
        help="with --uninstall: also remove /etc/edged, /var/lib/edged, /var/log/edged "
        "and the units' drop-ins (systemctl edit)",
    )
    parser.add_argument(
        "--no-reload", dest="reload", action="store_false", help="skip systemctl daemon-reload"
    )


def main(args: argparse.Namespace) -> int:
    """Run ``edged install-systemd`` with parsed :func:`add_arguments` options."""
    return run_install(
        args.prefix,
        unit_dir=args.unit_dir,
        dry_run=args.dry_run,
        uninstall=args.uninstall,
        purge=args.purge,
        reload=args.reload,
    )
