"""Config loading: every kind of mistake is reported with file, line, key path and reason."""

from __future__ import annotations

import os
import pickle
import resource
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edged.cli import main
from edged.config import (
    ByteSize,
    CameraConfig,
    CameraDefaults,
    Config,
    DaemonConfig,
    Duration,
    EventsConfig,
    LoggingConfig,
    MetricsConfig,
    camera_from_dict,
    load_config,
    parse_byte_size,
    parse_config,
    parse_duration,
    redact_url,
    scrub,
)
from edged.errors import EX_CONFIG, ConfigError
from edged.plugin import error_text
from edged.processor import Event, Frame, Processor, resolve_processor

REPO = Path(__file__).resolve().parent.parent
SECRET = "hunter2-s3cret"


class Counter(Processor):
    """A processor with options, for the tests."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        min_area: int = Field(500, gt=0)
        window: Duration = 2.0
        label: str = "x"

    def process(self, frame: Frame) -> Iterable[Event]:
        return ()


COUNTER = f"{__name__}:Counter"


class Aliased(Processor):
    """Options spelled differently in TOML, and changed by a validator."""

    class Options(BaseModel):
        min_area: int = Field(5, alias="min-area")
        scale: int = Field(1, le=100)

        @field_validator("scale")
        @classmethod
        def _percent(cls, value: int) -> int:
            return value * 10

    def process(self, frame: Frame) -> Iterable[Event]:
        return ()


class DictOptions(Processor):
    Options = dict  # type: ignore[assignment]  # a plugin author's mistake


class BuggyOptions(Processor):
    class Options(BaseModel):
        x: int = 1

        @field_validator("x")
        @classmethod
        def _bug(cls, value: int) -> int:
            raise TypeError("unsupported operand")


def write(tmp_path: Path, text: str, name: str = "edged.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def load(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, text))


def problems(tmp_path: Path, text: str) -> list[str]:
    """The problem lines, with the temporary folder shortened to 'TMP'."""
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text).lstrip(), "edged.toml")
    assert info.value.exit_code == EX_CONFIG
    return [p.replace(str(tmp_path), "TMP") for p in info.value.problems]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # parse_config(..., "edged.toml") resolves relative paths against the cwd.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


CAM = '[cameras.cam1]\nsource = "synthetic"\n'


def test_minimal_config_has_documented_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, CAM)
    assert cfg.path == tmp_path / "edged.toml"
    assert cfg.base_dir == tmp_path
    assert cfg.events.path == tmp_path / "events/events.jsonl"
    assert (cfg.events.max_bytes, cfg.events.backups, cfg.events.fsync) == (10 << 20, 5, "interval")
    assert cfg.events.fsync_interval == 1.0
    assert (cfg.metrics.host, cfg.metrics.port, cfg.metrics.enabled) == ("127.0.0.1", 9850, True)
    assert (cfg.logging.level, cfg.logging.format) == ("info", "auto")
    assert cfg.daemon.state_dir == tmp_path / "state"
    assert cfg.daemon.stop_timeout == 5.0
    cam = cfg.cameras["cam1"]
    assert (cam.name, cam.source_kind, cam.display_source) == ("cam1", "synthetic", "synthetic")
    assert (cam.stale_after, cam.restart_delay, cam.restart_max_delay) == (5.0, 1.0, 30.0)
    assert (cam.processor.type, cam.processor.options) == ("null", {})
    assert cam.password_value() is None


def test_unknown_keys_suggest_the_right_one(tmp_path: Path) -> None:
    got = problems(
        tmp_path,
        """
        [event]
        path = "x"

        [cameras.cam1]
        source = "synthetic"
        stale_afer = "5s"
        """,
    )
    assert got == [
        "edged.toml:1: event: unknown key (did you mean 'events'?)",
        "edged.toml:6: cameras.cam1.stale_afer: unknown key (did you mean 'stale_after'?)",
    ]


def test_three_mistakes_are_all_reported_in_line_order(tmp_path: Path) -> None:
    got = problems(
        tmp_path,
        """
        [events]
        backups = 2000

        [cameras.cam1]
        source = "synthetic"
        decoder_threads = "two"
        stale_after = "5 parsecs"
        """,
    )
    assert got == [
        "edged.toml:2: events.backups: Input should be less than or equal to 1000",
        "edged.toml:6: cameras.cam1.decoder_threads: "
        "Input should be a valid integer, unable to parse string as an integer",
        "edged.toml:7: cameras.cam1.stale_after: invalid duration: use seconds, or a number "
        "with a unit ms, s, m or h (e.g. '500ms', '1.5s', '2m')",
    ]
    with pytest.raises(ConfigError, match=r"edged.toml: 3 errors in configuration"):
        parse_config(CAM + "restart_delay = -1\nloop = 3\nfps = 0\n", "edged.toml")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('stale_after = "-2s"', "cameras.cam1.stale_after: a duration must not be negative"),
        ("open_timeout = 0", "cameras.cam1.open_timeout: Input should be greater than or equal"),
        ('transport = "sctp"', "cameras.cam1.transport: Input should be 'tcp' or 'udp'"),
        ("width = 640", "cameras.cam1.height: give both width and height, or neither"),
        ("restart_max_delay = 0.5", "restart_max_delay: must not be less than restart_delay"),
        ("name = 'other'", "cameras.cam1.name: 'name' cannot be set"),
        ("ffmpeg_options = { a = [1] }", "cameras.cam1.ffmpeg_options.a: Input should be a valid"),
    ],
)
def test_camera_value_errors(tmp_path: Path, line: str, problem: str) -> None:
    (got,) = problems(tmp_path, CAM + line + "\n")
    assert got.startswith("edged.toml:")
    assert problem in got


def test_bad_camera_name_and_no_cameras(tmp_path: Path) -> None:
    assert problems(tmp_path, '[cameras.Bad_Name]\nsource = "synthetic"\n') == [
        "edged.toml:1: cameras.Bad_Name: a camera name may contain only a-z, 0-9, '_' and '-'"
    ]
    assert problems(tmp_path, "[metrics]\nenabled = false\n") == [
        "edged.toml: cameras: no cameras: add a [cameras.NAME] table with a source"
    ]


def test_missing_source_points_at_the_camera_table(tmp_path: Path) -> None:
    assert problems(tmp_path, "[metrics]\n[cameras.cam1]\nwidth = 640\nheight = 480\n") == [
        "edged.toml:2: cameras.cam1.source: required key is missing"
    ]


def test_unknown_processor_type_suggests_a_name(tmp_path: Path) -> None:
    (got,) = problems(tmp_path, CAM + '[cameras.cam1.processor]\ntype = "motoin"\n')
    assert got.startswith(
        "edged.toml:4: cameras.cam1.processor.type: unknown processor 'motoin' "
        "(did you mean 'motion'?)"
    )
    (got,) = problems(tmp_path, CAM + "[cameras.cam1.processor]\nmin_area = 5\n")
    assert got == "edged.toml:3: cameras.cam1.processor.type: required key is missing"


def test_processor_options_are_validated_once(tmp_path: Path) -> None:
    table = f'[cameras.cam1.processor]\ntype = "{__name__}:Aliased"\nmin-area = 7\nscale = 20\n'
    proc = load(tmp_path, CAM + table).cameras["cam1"].processor
    # Validating again what was validated would drop min-area and give scale 2000 (> 100).
    for built in (proc.build_options(), pickle.loads(pickle.dumps(proc)).build_options()):
        assert built == Aliased.Options.model_validate({"min-area": 7, "scale": 20})
        assert (built.min_area, built.scale) == (7, 200)  # type: ignore[attr-defined]


def test_error_text_leaves_out_the_input() -> None:
    with pytest.raises(ValidationError) as info:
        Counter.Options.model_validate({"min_area": 0, "label": ["x"], "token": SECRET})
    got = error_text(info.value)
    assert got.startswith("min_area: Input should be greater than 0; label: Input should be")
    assert SECRET not in got and "input_value" not in got
    assert error_text(ValueError(f"no rtsp://u:{SECRET}@cam")) == "ValueError: no rtsp://u:***@cam"


def test_plugin_mistakes_are_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "exits_at_import.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    where = "edged.toml:4: cameras.cam1.processor.type: "
    for name, reason in [
        (f"{__name__}:DictOptions", "its Options is not a pydantic model (a BaseModel subclass)"),
        (f"{__name__}:BuggyOptions", "its Options raised TypeError: unsupported operand"),
    ]:
        text = CAM + f'[cameras.cam1.processor]\ntype = "{name}"\nx = 2\n'
        assert problems(tmp_path, text) == [f"{where}'{name}': {reason}"]
    text = CAM + '[cameras.cam1.processor]\ntype = "exits_at_import:P"\n'
    assert problems(tmp_path, text) == [
        f"{where}cannot import module 'exits_at_import': SystemExit: 3"
    ]
    assert main(["check-config", str(write(tmp_path, text))]) == EX_CONFIG


def test_processor_options_are_validated_by_the_processor(tmp_path: Path) -> None:
    text = CAM + f'[cameras.cam1.processor]\ntype = "{COUNTER}"\nmin_area = 0\nmin_aera = 5\n'
    assert problems(tmp_path, text) == [
        "edged.toml:5: cameras.cam1.processor.min_area: Input should be greater than 0",
        "edged.toml:6: cameras.cam1.processor.min_aera: unknown key (did you mean 'min_area'?)",
    ]
    text = CAM + f'[cameras.cam1.processor]\ntype = "{COUNTER}"\nwindow = "1m"\n'
    proc = load(tmp_path, text).cameras["cam1"].processor
    assert proc.options == {"min_area": 500, "window": 60.0, "label": "x"}
    options = proc.build_options()
    assert isinstance(options, Counter.Options)
    assert options.window == 60.0


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("rtsp:///stream", "invalid URL: no host"),
        ("rtsp://cam:99999/stream", "invalid URL: bad host or port"),
        ("gopher://cam/stream", "unsupported URL scheme 'gopher'"),
        ("missing.mp4", "file not found: TMP/missing.mp4"),
        (".", "not a file: TMP"),
    ],
)
def test_bad_sources(tmp_path: Path, source: str, reason: str) -> None:
    (got,) = problems(tmp_path, f'[cameras.cam1]\nsource = "{source}"\n')
    assert got.startswith(f"edged.toml:2: cameras.cam1.source: {reason}")


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("synthetic", "synthetic"),
        ("rtsp://cam.lan/stream", "rtsp"),
        ("RTSPS://cam.lan:322/s", "rtsp"),
        ("https://cam.lan/video.mjpg", "url"),
        ("/dev/video2", "v4l2"),
        ("0", "v4l2"),
        ("edged.sources:Source", "plugin"),
        ("clip.mp4", "file"),
        ("frames/img_%04d.png", "file"),
    ],
)
def test_source_kinds(tmp_path: Path, source: str, kind: str) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"")
    assert load(tmp_path, f'[cameras.c]\nsource = "{source}"\n').cameras["c"].source_kind == kind


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("nosuchmod:Cam", "module 'nosuchmod' not found"),
        ("nosuchpkg.cams:Cam", "module 'nosuchpkg' not found"),
        ("edged.sources:NoSuch", "module 'edged.sources' has no attribute 'NoSuch'"),
        ("edged.sources:log", "'edged.sources:log' is not a class"),
        (COUNTER, f"'{COUNTER}' is not a subclass of edged.Source"),
        ("raises_at_import:Cam", "cannot import module 'raises_at_import': RuntimeError: no SDK"),
    ],
)
def test_plugin_sources_are_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, reason: str
) -> None:
    (tmp_path / "raises_at_import.py").write_text("raise RuntimeError('no SDK')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert problems(tmp_path, f'[cameras.c]\nsource = "{source}"\n') == [
        f"edged.toml:2: cameras.c.source: {reason}"
    ]


def test_integer_source_is_a_v4l2_device(tmp_path: Path) -> None:
    cam = load(tmp_path, "[cameras.c]\nsource = 0\n").cameras["c"]
    assert (cam.source, cam.source_kind) == ("0", "v4l2")


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    conf = tmp_path / "etc"
    (conf / "secrets").mkdir(parents=True)
    (conf / "secrets/cam.pw").write_text(SECRET + "\n")
    (conf / "clip.mp4").write_bytes(b"")
    path = write(
        conf,
        """
        [events]
        path = "../var/events.jsonl"
        [daemon]
        state_dir = "state"
        [cameras.file]
        source = "clip.mp4"
        [cameras.ip]
        source = "rtsp://cam.lan/s"
        username = "u"
        password_file = "secrets/cam.pw"
        """,
    )
    cfg = load_config(path)
    assert cfg.events.path == tmp_path / "var/events.jsonl"
    assert cfg.daemon.state_dir == conf / "state"
    assert cfg.cameras["file"].source == str(conf / "clip.mp4")
    assert cfg.cameras["ip"].password_file == conf / "secrets/cam.pw"
    assert cfg.cameras["ip"].password_value() == SECRET


def test_password_sources_and_their_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rtsp = '[cameras.c]\nsource = "rtsp://cam.lan/s"\nusername = "u"\n'
    assert problems(tmp_path, rtsp + 'password_file = "nope.pw"\n') == [
        "edged.toml:4: cameras.c.password_file: file not found: TMP/nope.pw"
    ]
    (got,) = problems(tmp_path, rtsp + 'password_credential = "cam.pw"\n')
    assert got.startswith("edged.toml:4: cameras.c.password_credential: $CREDENTIALS_DIRECTORY")

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "cam.pw").write_text(SECRET)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cam = load(tmp_path, rtsp + 'password_credential = "cam.pw"\n').cameras["c"]
    assert cam.password_value() == SECRET
    assert problems(tmp_path, rtsp + 'password_credential = "other.pw"\n') == [
        "edged.toml:4: cameras.c.password_credential: file not found: TMP/creds/other.pw"
    ]
    (got,) = problems(tmp_path, rtsp + f'password = "{SECRET}"\npassword_credential = "cam.pw"\n')
    assert got == (
        "edged.toml:5: cameras.c.password_credential: give only one password source; "
        "found: password, password_credential"
    )
    url = f'[cameras.c]\nsource = "rtsp://u:{SECRET}@cam.lan/s"\npassword_credential = "cam.pw"\n'
    (got,) = problems(tmp_path, url)
    assert "found: password_credential, a password in the source URL" in got


def test_check_config_notes_credentials_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        """
        [defaults]
        username = "u"
        password_credential = "cam.pw"
        [cameras.a]
        source = "rtsp://cam.lan/s"
        [cameras.b]
        source = "rtsp://cam.lan/s"
        password_file = "b.pw"
        [mqtt]
        username = "u"
        password_credential = "mqtt.pw"
        """,
    )
    (tmp_path / "b.pw").write_text("pw")
    # The daemon (`edged run`, a reload) needs the credentials: that stays an error...
    with pytest.raises(ConfigError, match=r"defaults\.password_credential: \$CREDENTIALS_DIR"):
        load_config(path)
    run = [sys.executable, "-m", "edged", "run", "-c", str(path)]
    done = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert done.returncode == EX_CONFIG and "$CREDENTIALS_DIRECTORY is not set" in done.stderr
    # ...while check-config, run in a shell the unit's LoadCredential= does not reach, says so.
    cfg = load_config(path, credentials_optional=True)
    assert cfg.unread_credentials() == ["cameras.a.password_credential", "mqtt.password_credential"]
    assert cfg.cameras["a"].password_value() is None
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[3:] == [
        f"  note: {key}.password_credential: not checked: $CREDENTIALS_DIRECTORY is not set "
        f"(systemd's LoadCredential= sets it for the unit): {units} LoadCredential={cred}:FILE"
        for key, units, cred in (
            ("cameras.a", "edged@a and edged.service need", "cam.pw"),
            ("mqtt", "every edged unit needs", "mqtt.pw"),
        )
    ]


def test_password_file_gives_its_first_line(tmp_path: Path) -> None:
    (tmp_path / "cam.pw").write_text(f"{SECRET}\r\nrotated on 2024-01-01\n")
    (tmp_path / "blank.pw").write_text("\nsecond\n")
    rtsp = '[cameras.c]\nsource = "rtsp://cam.lan/s"\nusername = "u"\n'
    cam = load(tmp_path, rtsp + 'password_file = "cam.pw"\n').cameras["c"]
    assert cam.password_value() == SECRET
    assert problems(tmp_path, rtsp + 'password_file = "blank.pw"\n') == [
        "edged.toml:4: cameras.c.password_file: first line is empty: TMP/blank.pw"
    ]


def test_malformed_urls_do_not_show_their_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for source in (f"rtsp:/admin:{SECRET}@cam/x", f"admin:{SECRET}@cam/x"):
        assert problems(tmp_path, f'[cameras.c]\nsource = "{source}"\n') == [
            "edged.toml:2: cameras.c.source: looks like a malformed URL with a password "
            "(not shown): a URL starts with 'scheme://'"
        ]
    # A '/' in the password, not percent-encoded: urlsplit sees host 'admin', port 12.
    cfg = load(tmp_path, '[cameras.c]\nsource = "rtsp://admin:12/34@cam/x"\n')
    assert cfg.cameras["c"].display_source == "rtsp://admin:***@cam/x"
    assert main(["check-config", str(tmp_path / "edged.toml")]) == 0
    out = capsys.readouterr().out
    assert "12/34" not in out and "c: rtsp://admin:***@cam/x -> null" in out


def test_check_config_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    path = write(tmp_path, CAM)
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `| head -1` does once it has its line
    try:
        done = subprocess.run(
            [sys.executable, "-m", "edged", "check-config", str(path)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


def test_credentials_in_the_url_are_kept_out_of_source(tmp_path: Path) -> None:
    cam = load(tmp_path, f'[cameras.c]\nsource = "rtsp://adm%40n:{SECRET}@10.0.0.5:554/s?x=1"\n')
    cam = cam.cameras["c"]
    assert cam.source == "rtsp://10.0.0.5:554/s?x=1"
    assert cam.username == "adm@n"
    assert cam.password_value() == SECRET
    assert cam.display_source == "rtsp://adm%40n:***@10.0.0.5:554/s?x=1"
    assert cam.source_url() == cam.display_source
    assert cam.source_url(with_credentials=True) == f"rtsp://adm%40n:{SECRET}@10.0.0.5:554/s?x=1"

    cam = camera_from_dict("c", {"source": "http://cam/v", "username": "u", "password": "p/@:"})
    assert cam.source_url(with_credentials=True) == "http://u:p%2F%40%3A@cam/v"


def test_secrets_never_appear_in_repr_dumps_or_errors(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(SECRET)
    cfg = load(
        tmp_path,
        f"""
        [cameras.a]
        source = "rtsp://user:{SECRET}@cam.lan/s"
        [cameras.b]
        source = "http://cam.lan/v"
        username = "user"
        password = "{SECRET}"
        [cameras.c]
        source = "rtsp://cam.lan/s"
        username = "user"
        password_file = "{pw}"
        """,
    )
    for text in (repr(cfg), str(cfg), cfg.model_dump_json(), repr(cfg.model_dump())):
        assert SECRET not in text
    assert [c.password_value() for c in cfg.cameras.values()] == [SECRET] * 3
    leaky = f"""
        [cameras.a]
        source = "rtsp://user:{SECRET}@cam.lan:99999/s"
        decoder_threads = "{SECRET}"
        username = ["{SECRET}"]
        """
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(leaky), "edged.toml")
    assert len(info.value.problems) == 3
    assert SECRET not in str(info.value)


def test_scrub_redacts_every_url_password() -> None:
    text = f"open rtsp://admin:{SECRET}@cam/s failed; http://u:p@h:8/x and rtsp://cam/ ok"
    assert (
        scrub(text) == "open rtsp://admin:***@cam/s failed; http://u:***@h:8/x and rtsp://cam/ ok"
    )
    assert redact_url(f"rtsp://u:{SECRET}/x@y@cam/s") == "rtsp://u:***@cam/s"
    assert redact_url("rtsp://user@cam/s") == "rtsp://user@cam/s"


def test_scrub_redacts_secrets_in_query_strings() -> None:
    # Cameras that take credentials in the query (Foscam's CGIStream.cgi).
    url = f"http://cam:88/cgi-bin/CGIStream.cgi?cmd=GetMJStream&usr=admin&pwd={SECRET}&x=1"
    assert scrub(url) == "http://cam:88/cgi-bin/CGIStream.cgi?cmd=GetMJStream&usr=admin&pwd=***&x=1"
    assert scrub(f"https://h/live.m3u8?token={SECRET}#t") == "https://h/live.m3u8?token=***#t"
    assert scrub("http://h/a?keyframe=1&monkey=2") == "http://h/a?keyframe=1&monkey=2"
    cam = camera_from_dict("cam1", {"source": url})
    assert SECRET not in cam.display_source and "usr=admin" in cam.display_source


def test_defaults_are_inherited_and_overridden(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        f"""
        [defaults]
        stale_after = "10s"
        decoder_threads = 4
        [defaults.processor]
        type = "{COUNTER}"
        min_area = 50
        label = "d"

        [cameras.a]
        source = "synthetic"
        [cameras.b]
        source = "synthetic"
        decoder_threads = 2
        [cameras.b.processor]
        type = "{COUNTER}"
        window = 3
        """,
    )
    a, b = cfg.cameras["a"], cfg.cameras["b"]
    assert (a.stale_after, a.decoder_threads, b.stale_after, b.decoder_threads) == (10, 4, 10, 2)
    assert a.processor.options == {"min_area": 50, "window": 2.0, "label": "d"}
    # The camera's processor table replaces the inherited one: no min_area 50, no label "d".
    assert b.processor.options == {"min_area": 500, "window": 3.0, "label": "x"}
    assert cfg.defaults.stale_after == 10


def test_defaults_not_a_table(tmp_path: Path) -> None:
    text = "defaults = 5\n" + CAM + '[cameras.cam2]\nsource = "synthetic"\n'
    # Not also "cameras.cam1.name: required key is missing" for each camera.
    assert problems(tmp_path, text) == ["edged.toml:1: defaults: expected a table"]


def test_defaults_errors_are_reported_once(tmp_path: Path) -> None:
    got = problems(
        tmp_path,
        """
        [defaults]
        stale_after = "soon"
        source = "synthetic"
        restart_max_delay = "100ms"

        [cameras.a]
        source = "synthetic"
        [cameras.b]
        source = "synthetic"
        restart_max_delay = "1m"
        """,
    )
    assert got == [
        "edged.toml:2: defaults.stale_after: invalid duration: use seconds, or a number with a "
        "unit ms, s, m or h (e.g. '500ms', '1.5s', '2m')",
        "edged.toml:3: defaults.source: set the source in each [cameras.NAME] table, "
        "not in [defaults]",
        "edged.toml:6: cameras.a.restart_max_delay: must not be less than restart_delay",
    ]


def test_a_camera_password_replaces_the_inherited_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cam.pw").write_text("from-file")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    cfg = load(
        tmp_path,
        """
        [defaults]
        username = "default-user"
        password_credential = "cam.pw"
        [cameras.a]
        source = "rtsp://cam/s"
        [cameras.b]
        source = "rtsp://other:pw@cam/s"
        [cameras.c]
        source = "rtsp://cam/s"
        password = "own"
        """,
    )
    got = {n: (c.username, c.password_value()) for n, c in cfg.cameras.items()}
    assert got == {
        "a": ("default-user", "from-file"),
        "b": ("other", "pw"),
        "c": ("default-user", "own"),
    }


def test_toml_syntax_error_has_its_line(tmp_path: Path) -> None:
    assert problems(tmp_path, CAM + "width = \n") == [
        "edged.toml:3: TOML syntax error: Invalid value (column 9)"
    ]


def test_line_numbers_survive_tricky_toml(tmp_path: Path) -> None:
    got = problems(
        tmp_path,
        '''
        title = """
        [cameras.fake]
        x = 1"""  # a multi-line string that looks like a table
        ffmpeg = 'a#b'
        cameras.d1.source = "synthetic"
        cameras.d1.fps = 0

        [cameras."q-1"]
        source = "synthetic"
        'stale_after' = "?"
        processor = { type = "null", extra = [1,
          2] }
        ''',
    )
    assert got == [
        "edged.toml:1: title: unknown key",
        "edged.toml:4: ffmpeg: unknown key",
        "edged.toml:6: cameras.d1.fps: Input should be greater than 0",
        "edged.toml:10: cameras.q-1.stale_after: invalid duration: use seconds, or a number with "
        "a unit ms, s, m or h (e.g. '500ms', '1.5s', '2m')",
        "edged.toml:11: cameras.q-1.processor.extra: unknown key",
    ]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        *[(3, 3.0), (0.25, 0.25), ("500ms", 0.5), ("5s", 5.0), ("1.5s", 1.5), ("2m", 120.0)],
        *[("1h", 3600.0), ("1m30s", 90.0), (" 7 ", 7.0), ("0", 0.0)],
    ],
)
def test_parse_duration(value: Any, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "5 parsecs", "s", "1.2.3s", True, None, float("inf")])
def test_parse_duration_rejects(value: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        *[(4096, 4096), ("512k", 512 * 1024), ("10MB", 10_000_000), ("10MiB", 10 * 1024**2)],
        *[("1GiB", 1024**3), ("1.5k", 1536), ("100 B", 100), ("2kB", 2000)],
    ],
)
def test_parse_byte_size(value: Any, size: int) -> None:
    assert parse_byte_size(value) == size


@pytest.mark.parametrize("value", ["-1k", "10 parsecs", "1.5", 1.5, False])
def test_parse_byte_size_rejects(value: Any) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_byte_size(value)


def test_duration_and_byte_size_work_in_any_model() -> None:
    class Opts(BaseModel):
        wait: Duration = Field(1.0, ge=0.5)
        size: ByteSize = 1

    assert Opts.model_validate({"wait": "2m", "size": "1k"}).model_dump() == {
        "wait": 120.0,
        "size": 1024,
    }
    with pytest.raises(ValueError, match=r"greater than or equal to 0\.5"):
        Opts(wait="100ms")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:9850", "127.0.0.1", 9850),
        ("[::1]:80", "::1", 80),
        ("localhost:0", "localhost", 0),
    ],
)
def test_metrics_listen(listen: str, host: str, port: int) -> None:
    metrics = MetricsConfig(listen=listen)
    assert (metrics.host, metrics.port) == (host, port)


@pytest.mark.parametrize("listen", ["9850", ":9850", "::1:9850", "[nope]:1", "host:70000", "h:p"])
def test_metrics_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError, match="listen"):
        MetricsConfig(listen=listen)


def test_pickle_round_trip(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(SECRET)
    cfg = load(
        tmp_path,
        f"""
        [cameras.a]
        source = "rtsp://u@cam/s"
        password_file = "pw"
        [cameras.a.processor]
        type = "{COUNTER}"
        window = "3s"
        """,
    )
    copy = pickle.loads(pickle.dumps(cfg))
    assert copy == cfg
    assert (copy.path, copy.base_dir) == (cfg.path, cfg.base_dir)
    assert copy.cameras["a"].password_value() == SECRET
    assert copy.cameras["a"].processor.build_options() == Counter.Options(window=3)


def test_camera_from_dict_reports_problems() -> None:
    cam = camera_from_dict("capture", {"source": "synthetic", "width": 320, "height": 240})
    assert isinstance(cam, CameraConfig)
    with pytest.raises(ConfigError) as info:
        camera_from_dict("capture", {"source": "synthetic", "widht": 320})
    assert info.value.problems == ["camera 'capture': widht: unknown key (did you mean 'width'?)"]
    with pytest.raises(ConfigError, match="may contain only"):
        camera_from_dict("Front Door", {"source": "synthetic"})


def test_unreadable_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert info.value.problems == [f"{tmp_path / 'nope.toml'}: file not found"]
    (tmp_path / "bad.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "bad.toml")


def test_shipped_default_config_loads() -> None:
    cfg = load_config(REPO / "config/edged.toml")
    (cam,) = cfg.cameras.values()
    assert (cam.name, cam.source_kind, cam.width, cam.height, cam.fps) == (
        "demo",
        "synthetic",
        640,
        360,
        15,
    )
    assert cam.processor.type == "motion"
    assert cfg.events.path == REPO / "var/events/events.jsonl"


def test_example_config_loads_and_documents_every_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = shutil.copy(REPO / "config/example.toml", tmp_path / "edged.toml")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets/yard.password").write_text("yard-pw\n")
    (tmp_path / "front-door.password").write_text("front-pw\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    cfg = load_config(example)
    assert {n: c.password_value() for n, c in cfg.cameras.items()} == {
        "front-door": "front-pw",
        "yard": "yard-pw",
    }
    assert cfg.cameras["yard"].processor.options["min_area"] == 1500
    assert cfg.cameras["front-door"].processor.type == "motion"

    # The values shown are the defaults...
    plain = load_config(write(tmp_path, CAM, "plain.toml"))
    for section in ("events", "metrics", "logging", "daemon"):
        assert getattr(cfg, section) == getattr(plain, section), section
    shown = cfg.defaults.model_dump(exclude={"processor"})
    assert shown == plain.defaults.model_dump(exclude={"processor"})
    motion = resolve_processor("motion").Options().model_dump()
    assert cfg.defaults.processor.options == motion
    # ...and every option is shown, commented out where it has no default.
    text = Path(example).read_text()
    for model in (EventsConfig, MetricsConfig, LoggingConfig, DaemonConfig, CameraDefaults):
        for key in model.model_fields:
            table = key in ("processor", "snapshots")  # [defaults.KEY] tables
            assert f"\n{key} = " in text or f"\n# {key} = " in text or table, key


def _check(path: Path | str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`edged check-config PATH` in-process: (exit code, stderr)."""
    code = main(["check-config", str(path)])
    return code, capsys.readouterr().err


