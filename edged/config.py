"""The configuration: one TOML file, validated with pydantic into a :class:`Config`.

:func:`load_config` reads and checks the file and raises :class:`ConfigError`
listing every mistake at once, each with the file, line, dotted key path and
reason, never the value (it may be a secret)::

    edged.toml:12: cameras.cam1.processor.min_area: Input should be greater than 0
    edged.toml:14: cameras.cam1.stale_afer: unknown key (did you mean 'stale_after'?)

Each ``[cameras.NAME]`` table inherits ``[defaults]`` key by key (a
``processor`` table is replaced as a whole). Relative paths are resolved
against the folder of the config file. Passwords are held as ``SecretStr``
(a password written in a source URL is moved there), so ``repr()``, ``str()``
and ``model_dump_json()`` never show one. The validated object is picklable
and is what the supervisor hands to its children.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self
from urllib.parse import quote, unquote, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.functional_validators import ModelWrapValidatorHandler
from pydantic_core import InitErrorDetails, PydanticCustomError

from edged.config_report import key_lines, problems, syntax_problem
from edged.errors import ConfigError, PluginError
from edged.plugin import error_text
from edged.processor import PixelFormat, resolve_processor
from edged.redact import redact_url, scrub
from edged.source import resolve_source
from edged.units import ByteSize, Duration, parse_byte_size, parse_duration

__all__ = [
    "ByteSize",
    "CameraConfig",
    "CameraDefaults",
    "Config",
    "DaemonConfig",
    "Duration",
    "EventsConfig",
    "LoggingConfig",
    "MetricsConfig",
    "MqttConfig",
    "ProcessorConfig",
    "SnapshotsConfig",
    "SourceKind",
    "camera_from_dict",
    "load_config",
    "parse_byte_size",
    "parse_config",
    "parse_duration",
    "redact_url",
    "scrub",
]

SourceKind = Literal["synthetic", "rtsp", "url", "v4l2", "plugin", "file"]


def _scalar_to_str(value: Any) -> Any:
    # FFmpeg options are strings, but `stimeout = 5000000` in TOML is an int.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _split_userinfo(url: str) -> tuple[str | None, str | None, str]:
    """(user, password, url without them), percent-decoded, splitting as urlsplit does."""
    scheme, sep, rest = url.partition("://")
    end = len(rest)
    for stop in "/?#":
        if stop in rest:
            end = min(end, rest.index(stop))
    userinfo, at, hostport = rest[:end].rpartition("@")
    if not sep or not at:
        return None, None, url
    user, colon, password = userinfo.partition(":")
    return unquote(user), unquote(password) if colon else None, f"{scheme}://{hostport}{rest[end:]}"


# --- helpers for validators ------------------------------------------------------


def _context(info: ValidationInfo) -> dict[str, Any]:
    return info.context if isinstance(info.context, dict) else {}


# What a config may hold, bounded so that no value reaches the OS or a log unchecked.
MAX_CONFIG_BYTES = 1024**2  # a real config is a few KiB
MAX_SECRET_BYTES = 64 * 1024  # a password file: its first line is used
MAX_DEPTH = 32  # tables and arrays within each other; the reference config uses 4
MAX_KEY_CHARS = 128
MAX_STRING_CHARS = 64 * 1024  # below Linux's 128 KiB for one environment string
MAX_PATH_BYTES = 4095  # PATH_MAX, less its NUL
MAX_NAME_BYTES = 255  # NAME_MAX: one path component
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_path(path: Path) -> Path:
    """``path``, if the OS can take it; errors never show it (it may be 100k long)."""
    text = str(path)
    if _CONTROL.search(text):
        raise ValueError("a path must not contain control characters (a NUL byte, a newline)")
    raw = os.fsencode(text)
    if len(raw) > MAX_PATH_BYTES:
        raise ValueError(f"path too long: {len(raw)} bytes, at most {MAX_PATH_BYTES}")
    longest = max((len(part) for part in raw.split(b"/")), default=0)
    if longest > MAX_NAME_BYTES:
        raise ValueError(
            f"a path component is {longest} bytes long; a file or folder name has at most "
            f"{MAX_NAME_BYTES}"
        )
    return path


def _resolve(path: Path, info: ValidationInfo) -> Path:
    """``path`` made absolute against the config file's folder, checked by _check_path."""
    base = _context(info).get("base_dir")
    if base is not None and not path.is_absolute():
        path = Path(os.path.normpath(Path(base) / path))
    return _check_path(path)


def _check_file(path: Path) -> None:
    """Raise ValueError unless ``path`` is a regular file this process can see."""
    try:
        if path.is_file():
            return
        problem = "not a file" if path.exists() else "file not found"
    except OSError as exc:  # a folder on the way this user cannot enter, say
        problem = f"cannot access ({exc.strerror or exc})"
    raise ValueError(f"{problem}: {path}")


def _check_folder(folder: Path) -> None:
    """Raise ValueError unless ``folder`` is a folder this process can write in, or one
    it could create (as ``mkdir -p`` would), so a config check fails where ``run`` would."""
    probe, missing = folder, None
    try:
        while not probe.exists():
            probe, missing = probe.parent, probe
        if not probe.is_dir():
            raise ValueError(f"not a folder: {probe}")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise ValueError(f"cannot write in {probe}: permission denied")
        if missing is not None:
            # access() says yes to root everywhere (/proc/1, say): only trying tells.
            try:
                os.mkdir(missing, 0o700)
            except FileExistsError:
                return  # made meanwhile (by a starting daemon)
            with contextlib.suppress(OSError):  # someone uses it already
                os.rmdir(missing)
    except OSError as exc:
        raise ValueError(f"cannot create folder {folder}: {exc.strerror or exc}") from None


