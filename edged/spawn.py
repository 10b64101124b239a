"""How the supervisor makes its children: readers, workers and shared workers.

Each is a process of the fork server's context (``edged.startmethod``), made
but not started: the supervisor starts it and hands it to the ``Child`` that
keeps its restart policy. What a child needs besides its camera (the log
settings, the state folder for snapshots, the node name for events) comes from
the configuration, and follows a reload through :meth:`Spawner.configure`.
"""

from __future__ import annotations

from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

from edged.logs import LogSettings
from edged.reader import reader_main
from edged.shared_worker import shared_worker_main
from edged.startmethod import ChildContext
from edged.worker import worker_main

if TYPE_CHECKING:
    from edged.camera import CameraRuntime
    from edged.config import Config
    from edged.pool import SharedInstance


class Spawner:
    """Makes reader, worker and shared-worker processes for the supervisor."""

    def __init__(self, ctx: ChildContext, config: Config) -> None:
        self.ctx = ctx
        self.configure(config)

    def configure(self, config: Config) -> None:
        """The settings of children made from now on (after a reload: the new ones)."""
        self.log_settings = LogSettings(config.logging.level, config.logging.format)
        self.state_dir = config.daemon.state_dir
        self.node = config.node

    def reader(self, cam: CameraRuntime) -> BaseProcess:
        return self.ctx.Process(
            target=reader_main,
            args=(cam.cfg, cam.slot.name, cam.slot.doorbell_w, self.log_settings),
            name=f"edged-reader-{cam.name}",
        )

    def worker(self, cam: CameraRuntime) -> BaseProcess:
        return self.ctx.Process(
            target=worker_main,
            args=(
                cam.cfg,
                cam.slot.name,
                cam.slot.doorbell_r,
                cam.new_events_pipe(),
                self.log_settings,
                self.state_dir,
                self.node,
            ),
            name=f"edged-worker-{cam.name}",
        )

    def shared(self, inst: SharedInstance) -> BaseProcess:
        return self.ctx.Process(
            target=shared_worker_main,
            args=(
                inst.name,
                inst.index,
                inst.settings,
                [cam.cfg for cam in inst.cams],
                [(cam.slot.name, cam.slot.doorbell_r) for cam in inst.cams],
                inst.new_events_pipe(),
                self.log_settings,
                self.state_dir,
                self.node,
            ),
            name=f"edged-worker-{inst.name}-{inst.index}",
        )