def _deep(levels: int) -> str:
    return "{a = " * levels + "1" + " }" * levels


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (  # tomllib itself overflows the stack
            f'[cameras.c]\nsource = "synthetic"\nsource_options = {_deep(1000)}\n',
            "edged.toml: tables and arrays nested too deeply (at most 32 levels)",
        ),
        (  # tomllib copes; what recurses over it next (pickle, ==) may not
            f'[cameras.c]\nsource = "synthetic"\nsource_options = {_deep(100)}\n',
            "edged.toml:3: cameras.c.source_options.a.a.a",
        ),
        (
            f'[cameras.c]\nsource = "rtsp://cam/{"x" * 100_000}"\n',
            "edged.toml:2: cameras.c.source: longer than 65536 characters",
        ),
        (
            f'[cameras.c]\nsource = "/tmp/{"x" * 300}.mp4"\n',
            "edged.toml:2: cameras.c.source: a path component is 304 bytes long",
        ),
        (
            f'[cameras.{"c" * 300}]\nsource = "synthetic"\n',
            'edged.toml:1: cameras."cccccccccccccccc...": key longer than 128 characters',
        ),
        (
            f'[cameras.{"c" * 65}]\nsource = "synthetic"\n',
            f"edged.toml:1: cameras.{'c' * 65}: a camera name has at most 64 characters",
        ),
        (
            f'[daemon]\nstate_dir = "{"s" * 256}"\n{CAM}',
            "edged.toml:2: daemon.state_dir: a path component is 256 bytes long",
        ),
        (
            f'[events]\npath = "ev/{"e" * 256}.jsonl"\n{CAM}',
            "edged.toml:2: events.path: a path component is 262 bytes long",
        ),
        (
            f'[events]\npath = "/etc/passwd/events.jsonl"\n{CAM}',
            "edged.toml:2: events.path: not a folder: /etc/passwd",
        ),
        (
            f'[daemon]\nstate_dir = "/proc/1/x"\n{CAM}',
            "edged.toml:2: daemon.state_dir: cannot ",
        ),
        (
            '[cameras.c]\nsource = "rtsp://cam/a\\u0000b"\n',
            "edged.toml:2: cameras.c.source: must not contain a NUL byte",
        ),
        (
            '[cameras.c]\nsource = "rtsp://cam/a\\nreloaded: b"\n',
            "edged.toml:2: cameras.c.source: must not contain control characters",
        ),
    ],
    ids=[
        "nested-1000",
        "nested-100",
        "source-100k",
        "source-component-300",
        "camera-name-300",
        "camera-name-65",
        "state-dir-component",
        "event-path-component",
        "event-folder-a-file",
        "state-dir-uncreatable",
        "nul-in-source",
        "newline-in-source",
    ],
)
def test_check_config_rejects_what_run_cannot_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, problem: str
) -> None:
    path = tmp_path / "edged.toml"
    path.write_text(text)
    code, err = _check("edged.toml", capsys)
    assert code == EX_CONFIG, err
    lines = err.splitlines()
    assert lines[0] == "edged.toml: 1 error in configuration"
    assert len(lines) == 2 and lines[1].startswith(f"  {problem}"), err
    assert len(lines[1]) < 400  # never the 100k value itself
    assert "\x00" not in err and "reloaded: b" not in err


