"""Shared processors in the supervisor: their instances, which cameras each serves.

A ``[processors.NAME]`` table runs as ``instances`` worker processes
(:mod:`edged.shared_worker`); the cameras naming it are dealt to them
round-robin in config order (with ``edged run --camera``, only the cameras
run: an ``edged@NAME`` unit runs an instance of its own for NAME). Each
instance is one :class:`~edged.child.Child` with its own restart policy and
events pipe; its cameras keep their own readers and see it as their worker
(:meth:`CameraRuntime.use_shared_worker`), so their states say when it is
restarting, and why. The supervisor starts and reaps the processes; this
module decides which instances there are and what an exit means.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from multiprocessing.process import BaseProcess

from edged.camera import CameraRuntime, EventPipes
from edged.child import Child, RestartPolicy
from edged.config import CameraConfig, Config
from edged.config.processors import SharedProcessorConfig
from edged.states import Role

log = logging.getLogger(__name__)

__all__ = ["Pool", "SharedInstance", "layout"]

InstanceKey = tuple[str, int]  # the [processors] name, the instance (from 1)


def layout(config: Config, running: Mapping[str, object]) -> dict[InstanceKey, list[str]]:
    """The cameras each shared instance serves: those of ``running`` that name a
    [processors] table, dealt round-robin in config order; no instance without one."""
    users: dict[str, list[str]] = {}
    for name, cam in config.cameras.items():
        if name in running and cam.shared_processor is not None:
            users.setdefault(cam.shared_processor, []).append(name)
    out: dict[InstanceKey, list[str]] = {}
    for proc, names in users.items():
        n = min(config.processors[proc].instances, len(names))
        for i in range(n):
            out[(proc, i + 1)] = names[i::n]
    return out


class SharedInstance(EventPipes):
    """One worker process of a shared processor, and the cameras it serves."""

    def __init__(
        self, name: str, index: int, settings: SharedProcessorConfig, cams: list[CameraRuntime]
    ) -> None:
        super().__init__()
        self.name = name
        self.index = index
        self.settings = settings
        self.cams = cams
        first = cams[0].cfg
        policy = RestartPolicy(
            first.restart_delay, first.restart_max_delay, first.restart_reset_after
        )
        self.child = Child(Role.WORKER, policy)
        self.label = f"processor {name} (instance {index})"
        self.stopping = False
        for cam in cams:
            cam.use_shared_worker(self.child, self.label)

    def setup_failed(self, reason: str) -> None:
        self.child.setup_failed(reason)

    @property
    def key(self) -> InstanceKey:
        return (self.name, self.index)

    def runs(self, settings: SharedProcessorConfig, cams: list[CameraConfig]) -> bool:
        """Whether this instance is already what ``settings`` and ``cams`` ask for."""
        return self.settings == settings and [c.cfg for c in self.cams] == cams

    def started(self, process: BaseProcess, now: float) -> None:
        """Its new process runs: each camera's worker counters start over (banked)."""
        for cam in self.cams:
            cam.bank_counters(Role.WORKER)
        self.handed_over()
        self.child.started_process(process, now)
        names = ", ".join(cam.name for cam in self.cams)
        log.debug("%s started (pid %s) for %s", self.label, process.pid, names)

    def reaped(self, code: int | None, pid: int | None, now: float) -> None:
        """Its process is gone (joined): decide the restart, tell its cameras why."""
        if self.stopping:
            self.child.stopped()
            return
        exit_ = self.child.exited(code, now)
        if exit_.crash_loop_began:
            log.error(
                "%s restarted %d times in %.0fs: crash loop; retrying every %.0fs",
                self.label,
                exit_.recent,
                exit_.window_span,
                self.child.policy.maximum,
            )
        for cam in self.cams:
            cam.restart_reasons[exit_.reason] = cam.restart_reasons.get(exit_.reason, 0) + 1
            cam.last_error = f"{self.label} {exit_.description}"
        log.warning(
            "%s (pid %s) %s after %.1fs; restarting in %.1fs; its cameras (%s) keep streaming",
            self.label,
            pid,
            exit_.description,
            exit_.ran,
            exit_.delay,
            ", ".join(cam.name for cam in self.cams),
        )


class Pool:
    """Every shared instance the supervisor runs, by (name, instance)."""

    def __init__(self) -> None:
        self.instances: dict[InstanceKey, SharedInstance] = {}

    def __iter__(self) -> Iterator[SharedInstance]:
        return iter(list(self.instances.values()))

    def stale(self, config: Config, running: Mapping[str, CameraConfig]) -> list[SharedInstance]:
        """Take out (to be stopped) the instances ``config`` changes: another type,
        options or batch, other cameras, or a camera with other settings."""
        wanted = layout(config, running)
        gone = []
        for key, inst in list(self.instances.items()):
            names = wanted.get(key)
            if names is None or not inst.runs(
                config.processors[key[0]], [running[n] for n in names]
            ):
                gone.append(self.instances.pop(key))
        return gone

    def add_missing(self, config: Config, cams: Mapping[str, CameraRuntime]) -> None:
        """Make the instances ``config`` asks for that are not there (started by
        the supervisor's next tick)."""
        for key, names in layout(config, cams).items():
            if key not in self.instances:
                settings = config.processors[key[0]]
                inst = SharedInstance(key[0], key[1], settings, [cams[n] for n in names])
                self.instances[key] = inst


def shared_only_change(old: CameraConfig, new: CameraConfig) -> bool:
    """Whether a camera of a shared processor changed only in what its shared
    processor is (type, options): its reader then keeps running; the instance
    restarts. (Any other setting restarts the camera as a whole, as today.)"""
    if old.shared_processor is None or new.shared_processor is None:
        return False
    same = {"processor": None, "shared_processor": None}
    return (
        old.model_copy(update=same) == new.model_copy(update=same)
        and old.frame_format == new.frame_format
    )
