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

The package, one concern a module: ``base`` (bounds, path checks, error
helpers every model shares), ``urls`` (what kind a ``source`` is),
``secrets`` (passwords, files and credentials), ``sections`` (``[events]``,
``[metrics]``, ``[logging]``, ``[daemon]``), ``listen`` (the listen-address
rule), ``processors``, ``cameras``, ``mqtt``, ``model`` (the whole file),
``load`` (reading a file within its bounds) and ``report`` (pydantic errors
as lines with the file, line and key path).
"""

from __future__ import annotations

from edged.config.cameras import CameraConfig, CameraDefaults, SnapshotsConfig
from edged.config.load import (
    camera_from_dict,
    load_config,
    parse_config,
    parse_toml,
    read_config_text,
)
from edged.config.model import Config
from edged.config.mqtt import MqttConfig, host_node
from edged.config.processors import ProcessorConfig
from edged.config.sections import DaemonConfig, EventsConfig, LoggingConfig, MetricsConfig
from edged.config.urls import SourceKind, source_kind
from edged.config.web import WebConfig
from edged.redact import redact_url, scrub
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
    "WebConfig",
    "camera_from_dict",
    "host_node",
    "load_config",
    "parse_byte_size",
    "parse_config",
    "parse_duration",
    "parse_toml",
    "read_config_text",
    "redact_url",
    "scrub",
    "source_kind",
]