def test_check_config_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    big = tmp_path / "big.toml"
    big.write_text(CAM + "#" * 1024**2 + "\n")
    zero = write(
        tmp_path,
        '[cameras.c]\nsource = "rtsp://cam/s"\nusername = "u"\npassword_file = "/dev/zero"\n',
        "zero.toml",
    )
    expected = {
        str(zero): f"{zero}:4: cameras.c.password_file: not a regular file: /dev/zero",
        "/dev/zero": "/dev/zero: not a regular file",
        str(fifo): f"{fifo}: not a regular file",  # must not wait for a writer
        str(tmp_path): f"{tmp_path}: a folder, not a file",
        str(big): f"{big}: larger than 1048576 bytes",
    }
    for path, problem in expected.items():
        done = subprocess.run(
            [sys.executable, "-m", "edged", "check-config", path],
            capture_output=True,
            text=True,
            timeout=30,
            # Read without a bound, /dev/zero would take the machine's memory.
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3,) * 2),
        )
        assert done.returncode == EX_CONFIG, (path, done.stderr)
        assert done.stderr.splitlines()[1:] == [f"  {problem}"], done.stderr


def test_status_reads_the_config_within_the_same_bounds(tmp_path: Path) -> None:
    from edged.status import status_url

    with pytest.raises(ConfigError, match="not a regular file"):
        status_url("/dev/zero")
    path = write(tmp_path, f'[cameras.c]\nsource = "synthetic"\nx = {_deep(1000)}\n')
    with pytest.raises(ConfigError, match="nested too deeply"):
        status_url(path)
