"""The small sections: ``[events]``, ``[metrics]``, ``[logging]``, ``[daemon]``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    field_validator,
)

from edged.config.base import Model, check_folder, resolve_path
from edged.config.listen import check_listen, split_listen
from edged.config.mqtt import check_topic_level
from edged.units import ByteSize, Duration

# --- sections ----------------------------------------------------------------------


class EventsConfig(Model):
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
        value = resolve_path(value, info)
        check_folder(value.parent)
        return value


class MetricsConfig(Model):
    """``[metrics]``: the Prometheus metrics and health HTTP endpoint."""

    enabled: bool = Field(True, description="Serve /metrics, /healthz and /readyz over HTTP.")
    listen: Annotated[str, AfterValidator(check_listen)] = Field(
        "127.0.0.1:9850", description="'host:port' to listen on; '[::1]:9850' for IPv6."
    )

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


class LoggingConfig(Model):
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
    return check_topic_level(value)


class DaemonConfig(Model):
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
        value = resolve_path(value, info)
        check_folder(value)
        return value
