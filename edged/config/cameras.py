"""``[defaults]`` and ``[cameras.NAME]``: one camera's settings, and its snapshots."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self
from urllib.parse import quote, urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edged.config.base import (
    CONTROL,
    MAX_PATH_BYTES,
    Model,
    check_file,
    invalid,
    resolve_path,
    scalar_to_str,
)
from edged.config.listen import check_listen
from edged.config.processors import ProcessorConfig, null_processor
from edged.config.secrets import PasswordSettings
from edged.config.urls import FFMPEG_SCHEMES, MALFORMED_URL, SourceKind, source_kind, split_userinfo
from edged.errors import PluginError
from edged.processor import PixelFormat
from edged.redact import scrub
from edged.regions import CameraRegions, regions_from
from edged.source import resolve_source
from edged.units import Duration

# --- cameras -------------------------------------------------------------------------
_CAMERA_NAME = re.compile(r"[a-z0-9_-]+")


_EVENT_TYPE_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")


def _check_event_types(value: list[str]) -> list[str]:
    for pattern in value:
        if not _EVENT_TYPE_PATTERN.fullmatch(pattern):
            raise ValueError("an event type or prefix uses letters, digits, '_', '.', ':', '-'")
    return value


RelativeCoordinate = Annotated[float, Field(ge=0.0, le=1.0)]


class RegionConfig(Model):
    """``[cameras.NAME.zones.ZONE]`` or ``[cameras.NAME.masks.MASK]``: a polygon in
    relative frame coordinates (see :mod:`edged.regions`)."""

    points: list[tuple[RelativeCoordinate, RelativeCoordinate]] = Field(
        min_length=3,
        max_length=100,
        description="The corners, [x, y] each, relative to the frame: 0-1 from the left "
        "and from the top, so the region survives a change of resolution.",
    )

    @model_validator(mode="after")
    def _check_area(self) -> Self:
        # Shoelace formula: collinear points enclose nothing, which would make a
        # zone that never matches, silently.
        pts = self.points
        twice_area = sum(
            x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1], strict=True)
        )
        if abs(twice_area) < 1e-9:
            raise ValueError("the points enclose no area (they lie on one line)")
        return self


def _check_region_names(value: dict[str, RegionConfig]) -> dict[str, RegionConfig]:
    for name in value:
        if not _CAMERA_NAME.fullmatch(name) or len(name) > MAX_CAMERA_NAME:
            raise ValueError(
                f"region name {name[:MAX_CAMERA_NAME]!r}: use 1-{MAX_CAMERA_NAME} of a-z, 0-9, "
                "'_' and '-'"
            )
    return value


class SnapshotsConfig(Model):
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


class _CameraSettings(PasswordSettings):
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
    ffmpeg_options: dict[str, Annotated[str, BeforeValidator(scalar_to_str)]] = Field(
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
        default_factory=null_processor,
        description="The processor: 'type' plus its options; replaced as a whole, not merged.",
    )
    snapshots: SnapshotsConfig = Field(
        default_factory=SnapshotsConfig,
        description="JPEGs of the frames behind events; merged key by key with [defaults].",
    )
    web: bool = Field(
        True,
        description="Show this camera's picture and snapshots on the web page ([web]); "
        "false: its state only.",
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
            raise invalid(problems, type(self).__name__)
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
    shared_processor: str | None = Field(
        None,
        description="The [processors] name that 'processor' gave, if it named one; its type "
        "and options are then the camera's 'processor' (set by the config, not the user).",
    )
    zones: Annotated[dict[str, RegionConfig], AfterValidator(_check_region_names)] = Field(
        default_factory=dict,
        description="Named polygons: a detection standing in one gets the zone's name.",
    )
    masks: Annotated[dict[str, RegionConfig], AfterValidator(_check_region_names)] = Field(
        default_factory=dict,
        description="Named polygons whose detections are dropped.",
    )
    metrics_listen: Annotated[str, AfterValidator(check_listen)] | None = Field(
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
        if CONTROL.search(value):
            # FFmpeg and the OS stop at a NUL; a newline would forge log lines.
            raise ValueError("must not contain control characters (a NUL byte, a newline)")
        kind = source_kind(value)
        if kind in ("rtsp", "url"):
            scheme = value.partition("://")[0].lower()
            if kind == "url" and scheme not in FFMPEG_SCHEMES:
                allowed = ", ".join(sorted({"rtsp", "rtsps", *FFMPEG_SCHEMES}))
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
        elif MALFORMED_URL.search(value):
            # 'rtsp:/admin:pw@cam/s' is no file name; saying "file not found: ..."
            # would print the password.
            raise ValueError(
                "looks like a malformed URL with a password (not shown): "
                "a URL starts with 'scheme://'"
            )
        elif kind == "file":
            path = resolve_path(Path(value), info)
            # '%d' patterns name image sequences (img_%04d.png), which no single file matches.
            if not re.search(r"%\d*d", value):
                check_file(path)
            return str(path)
        return value

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Self:
        user, url_password, bare = split_userinfo(self.source)
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
            raise invalid(problems, type(self).__name__)
        if user is not None:
            # Credentials move out of `source`, so no repr or dump can show them.
            self.source = bare
            self.username = user or self.username
            if url_password is not None:
                self.password = SecretStr(url_password)
        self._load_secret(info)
        return self

    @property
    def regions(self) -> CameraRegions:
        """The camera's zones and masks, as processors and the web page see them."""
        return CameraRegions(
            self.name,
            zones=regions_from((n, z.points) for n, z in self.zones.items()),
            masks=regions_from((n, m.points) for n, m in self.masks.items()),
        )

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


def check_camera_name(name: str) -> str:
    if not _CAMERA_NAME.fullmatch(name):
        raise ValueError("a camera name may contain only a-z, 0-9, '_' and '-'")
    if len(name) > MAX_CAMERA_NAME:
        raise ValueError(f"a camera name has at most {MAX_CAMERA_NAME} characters")
    return name


CameraName = Annotated[str, AfterValidator(check_camera_name)]
