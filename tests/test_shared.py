"""Shared processors ([processors.NAME]) and batching, against the real daemon (issue 17)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from daemon import Daemon, start_daemon, wait_for

from edged.config import parse_config
from edged.errors import ConfigError

HEAD = '[events]\npath = "events.jsonl"\n[daemon]\nstate_dir = "state"\n'


def _camera(name: str, processor: str, fps: int = 25, extra: str = "") -> str:
    return (
        f'[cameras.{name}]\nsource = "synthetic"\nfps = {fps}\nwidth = 64\nheight = 48\n'
        f'processor = "{processor}"\n{extra}\n'
    )


def _shared(name: str, options: str) -> str:
    return f'[processors.{name}]\ntype = "plugins:BatchRecorder"\n{options}\n'


def _pids(d: Daemon) -> dict[str, int]:
    return {p.name(): p.pid for p in d.children()}


def _problems(toml: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(toml, "edged.toml")
    return info.value.problems


# -- config ---------------------------------------------------------------------


def test_a_camera_naming_an_unknown_processor_is_told_the_names_there_are() -> None:
    toml = _shared("detector", "") + _camera("front", "detectr")
    (problem,) = _problems(toml)
    assert problem.startswith("edged.toml:9: cameras.front.processor: unknown processor 'detectr'")
    assert "did you mean 'detector'?" in problem and "(detector)" in problem


def test_batch_size_and_instances_below_one_and_bad_options_are_reported_at_once() -> None:
    toml = _shared("detector", "batch_size = 0\ninstances = 0\nper_call = -1") + _camera(
        "front", "detector"
    )
    problems = _problems(toml)
    assert problems == [
        "edged.toml:3: processors.detector.batch_size: Input should be greater than or equal to 1",
        "edged.toml:4: processors.detector.instances: Input should be greater than or equal to 1",
        "edged.toml:5: processors.detector.per_call: Input should be greater than or equal to 0",
    ]


def test_a_processor_type_given_as_a_string_still_works_beside_processors() -> None:
    config = parse_config(_shared("detector", "") + _camera("front", "motion"), "edged.toml")
    assert config.cameras["front"].processor.type == "motion"
    assert config.cameras["front"].shared_processor is None


def test_check_config_reports_who_shares_what_and_warns_of_an_unused_one(tmp_path: Path) -> None:
    path = tmp_path / "edged.toml"
    path.write_text(
        HEAD
        + _shared("detector", "batch_size = 4")
        + _shared("spare", "")
        + _camera("front", "detector")
        + _camera("back", "detector")
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    out = subprocess.run(
        [sys.executable, "-m", "edged", "check-config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert (
        "processor detector (plugins:BatchRecorder, 1 instance, batch 4): front, back" in out.stdout
    )
    assert f"warning: {path}:8: processors.spare: no camera uses it" in out.stdout


# -- the daemon -----------------------------------------------------------------


@pytest.mark.slow
def test_a_slow_camera_is_not_starved_by_a_fast_one(tmp_path: Path, daemons: list) -> None:
    # `fast` (freshness "newest": each frame published) always has a new frame
    # by the time a call ends; a scan that always began with it would never get
    # to `slow`.
    newest = 'freshness = "newest"'
    toml = (
        HEAD
        + _shared("det", "per_call = 0.03")
        + _camera("fast", "det", fps=60, extra=newest)
        + _camera("slow", "det", fps=3, extra=newest)
    )
    d = start_daemon(daemons, tmp_path, toml)
    wait_for(
        "events of both cameras",
        lambda: (
            {"fast", "slow"} <= {e["camera"] for e in d.events()}
            and Counter(e["camera"] for e in d.events())["slow"] >= 4
        ),
        timeout=15,
    )
    seen = Counter(e["camera"] for e in d.events())
    assert seen["fast"] > seen["slow"]
    assert d.stop() == 0


@pytest.mark.slow
def test_batches_hold_several_cameras_and_each_event_names_its_own(
    tmp_path: Path, daemons: list
) -> None:
    names = ["a", "b", "c", "d"]
    toml = (
        HEAD
        + _shared("det", "batch_size = 4\nbatch_wait = '50ms'\nper_call = 0.1")
        + "".join(_camera(n, "det") for n in names)
    )
    d = start_daemon(daemons, tmp_path, toml)
    d.wait_events(40, "batch")
    events = d.events("batch")
    assert max(e["data"]["size"] for e in events) > 1
    assert all(e["data"]["size"] <= 4 for e in events)
    assert all(e["camera"] == e["data"]["camera"] for e in events)
    assert {e["camera"] for e in events} == set(names)
    assert len({e["data"]["pid"] for e in events}) == 1  # one instance, one model
    assert d.stop() == 0


@pytest.mark.slow
def test_a_killed_shared_worker_restarts_alone(tmp_path: Path, daemons: list) -> None:
    toml = (
        HEAD
        + _shared("det", "batch_size = 2")
        + _camera("a", "det")
        + _camera("b", "det")
        + _camera("c", "plugins:BatchRecorder")  # a processor of its own
    )
    d = start_daemon(daemons, tmp_path, toml)
    wait_for("all children", lambda: len(d.children()) == 5)
    d.wait_events(10)
    before = _pids(d)
    assert "worker:det1" in before
    mark = d.mark()
    os.kill(before["worker:det1"], signal.SIGKILL)
    d.wait_log("processor det (instance 1) (pid", since=mark)
    assert "killed by SIGKILL" in d.log[mark:] and "its cameras (a, b) keep streaming" in d.log
    wait_for(
        "a new det worker", lambda: _pids(d).get("worker:det1") not in (None, before["worker:det1"])
    )
    after = _pids(d)
    for name in ("reader:a", "reader:b", "reader:c", "worker:c"):
        assert after[name] == before[name], name
    new = after["worker:det1"]
    wait_for(
        "events of the new worker for a and b",
        lambda: {e["camera"] for e in d.events() if e["data"]["pid"] == new} >= {"a", "b"},
    )
    assert "camera a: restarting (processor det (instance 1) killed by SIGKILL)" in d.log
    assert d.stop() == 0


@pytest.mark.slow
def test_a_shared_worker_stuck_in_process_batch_is_killed(tmp_path: Path, daemons: list) -> None:
    toml = (
        HEAD
        + _shared("det", "batch_size = 2\nhang_after = 3")
        + _camera("a", "det", extra="process_timeout = 1")
        + _camera("b", "det", extra="process_timeout = 1")
    )
    d = start_daemon(daemons, tmp_path, toml)
    d.wait_log("stuck in process()", timeout=15)
    d.wait_log("processor det (instance 1) (pid", timeout=10)
    assert "killed by SIGKILL" in d.log
    assert "restarting (processor det (instance 1) stuck: killed)" in d.log
    assert d.stop() == 0


@pytest.mark.slow
def test_reloading_a_shared_processor_restarts_its_instance_not_the_readers(
    tmp_path: Path, daemons: list
) -> None:
    def config(per_call: str) -> str:
        return (
            HEAD
            + _shared("det", f"batch_size = 2\nper_call = {per_call}")
            + _camera("a", "det")
            + _camera("b", "det")
        )

    d = start_daemon(daemons, tmp_path, config("0.0"))
    wait_for("all children", lambda: len(d.children()) == 3)
    d.wait_events(10)
    before = _pids(d)
    mark = d.mark()
    d.config.write_text(config("0.01"))
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log("reloaded:", since=mark, timeout=20)
    assert "0 added, 0 removed, 0 restarted, 2 unchanged" in d.log[mark:]
    wait_for(
        "a new det worker",
        lambda: _pids(d).get("worker:det1") not in (None, before["worker:det1"]),
    )
    after = _pids(d)
    assert after["reader:a"] == before["reader:a"] and after["reader:b"] == before["reader:b"]
    new = after["worker:det1"]
    wait_for("events of the new worker", lambda: any(e["data"]["pid"] == new for e in d.events()))
    assert d.stop() == 0