def read_bounded(path: str | os.PathLike[str], limit: int) -> bytes:
    """The content of the regular file at ``path``, if at most ``limit`` bytes.

    Raises ValueError with the reason alone (the caller names the file): not
    found, not readable, not a regular file (a FIFO or /dev/zero would hang or
    never end), or too large."""
    try:
        # O_NONBLOCK: opening a FIFO waits for a writer without it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ValueError("file not found") from None
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ValueError("a folder, not a file")
        if not stat.S_ISREG(mode):
            raise ValueError("not a regular file")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, min(1024**2, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise ValueError(f"larger than {limit} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _invalid(
    problems: Sequence[tuple[str | tuple[str | int, ...], str]], title: str, data: Any = None
) -> ValidationError:
    """A ValidationError with one custom error per (key or key path, message); pydantic
    merges it into the enclosing model's errors with the key path prefixed."""
    details = [
        InitErrorDetails(
            type=PydanticCustomError("edged", message),
            loc=key if isinstance(key, tuple) else (key,),
            input=data,
        )
        for key, message in problems
    ]
    return ValidationError.from_exception_data(title, details)


def _did_you_mean(key: str, known: Iterable[str]) -> str:
    hint = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def _explain_unknown(
    exc: ValidationError, known: Iterable[str], hints: dict[str, str], title: str
) -> ValidationError | None:
    """``exc`` with its top-level unknown-key errors given a did-you-mean, or None if
    there are none. Every error is rebuilt as a custom one keeping its message."""
    errors = exc.errors()
    if not any(e["type"] == "extra_forbidden" and len(e["loc"]) == 1 for e in errors):
        return None
    known = list(known)
    details = []
    for err in errors:
        kind, msg = err["type"], err["msg"]
        if kind == "extra_forbidden" and len(err["loc"]) == 1:
            key = str(err["loc"][0])
            # A new type, so enclosing models leave the message alone.
            kind, msg = "unknown_key", hints.get(key) or f"unknown key{_did_you_mean(key, known)}"
        details.append(
            InitErrorDetails(
                type=PydanticCustomError(kind, msg), loc=err["loc"], input=err["input"]
            )
        )
    return ValidationError.from_exception_data(title, details)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    _key_hints: ClassVar[dict[str, str]] = {}
    """Messages for keys that are not allowed here, instead of a did-you-mean."""

    @model_validator(mode="wrap")
    @classmethod
    def _unknown_keys(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        try:
            return handler(data)
        except ValidationError as exc:
            better = _explain_unknown(exc, cls.model_fields, cls._key_hints, cls.__name__)
            if better is None:
                raise
            raise better from None


# --- sections ----------------------------------------------------------------------


class EventsConfig(_Model):
    """``[events]``: the JSONL event log."""

    path: Path = Field(
        Path("events/events.jsonl"),
        validate_default=True,
        description="JSONL file events are appended to (relative to the config file's folder).",
    )
    max_bytes: ByteSize = Field(
        10 * 1024**2, ge=4096, description="Size at which the file is rotated ('10MiB', '512k')."
    )
    backups: int = Field(5, ge=0, le=1000, description="Rotated files kept (events.jsonl.1 ...).")
    fsync: Literal["always", "interval", "never"] = Field(
        "interval", description="When events are fsync'ed: after each, every interval, or never."
    )
    fsync_interval: Duration = Field(
        1.0, ge=0.01, le=3600, description="Time between fsyncs when fsync = 'interval'."
    )
    max_pending_bytes: ByteSize = Field(
        16 * 1024**2,
        ge=1024**2,
        le=1024**3,
        description="Events held in memory while the file cannot be written, at most "
        "('16MiB'); past it the oldest are dropped and counted.",
    )

    @field_validator("path")
    @classmethod
    def _resolve_path(cls, value: Path, info: ValidationInfo) -> Path:
        value = _resolve(value, info)
        _check_folder(value.parent)
        return value


def _split_listen(listen: str) -> tuple[str, int]:
    if listen.startswith("["):
        host, sep, port = listen[1:].partition("]:")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("invalid IPv6 address in brackets") from None
    else:
        host, sep, port = listen.rpartition(":")
        if ":" in host:
            raise ValueError("write an IPv6 address in brackets: '[::1]:9850'")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError("expected 'host:port' with a port 0-65535, e.g. '127.0.0.1:9850'")
    return host, int(port)


def _check_listen(value: str) -> str:
    _split_listen(value)
    return value


class MetricsConfig(_Model):
    """``[metrics]``: the Prometheus metrics and health HTTP endpoint."""

    enabled: bool = Field(True, description="Serve /metrics, /healthz and /readyz over HTTP.")
    listen: Annotated[str, AfterValidator(_check_listen)] = Field(
        "127.0.0.1:9850", description="'host:port' to listen on; '[::1]:9850' for IPv6."
    )

    @property
    def host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_listen(self.listen)[1]


class LoggingConfig(_Model):
    """``[logging]``."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Least severe level logged."
    )
    format: Literal["auto", "human", "journal"] = Field(
        "auto",
        description="'journal': syslog priority prefixes, no timestamps; 'human': timestamps; "
        "'auto': journal when stderr goes to the systemd journal.",
    )


def _check_node(value: str) -> str:
    # A node is one MQTT topic level (PREFIX/NODE/...), so the topic rule decides.
    return _check_topic_level(value)


class DaemonConfig(_Model):
    """``[daemon]``: the supervisor."""

    node: Annotated[str, AfterValidator(_check_node)] | None = Field(
        None,
        description="This box's name: in every event, MQTT topics and the client id; "
        "default: the host name. Unique in a fleet.",
    )

    state_dir: Path = Field(
        Path("state"),
        validate_default=True,
        description="Folder for runtime state (relative to the config file's folder).",
    )
    stop_timeout: Duration = Field(
        5.0, ge=0.5, le=300, description="Grace period for children on stop before SIGKILL."
    )

    @field_validator("state_dir")
    @classmethod
    def _resolve_path(cls, value: Path, info: ValidationInfo) -> Path:
        value = _resolve(value, info)
        _check_folder(value)
        return value


# --- processors ----------------------------------------------------------------------


class ProcessorConfig(_Model):
    """``[cameras.NAME.processor]``: ``type`` and the processor's own options beside it."""

    type: str = Field(
        min_length=1,
        description="Built-in or registered processor name, or 'package.module:ClassName'.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="The options as validated by the processor's Options, dumped (for show; "
        "build_options() gives the validated object).",
    )

    _built: BaseModel | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _validate_options(
        cls, data: Any, handler: ModelWrapValidatorHandler[Self], info: ValidationInfo
    ) -> Self:
        if isinstance(data, str):
            data = {"type": data}  # processor = "motion"
        if not isinstance(data, dict):
            return handler(data)
        if not isinstance(data.get("type"), str):
            return handler({"type": data["type"]} if "type" in data else {})
        type_name = data["type"]
        options = {k: v for k, v in data.items() if k != "type"}
        try:
            model = resolve_processor(type_name).Options
        except PluginError as exc:
            raise _invalid([("type", str(exc))], cls.__name__) from None
        if set(options) == {"options"} and "options" not in model.model_fields:
            options = options["options"]  # the shape model_dump() gives
        try:
            validated = model.model_validate(options, context=info.context)
            shown = validated.model_dump()
        except ValidationError as exc:
            raise (_explain_unknown(exc, model.model_fields, {}, cls.__name__) or exc) from None
        except Exception as exc:
            # A plugin's bug (a validator raising TypeError, say) is reported, not a crash.
            message = f"{type_name!r}: its Options raised {error_text(exc)}"
            raise _invalid([("type", message)], cls.__name__) from None
        config = handler({"type": type_name, "options": shown})
        # The worker gets this very object: validating the dump again would apply
        # aliases and transforming validators twice.
        config._built = validated
        return config

    def build_options(self) -> BaseModel:
        """The options as an instance of the processor's ``Options`` model, as
        validated from the config table."""
        if self._built is None:  # made with model_construct(): never validated
            self._built = resolve_processor(self.type).Options.model_validate(self.options)
        return self._built

    @property
    def pixel_format(self) -> str:
        """What the processor takes: ``"bgr"``, ``"gray"`` or ``"any"``."""
        return resolve_processor(self.type).pixel_format


def _null_processor() -> ProcessorConfig:
    return ProcessorConfig(type="null")


# --- cameras -------------------------------------------------------------------------

_CAMERA_NAME = re.compile(r"[a-z0-9_-]+")
_PLUGIN = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_V4L2 = re.compile(r"\d+|/dev/.+")
_FFMPEG_SCHEMES = {"http", "https", "rtmp", "rtmps", "rtp", "srt", "udp", "tcp", "mmsh", "mmst"}
_PASSWORD_FIELDS = ("password", "password_file", "password_credential")
_MALFORMED_URL = re.compile(r":.*@")  # 'user:password@' without a '://' before it


def source_kind(source: str) -> SourceKind:
    """What kind of source ``source`` names (see :attr:`CameraConfig.source_kind`)."""
    if source == "synthetic":
        return "synthetic"
    scheme = source.partition("://")[0].lower() if "://" in source else ""
    if scheme in ("rtsp", "rtsps"):
        return "rtsp"
    if scheme:
        return "url"
    if _V4L2.fullmatch(source) and not os.path.isfile(source):
        # /dev/video0, a udev link; a clip in /dev/shm is a file all the same.
        return "v4l2"
    if _PLUGIN.fullmatch(source):
        return "plugin"
    return "file"


def _read_secret(path: Path) -> str:
    """The first line of ``path``; errors name the file, never its content."""
    try:
        text = read_bounded(path, MAX_SECRET_BYTES).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"cannot read {path}: not UTF-8 text") from None
    except ValueError as exc:
        raise ValueError(f"{exc}: {path}") from None
    secret = text.partition("\n")[0].rstrip("\r")
    if not secret:
        raise ValueError(f"{'first line is' if text.strip() else 'file is'} empty: {path}")
    return secret


def _secret_needed(info: ValidationInfo, owner: str | None) -> bool:
    """Whether ``owner``'s secret is read: not when the config is loaded for some
    cameras only (``edged run --camera``) and it is another camera's, or [defaults]'
    (``""``: the cameras run inherit it and read it themselves). Their structure is
    checked all the same; their secret files are not needed. ``owner`` None: MQTT's."""
    wanted = _context(info).get("secret_cameras")
    return wanted is None or owner is None or owner in wanted


def _field_owner(info: ValidationInfo) -> str | None:
    # Set by _Password._scope_secret around the fields of the model being validated.
    owner = _context(info).get("secret_owner")
    return owner if isinstance(owner, str) else None


def _credential_path(name: str, info: ValidationInfo, owner: str | None) -> Path | None:
    """The credential's file; None when it cannot be known here and need not be."""
    if not _secret_needed(info, owner):
        return None
    context = _context(info)
    folder = context.get("credentials_dir") or os.environ.get("CREDENTIALS_DIRECTORY")
    if not folder:
        if context.get("credentials_optional"):
            return None  # check-config in a shell: the unit's LoadCredential= sets it
        raise ValueError(
            f"$CREDENTIALS_DIRECTORY is not set: this unit needs LoadCredential={name}:FILE "
            "(systemd sets it); use password_file outside systemd"
        )
    return Path(folder) / name


_EVENT_TYPE_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")


def _check_event_types(value: list[str]) -> list[str]:
    for pattern in value:
        if not _EVENT_TYPE_PATTERN.fullmatch(pattern):
            raise ValueError("an event type or prefix uses letters, digits, '_', '.', ':', '-'")
    return value


class SnapshotsConfig(_Model):
    """``[cameras.NAME.snapshots]``: save the frame behind an event as a JPEG.

    Inherited from ``[defaults.snapshots]`` key by key (unlike a processor table)."""

    enabled: bool = Field(False, description="Save a JPEG of each frame that produced an event.")
    types: Annotated[list[str], AfterValidator(_check_event_types)] = Field(
        default_factory=list,
        description="Event types or prefixes that get a snapshot ('motion' matches "
        "'motion.start'); empty: every type.",
    )
    quality: int = Field(85, ge=1, le=100, description="JPEG quality, 1-100.")
    max_count: int = Field(
        1000, ge=0, le=10_000_000, description="Snapshots kept per camera, newest; 0: no limit."
    )
    max_age: Duration = Field(
        7 * 86400.0, ge=0, description="Snapshots older than this are deleted; 0: no limit."
    )
    mqtt: bool = Field(
        False, description="Also publish each one, retained, on the camera's MQTT snapshot topic."
    )

    def matches(self, event_type: str) -> bool:
        """Whether an event of this type gets a snapshot (``enabled`` aside)."""
        return not self.types or any(
            event_type == t or event_type.startswith(t if t.endswith(".") else t + ".")
            for t in self.types
        )


class _Password(_Model):
    """A password from the file itself, a file, or a systemd credential: at most one."""

    password: SecretStr | None = Field(
        None, min_length=1, description="The password in this file (prefer password_file)."
    )
    password_file: Path | None = Field(
        None, description="File whose first line is the password (relative to the config)."
    )
    password_credential: str | None = Field(
        None,
        min_length=1,
        description="Name of a file in $CREDENTIALS_DIRECTORY holding the password "
        "(systemd LoadCredential=).",
    )

    _secret: SecretStr | None = PrivateAttr(default=None)

    @classmethod
    def _secret_owner(cls, data: Any) -> str | None:
        """Whose secret this is, for :func:`_secret_needed`; None: always needed."""
        return None

    @model_validator(mode="wrap")
    @classmethod
    def _scope_secret(
        cls, data: Any, handler: ModelWrapValidatorHandler[Self], info: ValidationInfo
    ) -> Self:
        context = _context(info)
        outer = context.get("secret_owner")
        context["secret_owner"] = cls._secret_owner(data)
        try:
            return handler(data)
        finally:
            context["secret_owner"] = outer

    @field_validator("password_file")
    @classmethod
    def _check_password_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None:
            value = _resolve(value, info)
            if _secret_needed(info, _field_owner(info)):
                _read_secret(value)
        return value

    @field_validator("password_credential")
    @classmethod
    def _check_credential(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            if "/" in value or value in (".", ".."):
                raise ValueError("expected a credential name, not a path")
            path = _credential_path(value, info, _field_owner(info))
            if path is not None:
                _read_secret(path)
        return value

    def _passwordproblems(self, url_password: bool = False) -> list[tuple[str, str]]:
        given = [f for f in _PASSWORD_FIELDS if getattr(self, f) is not None]
        if len(given) + url_password <= 1:
            return []
        names = ", ".join(given + ["a password in the source URL"] * url_password)
        return [(given[-1], f"give only one password source; found: {names}")]

    def _load_secret(self, info: ValidationInfo) -> None:
        owner = self._secret_owner(self.__dict__)
        if not _secret_needed(info, owner):
            return
        if self.password_file is not None:
            self._secret = SecretStr(_read_secret(self.password_file))
        elif self.password_credential is not None:
            path = _credential_path(self.password_credential, info, owner)
            if path is not None:
                self._secret = SecretStr(_read_secret(path))

    def password_value(self) -> str | None:
        """The password from whichever field gave it, or None. Keep it out of logs."""
        if self.password is not None:
            return self.password.get_secret_value()
        return self._secret.get_secret_value() if self._secret is not None else None


class _CameraSettings(_Password):
    """What a camera table and ``[defaults]`` may both set."""

    source_options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for a plugin source's constructor."
    )
    username: str | None = Field(None, min_length=1, description="User name for the source URL.")
    transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport.")
    open_timeout: Duration = Field(
        10.0, ge=0.1, le=300, description="Time allowed to open the source."
    )
    read_timeout: Duration = Field(
        5.0, ge=0.1, le=300, description="Time allowed for one frame read before giving up."
    )
    decoder_threads: int = Field(
        1, ge=0, le=16, description="FFmpeg decoder threads; 0 lets FFmpeg choose."
    )
    ffmpeg_options: dict[str, Annotated[str, BeforeValidator(_scalar_to_str)]] = Field(
        default_factory=dict, description="Extra FFmpeg demuxer options (OpenCV's or PyAV's)."
    )
    pixel_format: Literal["auto", "bgr", "gray"] = Field(
        "auto",
        description="What the reader delivers: 'auto' is grey when the processor asks for grey "
        "and the camera takes no snapshots (colour JPEGs), else BGR. Grey frames from RTSP, "
        "URL and file sources are the decoder's luma plane, with no colour conversion; a "
        "processor asking for grey and given BGR gets it converted.",
    )
    width: int | None = Field(
        None, ge=16, le=7680, description="Frame width: synthetic size, V4L2 requested mode."
    )
    height: int | None = Field(
        None, ge=16, le=4320, description="Frame height: synthetic size, V4L2 requested mode."
    )
    fps: float | None = Field(
        None, gt=0, le=240, description="Frame rate: synthetic rate, V4L2 mode, file override."
    )
    loop: bool = Field(True, description="Files: start again at the end.")
    realtime: bool = Field(True, description="Files: pace reading at the native frame rate.")
    stale_after: Duration = Field(
        5.0, ge=0.1, le=3600, description="No new frame for this long marks the camera stale."
    )
    restart_delay: Duration = Field(
        1.0, ge=0, le=600, description="Wait before the first restart of a failed reader."
    )
    restart_max_delay: Duration = Field(
        30.0, ge=0, le=3600, description="Ceiling of the exponential restart backoff."
    )
    process_fps: float | None = Field(
        None,
        gt=0,
        le=240,
        description="Process at most this many frames a second (unset: as many as the "
        "processor manages). With freshness = 'next' the frames in between are decoded "
        "but never colour-converted: the cheapest way to run many cameras.",
    )
    freshness: Literal["next", "newest"] = Field(
        "next",
        description="'next': after each frame the processor waits for the next one (least age; "
        "frames it will not see are not colour-converted); 'newest': it takes the newest "
        "frame at once (most frames processed).",
    )
    restart_reset_after: Duration = Field(
        30.0, ge=1, le=86400, description="Up this long without a failure: backoff starts over."
    )
    max_processor_failures: int = Field(
        100,
        ge=0,
        le=1_000_000,
        description="Restart the worker after this many failed frames in a row (0: never).",
    )
    process_timeout: Duration = Field(
        60.0,
        ge=1,
        le=86400,
        description="A processor still in process() after this long is stuck: its worker is "
        "killed and restarted, and the camera reports it.",
    )
    processor: ProcessorConfig = Field(
        default_factory=_null_processor,
        description="The processor: 'type' plus its options; replaced as a whole, not merged.",
    )
    snapshots: SnapshotsConfig = Field(
        default_factory=SnapshotsConfig,
        description="JPEGs of the frames behind events; merged key by key with [defaults].",
    )


class CameraDefaults(_CameraSettings):
    """``[defaults]``: settings every camera inherits unless it sets them itself."""

    _key_hints: ClassVar[dict[str, str]] = {
        "source": "set the source in each [cameras.NAME] table, not in [defaults]",
        "metrics_listen": "set metrics_listen in [cameras.NAME]: each camera needs its own",
        "name": "a camera's name is its table name",
    }

    @classmethod
    def _secret_owner(cls, data: Any) -> str | None:
        return ""  # no camera's: read by the cameras that inherit it

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Self:
        if problems := self._passwordproblems():
            raise _invalid(problems, type(self).__name__)
        self._load_secret(info)
        return self


class CameraConfig(_CameraSettings):
    """``[cameras.NAME]``: one camera, with ``[defaults]`` merged in."""

    name: str = Field(description="The camera's name, from its table name.")
    source: str = Field(
        max_length=MAX_PATH_BYTES,
        description="'synthetic', an rtsp:// or other URL, /dev/videoN or a device number, "
        "'package.module:ClassName' for a plugin source, or a video file.",
    )
    metrics_listen: Annotated[str, AfterValidator(_check_listen)] | None = Field(
        None,
        description="'host:port' for metrics when edged runs only this camera (edged@NAME), "
        "so per-camera units run side by side; default: [metrics] listen.",
    )

    @classmethod
    def _secret_owner(cls, data: Any) -> str | None:
        return str(data.get("name")) if isinstance(data, dict) else None

    @field_validator("source", mode="before")
    @classmethod
    def _number_to_device(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str, info: ValidationInfo) -> str:
        if _CONTROL.search(value):
            # FFmpeg and the OS stop at a NUL; a newline would forge log lines.
            raise ValueError("must not contain control characters (a NUL byte, a newline)")
        kind = source_kind(value)
        if kind in ("rtsp", "url"):
            scheme = value.partition("://")[0].lower()
            if kind == "url" and scheme not in _FFMPEG_SCHEMES:
                allowed = ", ".join(sorted({"rtsp", "rtsps", *_FFMPEG_SCHEMES}))
                raise ValueError(f"unsupported URL scheme {scheme!r}; use one of: {allowed}")
            try:
                parts = urlsplit(value)
                parts.port  # noqa: B018 - raises ValueError on a bad port
            except ValueError:
                raise ValueError("invalid URL: bad host or port") from None
            if not parts.hostname:
                raise ValueError("invalid URL: no host")
        elif kind == "plugin":
            try:
                resolve_source(value)
            except PluginError as exc:
                raise ValueError(str(exc)) from None
        elif _MALFORMED_URL.search(value):
            # 'rtsp:/admin:pw@cam/s' is no file name; saying "file not found: ..."
            # would print the password.
            raise ValueError(
                "looks like a malformed URL with a password (not shown): "
                "a URL starts with 'scheme://'"
            )
        elif kind == "file":
            path = _resolve(Path(value), info)
            # '%d' patterns name image sequences (img_%04d.png), which no single file matches.
            if not re.search(r"%\d*d", value):
                _check_file(path)
            return str(path)
        return value

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Self:
        user, url_password, bare = _split_userinfo(self.source)
        if self.source_kind not in ("rtsp", "url"):
            user = url_password = None
        problems = self._passwordproblems(url_password is not None)
        if user and self.username is not None and user != self.username:
            problems.append(("username", "a different user name is in the source URL"))
        if (self.width is None) != (self.height is None):
            missing = "height" if self.height is None else "width"
            problems.append((missing, "give both width and height, or neither"))
        if self.restart_max_delay < self.restart_delay:
            problems.append(("restart_max_delay", "must not be less than restart_delay"))
        if self.pixel_format == "gray" and self.processor.pixel_format == "bgr":
            problems.append(
                ("pixel_format", f"processor {self.processor.type!r} takes BGR frames, not grey")
            )
        if problems:
            raise _invalid(problems, type(self).__name__)
        if user is not None:
            # Credentials move out of `source`, so no repr or dump can show them.
            self.source = bare
            self.username = user or self.username
            if url_password is not None:
                self.password = SecretStr(url_password)
        self._load_secret(info)
        return self

    @property
    def source_kind(self) -> SourceKind:
        """``synthetic``, ``rtsp``, ``url`` (other FFmpeg URLs), ``v4l2``, ``plugin`` or
        ``file``."""
        return source_kind(self.source)

    @property
    def frame_format(self) -> PixelFormat:
        """What the reader delivers: ``pixel_format`` with ``"auto"`` resolved. A
        processor that takes grey and gets BGR has it converted by its worker."""
        if self.pixel_format != "auto":
            return self.pixel_format
        if self.processor.pixel_format == "gray" and not self.snapshots.enabled:
            return "gray"
        return "bgr"

    @property
    def display_source(self) -> str:
        """The source for logs and status: any password shown as ``***``."""
        # scrub(): 'rtsp://u:a/b@cam/s' (a '/' not percent-encoded) leaves its
        # password in `source`, as urlsplit does not see a user in it.
        return scrub(self.source_url(with_credentials=False))

    def source_url(self, with_credentials: bool = False) -> str:
        """The source with the user name and password inserted (percent-encoded) for
        URL sources; the password is ``***`` unless ``with_credentials``. Only the
        reader process asks for the real one."""
        password = self.password_value()
        if self.source_kind not in ("rtsp", "url") or (self.username is None and not password):
            return self.source
        scheme, _, rest = self.source.partition("://")
        userinfo = quote(self.username or "", safe="")
        if password is not None:
            userinfo += ":" + (quote(password, safe="") if with_credentials else "***")
        return f"{scheme}://{userinfo}@{rest}"


MAX_CAMERA_NAME = 64  # a unit instance, a file name, a topic level, a metric label


def _check_camera_name(name: str) -> str:
    if not _CAMERA_NAME.fullmatch(name):
        raise ValueError("a camera name may contain only a-z, 0-9, '_' and '-'")
    if len(name) > MAX_CAMERA_NAME:
        raise ValueError(f"a camera name has at most {MAX_CAMERA_NAME} characters")
    return name


CameraName = Annotated[str, AfterValidator(_check_camera_name)]


# --- MQTT ------------------------------------------------------------------------------


def host_node() -> str:
    """This machine's host name as a node name (one topic level): the default node."""
    import socket

    name = socket.gethostname().split(".")[0] or "edged"
    return re.sub(r"[/+#\x00]", "_", name)


_TOPIC_LEVEL = re.compile(r"[^/+#\x00]+")


def _check_topic_prefix(value: str) -> str:
    if not all(_TOPIC_LEVEL.fullmatch(level) for level in value.split("/")):
        raise ValueError(
            "a topic prefix is one or more '/'-separated levels, none empty, "
            "without '+', '#' or a leading or trailing '/'"
        )
    return value


def _check_topic_level(value: str) -> str:
    if not _TOPIC_LEVEL.fullmatch(value):
        raise ValueError("must not be empty or contain '/', '+' or '#' (it is one topic level)")
    return value


class MqttConfig(_Password):
    """``[mqtt]``: publish events, availability and camera state to an MQTT broker.

    Absent table: MQTT is off. Events go through a durable outbox in
    ``[daemon] state_dir`` (see ``edged.sinks.outbox``)."""

    host: str = Field("localhost", min_length=1, description="Broker host name or address.")
    port: int | None = Field(
        None, ge=1, le=65535, description="Broker port; default 1883, or 8883 with TLS."
    )
    protocol: Annotated[Literal["3.1.1", "5"], BeforeValidator(_scalar_to_str)] = Field(
        "3.1.1", description="MQTT protocol version: '3.1.1' or '5'."
    )
    topic_prefix: Annotated[str, AfterValidator(_check_topic_prefix)] = Field(
        "edged", description="First topic level(s): PREFIX/NODE/CAMERA/events, PREFIX/NODE/status."
    )
    node: Annotated[str, AfterValidator(_check_topic_level)] | None = Field(
        None,
        description="Deprecated: set [daemon] node (this is its old place, still read when "
        "[daemon] node is not set).",
    )
    topic_layout: Literal["node", "camera"] = Field(
        "node",
        description="'node': per-camera topics PREFIX/NODE/CAMERA/... (no two boxes collide); "
        "'camera': the old PREFIX/CAMERA/... (each box needs its own topic_prefix).",
    )
    client_id: str | None = Field(
        None, min_length=1, max_length=128, description="MQTT client id; default 'edged-NODE'."
    )
    keepalive: Duration = Field(
        60.0, ge=5, le=3600, description="Keepalive interval; a dead link is noticed in ~1.5x."
    )
    reconnect_min_delay: Duration = Field(
        1.0, ge=1, le=3600, description="First wait before reconnecting (whole seconds)."
    )
    reconnect_max_delay: Duration = Field(
        60.0, ge=1, le=3600, description="Ceiling of the doubling reconnect wait (whole seconds)."
    )
    max_inflight: int = Field(
        20, ge=1, le=1000, description="Events published and not yet acknowledged, at most."
    )
    username: str | None = Field(None, min_length=1, description="User name for the broker.")
    tls: bool = Field(False, description="Use TLS (implied by ca_file, certfile, tls_insecure).")
    ca_file: Path | None = Field(
        None, description="CA certificates (PEM) to verify the broker; default: the system's."
    )
    certfile: Path | None = Field(None, description="Client certificate (PEM) for TLS.")
    keyfile: Path | None = Field(None, description="Client key (PEM); default: in certfile.")
    tls_insecure: bool = Field(
        False, description="Skip verifying the broker's certificate and host name (testing only)."
    )
    outbox_max_bytes: ByteSize = Field(
        64 * 1024**2, ge=4096, description="Event payload bytes the outbox keeps at most."
    )
    max_payload: ByteSize = Field(
        256 * 1024,
        ge=1024,
        le=256 * 1024**2,
        description="Largest event sent to MQTT; a larger one is not sent (it stays in the "
        "JSONL file) and is counted as dropped, reason 'oversize'.",
    )
    outbox_max_age: Duration = Field(
        7 * 86400.0, ge=1, description="Events older than this are dropped from the outbox."
    )
    outbox_sync: Literal["normal", "full"] = Field(
        "normal",
        description="'normal': survives a crash of edged; 'full': also power loss (fsync "
        "per event).",
    )
    homeassistant: bool = Field(
        False,
        description="Publish Home Assistant MQTT discovery: per camera a motion binary_sensor "
        "and an event entity.",
    )
    homeassistant_prefix: Annotated[str, AfterValidator(_check_topic_prefix)] = Field(
        "homeassistant",
        description="Home Assistant's discovery prefix (its status topic is PREFIX/status).",
    )

    @field_validator("ca_file", "certfile", "keyfile")
    @classmethod
    def _resolve_path(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        value = _resolve(value, info)
        _check_file(value)
        return value

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Self:
        problems = self._passwordproblems()
        given = [f for f in _PASSWORD_FIELDS if getattr(self, f) is not None]
        if given and self.username is None:
            problems.append((given[0], "a password needs a username"))
        if self.keyfile is not None and self.certfile is None:
            problems.append(("keyfile", "a keyfile needs a certfile"))
        if self.reconnect_max_delay < self.reconnect_min_delay:
            problems.append(("reconnect_max_delay", "must not be less than reconnect_min_delay"))
        if not problems and self.use_tls:
            try:
                self.ssl_context()
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                key = "certfile" if self.certfile is not None else "ca_file"
                problems.append((key, f"cannot load TLS files: {getattr(exc, 'reason', exc)}"))
        if problems:
            raise _invalid(problems, type(self).__name__)
        self._load_secret(info)
        return self

    @property
    def use_tls(self) -> bool:
        return (
            self.tls or self.tls_insecure or self.ca_file is not None or self.certfile is not None
        )

    @property
    def broker_port(self) -> int:
        if self.port is not None:
            return self.port
        return 8883 if self.use_tls else 1883

    @property
    def node_name(self) -> str:
        """``node`` (in a whole config: ``[daemon] node``), or this machine's host name."""
        return self.node if self.node is not None else host_node()

    def camera_topic(self, node: str, camera: str, what: str) -> str:
        """A camera's topic ``what`` (events, state, motion, snapshot) in ``topic_layout``:
        the one rule every publisher, discovery config and sweep follows."""
        if self.topic_layout == "camera":
            return f"{self.topic_prefix}/{camera}/{what}"
        return f"{self.topic_prefix}/{node}/{camera}/{what}"

    def ssl_context(self) -> Any:
        """An ``ssl.SSLContext`` for the broker (``Any``: ssl is imported lazily)."""
        import ssl

        ctx = ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file is not None else None
        )
        if self.certfile is not None:
            keyfile = str(self.keyfile) if self.keyfile is not None else None
            ctx.load_cert_chain(str(self.certfile), keyfile)
        if self.tls_insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


# --- the whole file ------------------------------------------------------------------

_SECTIONS = ("events", "metrics", "logging", "daemon", "defaults")


class Config(_Model):
    """The validated configuration. Build it with :func:`load_config`."""

    events: EventsConfig = Field(default_factory=EventsConfig, description="[events]")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="[metrics]")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="[logging]")
    daemon: DaemonConfig = Field(default_factory=DaemonConfig, description="[daemon]")
    defaults: CameraDefaults = Field(
        default_factory=CameraDefaults, description="[defaults], as validated on its own."
    )
    cameras: dict[CameraName, CameraConfig] = Field(
        default_factory=dict, validate_default=True, description="[cameras.NAME] tables."
    )
    mqtt: MqttConfig | None = Field(None, description="[mqtt]; absent: MQTT is off.")

    _path: Path = PrivateAttr(default=Path("edged.toml"))
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @property
    def path(self) -> Path:
        """The config file (absolute)."""
        return self._path

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in the file were resolved against."""
        return self._base_dir

    @model_validator(mode="before")
    @classmethod
    def _inherit_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        # Sections left out are validated too, so their relative paths are resolved.
        data = {**{k: {} for k in _SECTIONS}, **data}
        defaults, cameras = data["defaults"], data.get("cameras")
        if not isinstance(cameras, dict):
            return data
        if not isinstance(defaults, dict):
            defaults = {}  # reported once, at `defaults`; the cameras still get their names
        try:
            CameraDefaults.model_validate(defaults, context=info.context)
            bad: set[Any] = set()
        except ValidationError as exc:
            # Reported once, at defaults.KEY; the cameras fall back to the built-in value.
            bad = {e["loc"][0] for e in exc.errors() if e["loc"]}
        inherit = {k: v for k, v in defaults.items() if k not in bad}
        merged: dict[Any, Any] = {}
        for name, table in cameras.items():
            if not isinstance(table, dict):
                merged[name] = table
                continue
            own = dict(inherit)
            user, password, _ = _split_userinfo(str(table.get("source", "")))
            # A camera that gives its own password replaces the inherited one,
            # whichever of the three fields each uses.
            if password is not None or any(f in table for f in _PASSWORD_FIELDS):
                for f in _PASSWORD_FIELDS:
                    own.pop(f, None)
            if user:
                own.pop("username", None)
            merged[name] = {**own, "name": name, **table}
            if isinstance(own.get("snapshots"), dict) and isinstance(table.get("snapshots"), dict):
                # Key by key: a camera that sets only `types` keeps the retention of [defaults].
                merged[name]["snapshots"] = {**own["snapshots"], **table["snapshots"]}
        return {**data, "cameras": merged}

    @field_validator("cameras")
    @classmethod
    def _at_least_one(cls, value: dict[str, CameraConfig]) -> dict[str, CameraConfig]:
        if not value:
            raise ValueError("no cameras: add a [cameras.NAME] table with a source")
        return value

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Self:
        renamed = [k for k, camera in self.cameras.items() if camera.name != k]
        if renamed:
            message = "'name' cannot be set; a camera's name is its table name"
            raise _invalid([(("cameras", k, "name"), message) for k in renamed], "Config")
        if clashes := self._listen_clashes():
            raise _invalid(clashes, "Config")
        self._resolve_node()
        context = _context(info)
        if "path" in context:
            self._path = Path(context["path"])
            self._base_dir = Path(context["base_dir"])
        return self

    @property
    def node(self) -> str:
        """This box's name: ``[daemon] node``, the older ``[mqtt] node``, or the host name."""
        if self.daemon.node is not None:
            return self.daemon.node
        if self.mqtt is not None and self.mqtt.node is not None:
            return self.mqtt.node
        return host_node()

    def _resolve_node(self) -> None:
        if self.mqtt is None:
            return
        if self.mqtt.node is not None and self.daemon.node not in (None, self.mqtt.node):
            message = "differs from [daemon] node: remove it ([daemon] node is its place now)"
            raise _invalid([(("mqtt", "node"), message)], "Config")
        # The sink (and a reload's comparison) read the node from [mqtt]: one value.
        self.mqtt.node = self.node
        layout = self.mqtt.topic_layout
        if layout == "node" and "status" in self.cameras:
            # PREFIX/NODE/status/... is the availability topic of the node's processes.
            message = (
                "a camera cannot be named 'status' with topic_layout = 'node' "
                "(PREFIX/NODE/status is the node's availability): rename it"
            )
            raise _invalid([(("cameras", "status"), message)], "Config")

    def unread_credentials(self) -> list[str]:
        """Key paths of the password_credential settings not read (loaded with
        ``credentials_optional`` and no ``$CREDENTIALS_DIRECTORY``)."""
        owners: list[tuple[str, _Password | None]] = [
            *((f"cameras.{name}", camera) for name, camera in self.cameras.items()),
            ("mqtt", self.mqtt),
        ]
        return [
            f"{key}.password_credential"
            for key, owner in owners
            if owner is not None
            and owner.password_credential is not None
            and owner.password_value() is None
        ]

    def _listen_clashes(self) -> list[tuple[str | tuple[str, ...], str]]:
        """Cameras whose metrics_listen is taken by [metrics] listen or another camera."""
        if not self.metrics.enabled:
            return []
        taken = [(*_split_listen(self.metrics.listen), "[metrics] listen")]
        problems: list[tuple[str | tuple[str, ...], str]] = []
        for name, camera in self.cameras.items():
            if camera.metrics_listen is None:
                continue
            host, port = _split_listen(camera.metrics_listen)
            for other_host, other_port, owner in taken:
                wildcard = {host, other_host} & {"0.0.0.0", "::"}
                if port == other_port != 0 and (host == other_host or wildcard):
                    message = f"address {camera.metrics_listen} is already used by {owner}"
                    problems.append((("cameras", name, "metrics_listen"), message))
                    break
            taken.append((host, port, f"camera {name}"))
        return problems


