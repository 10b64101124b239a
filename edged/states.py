"""The names of states, roles and reasons, in one place: enums whose values are
what users see (metric labels, MQTT state, ``edged status``)."""

from __future__ import annotations

import enum

__all__ = ["CameraState", "RestartReason", "Role"]


class CameraState(enum.StrEnum):
    """What a camera is doing, as every observer shows it (with a reason)."""

    STARTING = "starting"
    STREAMING = "streaming"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    RESTARTING = "restarting"
    ENDED = "ended"
    FAILED = "failed"


class Role(enum.StrEnum):
    """Which child of a camera: its reader or its worker."""

    READER = "reader"
    WORKER = "worker"


class RestartReason(enum.StrEnum):
    """Why a child was restarted (the ``reason`` label of the restart metric)."""

    CRASH = "crash"  # exited with an error
    KILLED = "killed"  # by a signal we did not send
    HUNG = "hung"  # killed by edged: a silent heartbeat or a process() over its timeout
    SETUP = "setup"  # the processor or source plugin could not be set up (exit 78)
    PROCESSOR = "processor"  # too many failed frames in a row
