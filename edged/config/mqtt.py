"""``[mqtt]``: the broker, its login and TLS, topics and Home Assistant."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edged.config.base import check_file, invalid, resolve_path, scalar_to_str
from edged.config.secrets import PasswordSettings
from edged.units import ByteSize, Duration

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


def check_topic_level(value: str) -> str:
    if not _TOPIC_LEVEL.fullmatch(value):
        raise ValueError("must not be empty or contain '/', '+' or '#' (it is one topic level)")
    return value


class MqttConfig(PasswordSettings):
    """``[mqtt]``: publish events, availability and camera state to an MQTT broker.

    Absent table: MQTT is off. Events go through a durable outbox in
    ``[daemon] state_dir`` (see ``edged.sinks.outbox``)."""

    host: str = Field("localhost", min_length=1, description="Broker host name or address.")
    port: int | None = Field(
        None, ge=1, le=65535, description="Broker port; default 1883, or 8883 with TLS."
    )
    protocol: Annotated[Literal["3.1.1", "5"], BeforeValidator(scalar_to_str)] = Field(
        "3.1.1", description="MQTT protocol version: '3.1.1' or '5'."
    )
    topic_prefix: Annotated[str, AfterValidator(_check_topic_prefix)] = Field(
        "edged", description="First topic level(s): PREFIX/NODE/CAMERA/events, PREFIX/NODE/status."
    )
    node: Annotated[str, AfterValidator(check_topic_level)] | None = Field(
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
        value = resolve_path(value, info)
        check_file(value)
        return value

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Self:
        problems = self._passwordproblems()
        given = self.password_sources()
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
            raise invalid(problems, type(self).__name__)
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
