"""The whole file: :class:`Config` and its cross-section checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edged.config.base import Model, context_of, did_you_mean, invalid
from edged.config.cameras import CameraConfig, CameraDefaults, CameraName
from edged.config.listen import split_listen
from edged.config.mqtt import MqttConfig, host_node
from edged.config.processors import SharedProcessorConfig
from edged.config.secrets import PASSWORD_FIELDS, PasswordSettings
from edged.config.sections import DaemonConfig, EventsConfig, LoggingConfig, MetricsConfig
from edged.config.urls import split_userinfo
from edged.config.web import WebConfig
from edged.errors import PluginError
from edged.processor import resolve_processor

# --- the whole file ------------------------------------------------------------------

_SECTIONS = ("events", "metrics", "logging", "daemon", "defaults", "web")


def _names_shared(value: Any, shared: set[str]) -> bool:
    """Whether a camera's ``processor`` names a [processors] table: a string that is
    one of its keys, or (when there are some) that names no processor type either,
    so that the error about it lists the [processors] names."""
    if not isinstance(value, str) or not shared:
        return False
    if value in shared:
        return True
    try:
        resolve_processor(value)
    except PluginError:
        return True
    return False


class Config(Model):
    """The validated configuration. Build it with :func:`load_config`."""

    events: EventsConfig = Field(default_factory=EventsConfig, description="[events]")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="[metrics]")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="[logging]")
    daemon: DaemonConfig = Field(default_factory=DaemonConfig, description="[daemon]")
    defaults: CameraDefaults = Field(
        default_factory=CameraDefaults, description="[defaults], as validated on its own."
    )
    processors: dict[CameraName, SharedProcessorConfig] = Field(
        default_factory=dict,
        description="[processors.NAME] tables: processors that cameras share by name.",
    )
    cameras: dict[CameraName, CameraConfig] = Field(
        default_factory=dict, validate_default=True, description="[cameras.NAME] tables."
    )
    mqtt: MqttConfig | None = Field(None, description="[mqtt]; absent: MQTT is off.")
    web: WebConfig = Field(default_factory=WebConfig, description="[web]")

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
        tables = data.get("processors")
        shared = set(tables) if isinstance(tables, dict) else set()
        by_name = (
            defaults.get("processor") if _names_shared(defaults.get("processor"), shared) else None
        )
        if by_name is not None:
            # [defaults] processor = "NAME": no processor type, so not validated as one.
            defaults = {k: v for k, v in defaults.items() if k != "processor"}
            data["defaults"] = defaults
        try:
            CameraDefaults.model_validate(defaults, context=info.context)
            bad: set[Any] = set()
        except ValidationError as exc:
            # Reported once, at defaults.KEY; the cameras fall back to the built-in value.
            bad = {e["loc"][0] for e in exc.errors() if e["loc"]}
        inherit = {k: v for k, v in defaults.items() if k not in bad}
        if by_name is not None:
            inherit["processor"] = by_name
        merged: dict[Any, Any] = {}
        for name, table in cameras.items():
            if not isinstance(table, dict):
                merged[name] = table
                continue
            own = dict(inherit)
            user, password, _ = split_userinfo(str(table.get("source", "")))
            # A camera that gives its own password replaces the inherited one,
            # whichever of the three fields each uses.
            if password is not None or any(f in table for f in PASSWORD_FIELDS):
                for f in PASSWORD_FIELDS:
                    own.pop(f, None)
            if user:
                own.pop("username", None)
            merged[name] = {**own, "name": name, **table}
            if isinstance(own.get("snapshots"), dict) and isinstance(table.get("snapshots"), dict):
                # Key by key: a camera that sets only `types` keeps the retention of [defaults].
                merged[name]["snapshots"] = {**own["snapshots"], **table["snapshots"]}
            if _names_shared(merged[name].get("processor"), shared):
                # Resolved in _check, once [processors] is validated.
                merged[name]["shared_processor"] = merged[name].pop("processor")
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
            raise invalid([(("cameras", k, "name"), message) for k in renamed], "Config")
        if clashes := self._listen_clashes():
            raise invalid(clashes, "Config")
        if unsafe := self._web_problems():
            raise invalid(unsafe, "Config")
        if unresolved := self._resolve_shared():
            raise invalid(unresolved, "Config")
        self._resolve_node()
        context = context_of(info)
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
            raise invalid([(("mqtt", "node"), message)], "Config")
        # The sink (and a reload's comparison) read the node from [mqtt]: one value.
        self.mqtt.node = self.node
        layout = self.mqtt.topic_layout
        if layout == "node" and "status" in self.cameras:
            # PREFIX/NODE/status/... is the availability topic of the node's processes.
            message = (
                "a camera cannot be named 'status' with topic_layout = 'node' "
                "(PREFIX/NODE/status is the node's availability): rename it"
            )
            raise invalid([(("cameras", "status"), message)], "Config")

    def _resolve_shared(self) -> list[tuple[str | tuple[str, ...], str]]:
        """Give each camera that names a [processors] table its type and options."""
        problems: list[tuple[str | tuple[str, ...], str]] = []
        for name, camera in self.cameras.items():
            ref = camera.shared_processor
            if ref is None:
                continue
            table = self.processors.get(ref)
            if table is None:
                message = (
                    f"unknown processor {ref!r}{did_you_mean(ref, self.processors)}: neither "
                    f"a [processors] name ({', '.join(self.processors)}) nor a processor type"
                )
                problems.append((("cameras", name, "processor"), message))
                continue
            camera.processor = table.plain()
            if camera.pixel_format == "gray" and camera.processor.pixel_format == "bgr":
                message = f"processor {ref!r} ({table.type}) takes BGR frames, not grey"
                problems.append((("cameras", name, "pixel_format"), message))
        return problems

    def unused_processors(self) -> list[str]:
        """[processors] names that no camera uses (a warning, not an error)."""
        used = {camera.shared_processor for camera in self.cameras.values()}
        return [name for name in self.processors if name not in used]

    def unread_credentials(self) -> list[str]:
        """Key paths of the password_credential settings not read (loaded with
        ``credentials_optional`` and no ``$CREDENTIALS_DIRECTORY``)."""
        owners: list[tuple[str, PasswordSettings | None]] = [
            *((f"cameras.{name}", camera) for name, camera in self.cameras.items()),
            ("mqtt", self.mqtt),
            ("web", self.web),
        ]
        return [
            f"{key}.password_credential"
            for key, owner in owners
            if owner is not None
            and owner.password_credential is not None
            and owner.password_value() is None
        ]

    def _web_problems(self) -> list[tuple[str | tuple[str, ...], str]]:
        """Listeners the page would be served on without a password, off loopback."""
        if not self.metrics.enabled:
            return []
        listeners = [("metrics", self.metrics.listen)] + [
            (f"cameras.{n}.metrics_listen", c.metrics_listen)
            for n, c in self.cameras.items()
            if c.metrics_listen is not None
        ]
        problems: list[tuple[str | tuple[str, ...], str]] = []
        for where, listen in listeners:
            if (problem := self.web.problem(listen)) is not None:
                problems.append((("web",), f"{problem} (the listener of {where})"))
        return problems

    def _listen_clashes(self) -> list[tuple[str | tuple[str, ...], str]]:
        """Cameras whose metrics_listen is taken by [metrics] listen or another camera."""
        if not self.metrics.enabled:
            return []
        taken = [(*split_listen(self.metrics.listen), "[metrics] listen")]
        problems: list[tuple[str | tuple[str, ...], str]] = []
        for name, camera in self.cameras.items():
            if camera.metrics_listen is None:
                continue
            host, port = split_listen(camera.metrics_listen)
            for other_host, other_port, owner in taken:
                wildcard = {host, other_host} & {"0.0.0.0", "::"}
                if port == other_port != 0 and (host == other_host or wildcard):
                    message = f"address {camera.metrics_listen} is already used by {owner}"
                    problems.append((("cameras", name, "metrics_listen"), message))
                    break
            taken.append((host, port, f"camera {name}"))
        return problems