# --- loading and error reports -----------------------------------------------------------


def load_config(
    path: str | os.PathLike[str],
    credentials_optional: bool = False,
    cameras: Iterable[str] | None = None,
) -> Config:
    """Read and validate the config file at ``path``; raise :class:`ConfigError`.

    ``credentials_optional``: for commands run outside the daemon's unit (check-config,
    events): without ``$CREDENTIALS_DIRECTORY`` a ``password_credential`` is not read
    (nor its password known); :meth:`Config.unread_credentials` lists them.
    ``cameras``: read the secrets of these cameras only (``edged run --camera``): the
    others' password files and credentials are not read, nor their passwords known."""
    name = os.fspath(path)
    return parse_config(read_config_text(name), name, credentials_optional, cameras)


def read_config_text(path: str | os.PathLike[str]) -> str:
    """The text of the config file at ``path``; :class:`ConfigError` if it is not a
    regular file of UTF-8 text of at most MAX_CONFIG_BYTES."""
    name = os.fspath(path)
    try:
        return read_bounded(name, MAX_CONFIG_BYTES).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(name, [f"{name}: not UTF-8 text (byte {exc.start})"]) from None
    except ValueError as exc:
        raise ConfigError(name, [f"{name}: {exc}"]) from None


def parse_toml(text: str, path: str | os.PathLike[str]) -> dict[str, Any]:
    """TOML ``text`` (read from ``path``) as a dict, within the bounds above (nesting,
    key and string lengths, no NUL byte); raise :class:`ConfigError`."""
    name = os.fspath(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, [syntax_problem(name, str(exc))]) from None
    except RecursionError:  # tomllib recurses once per level
        message = f"tables and arrays nested too deeply (at most {MAX_DEPTH} levels)"
        raise ConfigError(name, [f"{name}: {message}"]) from None
    if found := _out_of_bounds(data):
        raise ConfigError(name, problems(name, _invalid(found, "Config"), key_lines(text)))
    return data


