"""The supervisor: owns the config, the child processes, the sinks and the signals.

One reader and one worker process per camera, forked from a server that has
preloaded what they import (edged/startmethod.py; nothing forks after OpenCV
or threads are running). Signal handlers
only enqueue; the main loop waits on the workers' event pipes, the children's
sentinels and the signal wake-up socket with a tick, then dispatches:
``handle_term``, ``reap``, ``restart``, ``check_health``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

from edged import hangs
from edged.camera import CameraRuntime, CameraSnapshot
from edged.config import CameraConfig, Config, load_config
from edged.errors import EX_OK, EXIT_END_OF_STREAM, CameraBusyError, ConfigError, StartupError
from edged.frames import leftover_segments, unlink_segment
from edged.locks import CameraLocks
from edged.logs import LogSettings, errors_logged, setup_logging
from edged.metrics import Metrics, MetricsSources
from edged.overlay import Overlays
from edged.pool import Pool, SharedInstance, shared_only_change
from edged.redact import scrub
from edged.reload import ReloadVerdicts
from edged.router import EventRouter, open_writer
from edged.sinks.jsonl import JsonlWriter, SinkError
from edged.sinks.mqtt import MqttSink
from edged.spawn import Spawner
from edged.startmethod import child_context, start_server, stop_server
from edged.states import CameraState, Role
from edged.systemd import Notifier, format_status
from edged.web import Web, WebSources

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

__all__ = ["Supervisor"]

TICK = 0.25


@dataclasses.dataclass(frozen=True)
class ReloadPlan:
    """What a reload does to the running cameras (names, in config order)."""

    wanted: list[str]  # what runs afterwards
    removed: list[str]  # stopped for good
    changed: list[str]  # restarted with new settings
    added: list[str]  # started
    vanished: list[str]  # asked for with --camera, gone from the config


def plan_reload(
    running: Mapping[str, CameraConfig], requested: list[str] | None, new: Config
) -> ReloadPlan:
    """The reload decision, apart from carrying it out: ``running`` cameras and
    their settings, ``requested`` the --camera names (None: all), ``new`` the config."""
    wanted = [n for n in (requested or new.cameras) if n in new.cameras]
    return ReloadPlan(
        wanted=wanted,
        removed=[n for n in running if n not in wanted],
        changed=[
            n
            for n in running
            if n in wanted
            and new.cameras[n] != running[n]
            # Only its shared processor changed: the pool restarts that, not the reader.
            and not shared_only_change(running[n], new.cameras[n])
        ],
        added=[n for n in wanted if n not in running],
        vanished=[n for n in requested or [] if n not in new.cameras],
    )


class Supervisor:
    def __init__(self, config: Config, cameras: list[str] | None = None) -> None:
        self.config = config
        self.requested = cameras  # from --camera; None: every camera in the config
        # What sets this process's own files in state_dir (outbox, spill file) and
        # its MQTT session apart: its cameras joined by "." when it runs only some
        # (edged@NAME), else "". Fixed for the process's life: a reload that adds
        # or removes cameras does not move its files.
        subset = cameras is not None and set(cameras) != set(config.cameras)
        self.instance = ".".join(sorted(cameras)) if cameras and subset else ""
        self.ctx = child_context()  # its server starts in run(), before any thread
        self.spawn = Spawner(self.ctx, config)
        self.cams: dict[str, CameraRuntime] = {}
        self.pool = Pool()  # the instances of [processors] tables
        self.locks = CameraLocks(config.daemon.state_dir)
        # Before any child exists: it takes NOTIFY_SOCKET out of the environment.
        self.notifier = Notifier()
        self._status_due = 0.0
        self._status_prefix = ""  # "reload failed: ...; " until a reload succeeds
        self._ticked = time.monotonic()  # when the last tick ended
        self.signals: deque[int] = deque()
        self.stopping = False
        # Hooks for the metrics and sinks: on_frame(camera, age, took) for every
        # processed frame (workers batch these: up to 0.25 s late), on_state(snapshot)
        # on every state change. Events have their own owner, self.events.
        self.on_frame: list[Callable[[str, float, float], None]] = []
        self.on_state: list[Callable[[CameraSnapshot], None]] = []
        self.metrics: Metrics | None = None
        self.mqtt: MqttSink | None = None
        self.verdicts: ReloadVerdicts | None = None  # for `edged reload`, once started
        self.events = EventRouter(config.events, config.daemon.state_dir, self.instance)
        self.overlays = Overlays()  # every camera's newest boxes, for the web page

    # -- lifecycle ---------------------------------------------------------

    def run(self, held_signals: list[int] | None = None) -> int:
        """Run until SIGTERM or SIGINT; ``held_signals``: those that arrived before
        this installed its handlers (``edged run`` catches them into that list
        from its start), handled first."""
        for name in leftover_segments():
            try:
                if unlink_segment(name, tracked=False):
                    log.info("removed shared memory %s left by a process that is gone", name)
            except PermissionError:
                # Another user's (a root `edged run` that crashed): not ours to
                # remove, and no reason not to start.
                log.warning("cannot remove shared memory %s left by another user", name)
        self._install_signals(held_signals)
        try:
            # First: before the metrics, MQTT and reload threads, and after the
            # Notifier took NOTIFY_SOCKET out of the environment it inherits.
            start_server(self.ctx)
            names = self.requested or list(self.config.cameras)
            for name in names:
                self.locks.lock(name)
            for name in names:
                self.cams[name] = CameraRuntime(self.config.cameras[name])
            self.pool.add_missing(self.config, self.cams)
            for unused in self.config.unused_processors():
                log.warning("processors.%s: no camera uses it", unused)
            self.events.load_spill()  # under the camera locks: no other edged has this file
            if self.config.metrics.enabled:
                sources = MetricsSources(
                    cameras=self.snapshot,
                    event_file=self.events.stats,
                    mqtt=lambda: self.mqtt.stats() if self.mqtt is not None else None,
                )
                self.metrics = Metrics(sources, self.config, list(self.cams))
                self.metrics.start()
                if self.config.web.serves(self.metrics.listen):
                    self._start_web(self.metrics)
                self.on_frame.append(self.metrics.observe_frame)
                self.events.on_accept.append(self.metrics.observe_event)
                self.events.on_written.append(self.metrics.file_written)
            if self.config.mqtt is not None:
                self.start_mqtt()
            log.info(
                "edged started: %d camera(s): %s (pid %d)",
                len(self.cams),
                ", ".join(self.cams),
                os.getpid(),
            )
            self.verdicts = ReloadVerdicts(self.config.daemon.state_dir)
            self.verdicts.start()
            # Children are spawned by the first tick; a camera still connecting
            # does not hold up READY.
            self.tick()
            self.notifier.ready(format_status(self.snapshot()))
            while not self.stopping:
                self.tick()
            self.shutdown()
        finally:
            self._close()
        return EX_OK

    def _install_signals(self, held: list[int] | None = None) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._enqueue_signal)
        if held:
            # Read only now that nothing appends to it: before any signal that
            # reached our own handler in between.
            self.signals.extendleft(reversed(held))

    def _enqueue_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)

    def tick(self) -> None:
        handles: list[Any] = [self._wake_r]
        for cam in self.cams.values():
            handles += cam.event_pipes()
            handles += [c.process.sentinel for c in cam.children() if c.process]
        for inst in self.pool:
            handles += inst.event_pipes()
            handles += [inst.child.process.sentinel] if inst.child.process else []
        ready = wait(handles, timeout=TICK)
        if self._wake_r in ready:
            try:
                while self._wake_r.recv(4096):
                    pass
            except BlockingIOError:
                pass
        while self.signals:
            signum = self.signals.popleft()
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.handle_term(signum)
            elif signum == signal.SIGHUP:
                self.reload()
        self.collect_events()
        now = time.monotonic()
        for inst in self.pool:
            self.reap_shared(inst, now)
        if not self.stopping:  # before the cameras' health: it says whether they run
            self.restart_shared(now)
        for cam in self.cams.values():
            self.reap(cam, now)
            if not self.stopping:
                self.restart(cam, now)
                self.check_health(cam, now)
        self.events.tick()
        self.notify(now)
        if self.metrics is not None:
            self.metrics.loop_alive()
        self._ticked = time.monotonic()

    def notify(self, now: float) -> None:
        # Pinged from here only: a loop that stops turning (a hung disk write,
        # a deadlock) stops the pings and systemd kills and restarts us.
        if self.notifier.watchdog_due(now):
            self.notifier.ping()
        if now >= self._status_due and not self.stopping:
            self._status_due = now + 1.0
            self.notifier.status(self._status_prefix + format_status(self.snapshot()))

    def handle_term(self, signum: int) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        self.stopping = True

    def reload(self) -> None:
        """handle_hup(), its verdict (and the errors it logged) kept for `edged reload`."""
        with errors_logged() as problems:
            self.handle_hup()
        if self.verdicts is not None:
            self.verdicts.record(not self._status_prefix, problems)

    def handle_hup(self) -> None:
        self.notifier.reloading()
        path = self.config.path
        log.info("received SIGHUP: reloading %s", path)
        writer = None
        try:
            new = load_config(path, cameras=self.requested)
            if new.events != self.config.events:
                # Opened before anything changes: a reload that cannot write
                # its event file changes nothing, rather than stopping edged.
                writer = open_writer(new.events)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload failed: %s", problem)
            n = len(exc.problems)
            log.error("reload failed: %d error(s); still running the previous configuration", n)
            self._status_prefix = f"reload failed: {n} error(s), see journal; "
        except SinkError as exc:
            log.error("reload failed: %s; still running the previous configuration", exc)
            self._status_prefix = "reload failed: cannot open the event file, see journal; "
        except Exception as exc:
            # Whatever else a config file can cause (an OSError from a path no
            # check foresaw, say) must not stop cameras that are running fine.
            if writer is not None:
                writer.close()
            log.error(
                "reload failed: %s: %s; still running the previous configuration",
                path,
                scrub(f"{type(exc).__name__}: {exc}")[:500],
            )
            log.debug("reload failure", exc_info=True)
            self._status_prefix = "reload failed, see journal; "
        else:
            self._status_prefix = ""
            try:
                self.apply(new, writer)
            except Exception as exc:
                # Half applied: say so, and keep the daemon (and what runs) alive.
                log.error(
                    "reload of %s failed while applying it: %s",
                    path,
                    scrub(f"{type(exc).__name__}: {exc}")[:500],
                )
                log.debug("reload failure", exc_info=True)
                self._status_prefix = "reload failed while applying, see journal; "
        self._status_due = 0.0
        self.notifier.ready(self._status_prefix + format_status(self.snapshot()))

    def apply(self, new: Config, writer: JsonlWriter | None = None) -> None:
        """Move to a new configuration; cameras whose settings did not change keep streaming.

        ``writer``: the new configuration's event file, opened by the caller
        before anything changed; None when ``[events]`` is the same."""
        running = {name: cam.cfg for name, cam in self.cams.items()}
        plan = plan_reload(running, self.requested, new)
        for name in plan.vanished:
            log.warning("camera %s is no longer in the configuration: stopping it", name)
        wanted, removed, changed, added = plan.wanted, plan.removed, plan.changed, plan.added
        # Instances whose processor or cameras change stop first: they map the slots.
        stale = self.pool.stale(new, {n: new.cameras[n] for n in wanted})
        going = [self.cams.pop(n) for n in removed + changed]
        self.stop_cameras(going, stale)
        for inst in stale:
            inst.close_pipes()
        for name, cam in self.cams.items():
            cam.cfg = new.cameras[name]  # the same but for its shared processor
        for cam in going:
            cam.close()
        for name in removed:
            self.locks.unlock(name)
        old, self.config = self.config, new
        if new.logging != old.logging:
            setup_logging(LogSettings(new.logging.level, new.logging.format))
        self.spawn.configure(new)
        self.locks.state_dir = new.daemon.state_dir  # cameras added from now on
        self.events.reconfigure(new.events, writer)
        # What a reload does not apply (the listener, the broker session, where
        # state lives) it says, rather than claim it reloaded.
        later = [f"[{s}]" for s in ("metrics", "mqtt") if getattr(new, s) != getattr(old, s)]
        if new.daemon.state_dir != old.daemon.state_dir:
            later.append("daemon.state_dir")
        for what in later:
            log.warning("reload: %s changed; it takes effect when edged restarts", what)
        if not wanted:
            log.warning("reload: no camera left to run; edged idles until its next reload")
        for name in changed + added:
            if name in added:
                try:
                    self.locks.lock(name)
                except (CameraBusyError, StartupError) as exc:  # busy, or no state_dir
                    log.error("not starting camera %s: %s", name, exc)
                    continue
            self.cams[name] = CameraRuntime(new.cameras[name])
        self.pool.add_missing(new, self.cams)
        for unused in new.unused_processors():
            log.warning("reload: processors.%s: no camera uses it", unused)
        if self.mqtt is not None:  # Home Assistant discovery and snapshot topics follow
            self.mqtt.set_cameras({n: c.cfg for n, c in self.cams.items()}, new.cameras)
        unchanged = len(wanted) - len(changed) - len(added)
        log.info(
            "reloaded: %d added, %d removed, %d restarted, %d unchanged camera(s)",
            len(added),
            len(removed),
            len(changed),
            unchanged,
        )

    def _start_web(self, metrics: Metrics) -> None:
        """The page on the metrics listener (edged.web); it reads, never blocks this loop."""

        def frame(name: str) -> tuple[np.ndarray, int, float] | None:
            cam = self.cams.get(name)
            return cam.slot.copy_latest() if cam is not None else None

        sources = WebSources(
            cameras=self.snapshot,
            configs=lambda: {n: c.cfg for n, c in list(self.cams.items())},
            frame=frame,
            overlay=self.overlays.get,
            state_dir=self.config.daemon.state_dir,
            node=self.config.node,
        )
        metrics.web = Web(self.config.web, sources)
        self.events.on_written.append(metrics.web.events.written)
        auth = "basic auth" if self.config.web.has_password else "no password: loopback only"
        log.info("serving the web page on http://%s/ (%s)", metrics.shown_address, auth)

    def snapshot(self) -> dict[str, CameraSnapshot]:
        """Every camera's state and counters, for metrics, health and STATUS."""
        now = time.monotonic()
        # list(): the metrics thread calls this while a reload may change self.cams
        return {name: cam.snapshot(now) for name, cam in list(self.cams.items())}

    def start_mqtt(self) -> None:
        """Start the MQTT sink; it runs in threads of its own and never blocks this one."""
        assert self.config.mqtt is not None
        # A process running some cameras (edged@NAME) keeps its own outbox and client id.
        cameras = {n: c.cfg for n, c in self.cams.items()}
        self.mqtt = MqttSink(
            self.config.mqtt,
            self.config.daemon.state_dir,
            self.instance,
            cameras,
            self.config.cameras,
        )
        if self.metrics is not None:
            metrics = self.metrics
            self.mqtt.on_ack = lambda record: metrics.event_acknowledged("mqtt", record)
        now = time.monotonic()
        for cam in self.cams.values():  # "starting", not the last run's retained state
            self.mqtt.on_state(cam.snapshot(now))
        self.mqtt.start()
        self.events.on_written.append(self.mqtt.submit)
        self.on_state.append(self.mqtt.on_state)

    # -- children ----------------------------------------------------------

    def restart_shared(self, now: float) -> None:
        for inst in self.pool:
            if inst.child.is_due(now):
                proc = self.spawn.shared(inst)
                proc.start()
                inst.started(proc, now)
            inst.child.settle(now)

    def reap_shared(self, inst: SharedInstance, now: float) -> None:
        proc = inst.child.process
        if proc is None or proc.is_alive():
            return
        proc.join()
        code, pid = proc.exitcode, proc.pid
        proc.close()
        if self.stopping:
            inst.stopping = True
        inst.reaped(code, pid, now)

    def restart(self, cam: CameraRuntime, now: float) -> None:
        for child in cam.children():
            if child.is_due(now):
                cam.bank_counters(child.role)
                reader = child.role == Role.READER
                proc = self.spawn.reader(cam) if reader else self.spawn.worker(cam)
                proc.start()
                if not reader:
                    cam.handed_over()
                child.started_process(proc, now)
                log.debug("camera %s: %s started (pid %s)", cam.name, child.role, proc.pid)

    def reap(self, cam: CameraRuntime, now: float) -> None:
        for child in cam.children():
            proc = child.process
            if proc is None or proc.is_alive():
                continue
            proc.join()
            code, pid = proc.exitcode, proc.pid
            proc.close()
            if child.role == Role.READER:
                cam.slot.reap_writer()
            if self.stopping or cam.stopping:
                child.stopped()
                continue
            if child.role == Role.READER and code == EXIT_END_OF_STREAM:
                cam.ended = True
                child.ended()
                continue
            exit_ = child.exited(code, now)
            if exit_.crash_loop_began:
                log.error(
                    "camera %s: %s restarted %d times in %.0fs: crash loop; retrying every %.0fs",
                    cam.name,
                    child.role,
                    exit_.recent,
                    exit_.window_span,
                    child.policy.maximum,
                )
            cam.restart_reasons[exit_.reason] = cam.restart_reasons.get(exit_.reason, 0) + 1
            cam.last_error = f"{child.role} {exit_.description}"
            note = cam.slot.reader_note if child.role == Role.READER else ""
            log.warning(
                "camera %s: %s (pid %s) %s after %.1fs; restarting in %.1fs%s",
                cam.name,
                child.role,
                pid,
                exit_.description,
                exit_.ran,
                exit_.delay,
                f"; last FFmpeg output: {note.replace(chr(10), ' | ')}" if note else "",
            )

    def check_health(self, cam: CameraRuntime, now: float) -> None:
        hangs.check_reader(cam, now)
        hangs.check_worker(cam, now, loop_late=now - self._ticked > hangs.WORKER_SILENCE / 4)
        for child in cam.children():
            child.settle(now)
        state, reason = cam.state_at(now)
        # A new cause while reconnecting is news too (a stall's reason, its
        # growing age, is not).
        if state != cam.state or (state == "reconnecting" and reason != cam.reason):
            quiet = (CameraState.STREAMING, CameraState.STARTING, CameraState.ENDED)
            level = logging.INFO if state in quiet else logging.WARNING
            log.log(
                level,
                "camera %s: %s%s",
                cam.name,
                state,
                f" ({reason})" if reason else "",
            )
            if state == CameraState.STALLED:
                cam.stalls += 1
            if state not in (CameraState.STREAMING, CameraState.STARTING):
                cam.last_error = f"{state}: {reason}" if reason else state
            if state != cam.state:
                cam.state_since = time.time()
            cam.state, cam.reason = state, reason
            snap = cam.snapshot(now)
            for hook in self.on_state:
                hook(snap)

    # -- events --------------------------------------------------------------

    def collect_events(
        self,
        cams: list[CameraRuntime] | None = None,
        instances: list[SharedInstance] | None = None,
    ) -> None:
        """Accept what the workers sent: of ``cams`` and ``instances``, or of every
        running camera and shared instance."""
        if cams is None:
            cams, instances = list(self.cams.values()), list(self.pool)
        for cam in cams:
            cam.drain(cam.name, self._frame_done, self.events.accept, self.overlays.update)
        for inst in instances or []:
            inst.drain(inst.label, self._frame_done, self.events.accept, self.overlays.update)

    def _frame_done(self, camera: str, age: float, took: float) -> None:
        for hook in self.on_frame:
            hook(camera, age, took)

    # -- shutdown ------------------------------------------------------------

    def stop_cameras(
        self, cams: list[CameraRuntime], instances: list[SharedInstance] | None = None
    ) -> None:
        """Stop these cameras' children and these shared instances: SIGTERM, a grace
        period, SIGKILL; keep their events."""
        instances = instances or []
        for cam in cams:
            cam.stopping = True
        for inst in instances:
            inst.stopping = True
        procs = [c.process for cam in cams for c in cam.children() if c.process]
        procs += [inst.child.process for inst in instances if inst.child.process]
        for proc in procs:
            proc.terminate()
        deadline = time.monotonic() + self.config.daemon.stop_timeout
        while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
            live: list[Any] = [p.sentinel for p in procs if p.is_alive()]
            # During a reload the cameras that keep running go on too: read
            # their pipes, or their workers block on a full one.
            running = [c for c in self.cams.values() if c not in cams]
            shared = instances + [i for i in self.pool if i not in instances]
            conns = [conn for p in [*cams, *running, *shared] for conn in p.event_pipes()]
            wait(live + conns, timeout=min(TICK, max(0.0, deadline - time.monotonic())))
            # These cameras as well as self.cams: a reload has already taken them out.
            self.collect_events(cams + running, shared)
            if self.notifier.watchdog_due(time.monotonic()):
                self.notifier.ping()
            if self.metrics is not None:  # /healthz: a long stop_timeout is no hang
                self.metrics.loop_alive()
        for proc in procs:
            if proc.is_alive():
                log.warning("%s (pid %s) did not stop in time: killing it", proc.name, proc.pid)
                proc.kill()
        now = time.monotonic()
        for cam in cams:
            self.reap(cam, now)
        for inst in instances:
            self.reap_shared(inst, now)
        # A worker's last events are in the pipe even if it was killed.
        self.collect_events(cams, instances)

    def shutdown(self) -> None:
        self.notifier.stopping()
        self.stop_cameras(list(self.cams.values()), list(self.pool))
        self.events.stop()
        if self.mqtt is not None:
            self.mqtt.stop()  # after the last events reached it
        for cam in self.cams.values():
            c = cam.counters()
            log.info(
                "camera %s: %d frames decoded, %d processed, %d frames skipped, "
                "%d processor errors, %d events, %d reader restarts, %d worker restarts",
                cam.name,
                c["frames_decoded"],
                c["frames_processed"],
                c["frames_skipped"],
                c["processor_errors"],
                c["events"],
                cam.reader.restarts,
                cam.worker.restarts,
            )
        log.info("edged stopped: %d events written this run", self.events.writer.lines_written)

    def _close(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
        for inst in self.pool:  # first: they map the cameras' slots
            proc = inst.child.process
            if proc is not None and proc.is_alive():
                proc.kill()
                proc.join()
            inst.close_pipes()
        for cam in self.cams.values():
            for child in cam.children():
                if child.process is not None and child.process.is_alive():
                    child.process.kill()
                    child.process.join()
            cam.close()
        self.locks.unlock_all()
        if self.verdicts is not None:
            self.verdicts.close()
        self.events.close()
        self.notifier.close()
        signal.set_wakeup_fd(-1)
        stop_server()  # every child is gone
        # multiprocessing's resource tracker would outlive us until exit, and
        # under KillMode=mixed systemd SIGKILLs whatever is left: stop it now,
        # after every segment is gone (private API, hence the guard).
        try:
            from multiprocessing import resource_tracker

            resource_tracker._resource_tracker._stop()  # type: ignore[attr-defined]
        except Exception:
            log.debug("could not stop the resource tracker", exc_info=True)
