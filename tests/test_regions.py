"""Zones and masks: relative polygons per camera, validated by check-config and
handed to the processor (inline or shared) in its worker process."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon import start_daemon
from helpers import daemon_toml

from edged.cli import main
from edged.errors import EX_CONFIG
from edged.regions import Box, CameraRegions, Region, point_in_polygon

SQUARE = ((0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (0.0, 0.5))


def test_point_in_polygon_convex_and_concave() -> None:
    assert point_in_polygon(0.25, 0.25, SQUARE)
    assert not point_in_polygon(0.75, 0.25, SQUARE)
    # An L shape: the notch at the top right is outside.
    ell = ((0, 0), (0.2, 0), (0.2, 0.8), (1, 0.8), (1, 1), (0, 1))
    assert point_in_polygon(0.1, 0.5, ell)
    assert point_in_polygon(0.9, 0.9, ell)
    assert not point_in_polygon(0.9, 0.5, ell)


def test_camera_regions_name_zones_and_masks() -> None:
    cam = CameraRegions(
        "c",
        zones=(Region("left", SQUARE), Region("all", ((0, 0), (1, 0), (1, 1), (0, 1)))),
        masks=(Region("tree", ((0.9, 0.9), (1, 0.9), (1, 1))),),
    )
    assert cam.zones_at(0.1, 0.1) == ["left", "all"]
    assert cam.zones_at(0.9, 0.1) == ["all"]
    assert cam.masked(0.99, 0.95)
    assert not cam.masked(0.5, 0.5)
    assert Box(0.1, 0.2, 0.3, 0.4, "person", 0.9).as_dict() == {
        "box": [0.1, 0.2, 0.3, 0.4],
        "label": "person",
        "score": 0.9,
    }


def _check(tmp_path: Path, body: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "edged.toml"
    path.write_text(daemon_toml({"door": 'source = "synthetic"'}) + body)
    code = main(["check-config", str(path)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("body", "line", "problem"),
    [
        ("[cameras.door.zones.porch]\npoints = [[0, 0], [1, 1]]\n", 2, "at least 3"),
        (
            "[cameras.door.zones.porch]\npoints = [[0, 0], [1.5, 0], [1, 1]]\n",
            2,
            "less than or equal to 1",
        ),
        (
            "[cameras.door.masks.tree]\npoints = [[0, 0], [-0.1, 0], [1, 1]]\n",
            2,
            "greater than or equal to 0",
        ),
        ("[cameras.door.zones.porch]\npoints = [[0, 0], [0.5, 0.5], [1, 1]]\n", 1, "no area"),
        (
            "[cameras.door.zones.Porch]\npoints = [[0, 0], [1, 0], [1, 1]]\n",
            None,
            "region name 'Porch'",
        ),
        ("[cameras.door.zones.porch]\npoint = [[0, 0], [1, 0], [1, 1]]\n", None, "point"),
    ],
)
def test_bad_regions_are_config_errors_with_their_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, line: int | None, problem: str
) -> None:
    code, err = _check(tmp_path, body, capsys)
    assert code == EX_CONFIG, err
    assert problem in err, err
    assert "cameras.door." in err, err
    assert "Traceback" not in err
    if line is not None:  # the line of the body that is wrong, counted from its start
        base = daemon_toml({"door": 'source = "synthetic"'}).count("\n")
        assert f"edged.toml:{base + line}: cameras.door." in err, err


def test_good_regions_pass_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = (
        "[cameras.door.zones.porch]\npoints = [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]\n"
        "[cameras.door.masks.tree]\npoints = [[0, 0], [0.1, 0], [0.1, 0.1]]\n"
    )
    code, err = _check(tmp_path, body, capsys)
    assert code == 0, err


ZONES = (
    "[cameras.{cam}.zones.middle]\n"
    "points = [[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]]\n"
    "[cameras.{cam}.zones.top]\npoints = [[0, 0], [1, 0], [1, 0.2]]\n"
    "[cameras.{cam}.masks.corner]\npoints = [[0.9, 0.9], [1, 0.9], [1, 1]]\n"
)


@pytest.mark.slow
@pytest.mark.parametrize("shared", [False, True])
def test_the_processor_sees_its_cameras_regions(
    tmp_path: Path, daemons: list, shared: bool
) -> None:
    cam = 'source = "synthetic"\nfps = 10\n'
    if shared:
        toml = daemon_toml(
            {"a": cam + 'processor = "reg"', "b": cam + 'processor = "reg"'},
            sections='[processors.reg]\ntype = "plugins:RegionsProcessor"',
        )
    else:
        toml = daemon_toml({"a": cam}, processors={"a": 'type = "plugins:RegionsProcessor"'})
    toml += ZONES.format(cam="a")
    d = start_daemon(daemons, tmp_path, toml)
    d.wait_events(1, "regions")
    events = d.events("regions")
    if shared:
        d.wait_events(4, "regions")
        events = d.events("regions")
        assert {e["camera"] for e in events} == {"a", "b"}
    a = next(e for e in events if e["camera"] == "a")
    assert a["data"]["zones"]["middle"] == [[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]]
    assert a["data"]["masks"] == ["corner"]
    assert a["data"]["centre_in"] == ["middle"]
    if shared:
        b = next(e for e in events if e["camera"] == "b")
        assert b["data"] == {"zones": {}, "masks": [], "centre_in": []}
    assert d.stop() == 0