def _out_of_bounds(data: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """(key path, problem) for what no option can want, found without recursion (a
    deep value would overflow the stack of whatever recursed over it next)."""
    found: list[tuple[tuple[str | int, ...], str]] = []
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), data)]
    while stack and len(found) < 10:
        where, value = stack.pop()
        if isinstance(value, dict | list) and len(where) >= MAX_DEPTH:
            found.append((where, f"nested too deeply (at most {MAX_DEPTH} levels)"))
        elif isinstance(value, dict):
            for key, item in value.items():
                if len(key) > MAX_KEY_CHARS:
                    short = f"{key[:16]}..."  # the whole key would flood the report
                    found.append(((*where, short), f"key longer than {MAX_KEY_CHARS} characters"))
                else:
                    stack.append(((*where, key), item))
        elif isinstance(value, list):
            stack.extend(((*where, i), item) for i, item in enumerate(value))
        elif isinstance(value, str) and len(value) > MAX_STRING_CHARS:
            found.append((where, f"longer than {MAX_STRING_CHARS} characters"))
        elif isinstance(value, str) and "\x00" in value:
            found.append((where, "must not contain a NUL byte"))
    return sorted(found)


def camera_from_dict(
    name: str, options: Mapping[str, Any], base_dir: str | os.PathLike[str] | None = None
) -> CameraConfig:
    """One camera from keyword options (as in a ``[cameras.NAME]`` table), for using
    the reader as a library; relative paths are resolved against ``base_dir`` (default:
    the current folder). Raises :class:`ConfigError` naming the camera."""
    base = Path(os.path.abspath(base_dir if base_dir is not None else os.curdir))
    label = f"camera {name!r}"
    try:
        _check_camera_name(name)
        return CameraConfig.model_validate({"name": name, **options}, context={"base_dir": base})
    except ValueError as exc:  # ValidationError is a ValueError
        if not isinstance(exc, ValidationError):
            raise ConfigError(label, [f"{label}: {exc}"]) from None
        raise ConfigError(label, problems(label, exc, {})) from None


def parse_config(
    text: str,
    path: str | os.PathLike[str],
    credentials_optional: bool = False,
    cameras: Iterable[str] | None = None,
) -> Config:
    """Validate TOML ``text`` as if read from ``path`` (which relative paths in it
    are resolved against); raise :class:`ConfigError` listing every problem.
    ``credentials_optional``, ``cameras``: as for :func:`load_config`."""
    name = os.fspath(path)
    data = parse_toml(text, name)
    file = Path(os.path.abspath(name))
    context = {
        "path": file,
        "base_dir": file.parent,
        "credentials_optional": credentials_optional,
        "secret_cameras": None if cameras is None else frozenset(cameras),
    }
    try:
        return Config.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(name, problems(name, exc, key_lines(text))) from None
    except (OSError, RecursionError) as exc:
        # What a config can cause that no check above foresaw is still the
        # config's doing: exit 78 (or keep the running config), not a traceback.
        reason = scrub(f"{type(exc).__name__}: {exc}")[:500]
        raise ConfigError(name, [f"{name}: cannot be checked: {reason}"]) from None
