"""A real Mosquitto broker for tests, and a recording MQTT subscriber.

``Mosquitto`` runs ``/usr/sbin/mosquitto`` on 127.0.0.1 with its own config
file in a folder of its own: a free port, anonymous access or a password file,
optionally a TLS listener with a CA it generates (``openssl``), optionally a
packet size limit (``max_packet_size``: the broker closes the connection of a
client that sends a larger packet, and announces the limit to MQTT 5 clients
in its CONNACK), and persistence
in that folder, so a restart (``stop()`` then ``start()``) keeps retained
messages and persistent subscriber sessions, as a real broker reboot does.

``Subscriber`` is a paho client with a persistent session (clean_session off)
that records every message it receives, and reconnects by itself after the
broker restarts: messages published while it was away are queued for it by
the broker and arrive once it is back.

``start_sink`` starts edged's own MQTT sink against such a broker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.rtsp import free_port
from edged.camera import CameraSnapshot
from edged.config import CameraConfig, MqttConfig
from edged.sinks.mqtt import MqttSink

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"
SETUP_HINT = "run `scripts/setup --test` to install mosquitto and mosquitto-clients"


def check_mosquitto() -> str | None:
    """None if the broker can run here, else what is missing."""
    for tool in (MOSQUITTO, MOSQUITTO_PASSWD):
        if not os.access(tool, os.X_OK):
            return f"{tool} not found: {SETUP_HINT}"
    return None


class MosquittoError(RuntimeError):
    pass


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the CA certificate clients trust
    cert: Path  # the broker's certificate, for 127.0.0.1 and localhost
    key: Path


def make_tls_files(folder: Path) -> TlsFiles:
    """A throwaway CA and a broker certificate signed by it (``openssl`` CLI)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.crt", folder / "ca.key"
    cert, key, csr = folder / "broker.crt", folder / "broker.key", folder / "broker.csr"
    ext = folder / "broker.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=edged test CA", "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", str(key), "-out", str(csr))  # fmt: skip
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert))  # fmt: skip
    return TlsFiles(ca, cert, key)


class Mosquitto:
    """One broker on 127.0.0.1 in ``folder``; ``port=None`` picks a free port at the
    first ``start()`` and keeps it for restarts."""

    def __init__(
        self,
        folder: Path,
        *,
        port: int | None = None,
        users: dict[str, str] | None = None,
        tls: TlsFiles | None = None,
        max_packet_size: int | None = None,
        ready_timeout: float = 10.0,
    ) -> None:
        self.folder = folder
        self.users = users
        self.tls = tls
        self.max_packet_size = max_packet_size
        self.ready_timeout = ready_timeout
        self._port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self.log_path = folder / "mosquitto.log"
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def port(self) -> int:
        if self._port is None:
            raise MosquittoError("broker has no port yet: call start()")
        return self._port

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _write_config(self) -> Path:
        data = self.folder / "data"
        data.mkdir(exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {data}/",
            "autosave_interval 1",
            "max_queued_messages 0",  # keep everything for an offline subscriber
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if self.max_packet_size is not None:
            lines.append(f"max_packet_size {self.max_packet_size}")
        if os.geteuid() == 0:
            lines.append("user root")  # no privilege drop: it must read our temp files
        if self.users is None:
            lines.append("allow_anonymous true")
        else:
            pwfile = self.folder / "passwords"
            pwfile.write_text("")
            for user, password in self.users.items():
                subprocess.run(
                    [MOSQUITTO_PASSWD, "-b", str(pwfile), user, password],
                    check=True,
                    capture_output=True,
                    timeout=30,
                )
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.cert}",
                f"keyfile {self.tls.key}",
            ]
        conf = self.folder / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> Mosquitto:
        if self.running:
            raise MosquittoError("broker already running")
        problem = check_mosquitto()
        if problem:
            raise MosquittoError(problem)
        fixed = self._port is not None
        for _ in range(1 if fixed else 5):
            if not fixed:
                self._port = free_port()
            conf = self._write_config()
            log = open(self.log_path, "ab")  # noqa: SIM115 - the child holds it
            try:
                self._proc = subprocess.Popen(
                    [MOSQUITTO, "-c", str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            finally:
                log.close()
            if self._wait_ready():
                return self
        raise MosquittoError(f"mosquitto did not start on port {self._port}:\n{self.log}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if not self.running:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return True
            time.sleep(0.05)
        self.stop()
        return False

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM (the broker saves its persistence file), then SIGKILL. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self) -> Mosquitto:
        self.stop()
        return self.start()

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """SIGSTOP the broker for the block: the kernel still accepts TCP
        connections on its port, and nothing answers them (a hung broker)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self._proc.send_signal(signal.SIGCONT)

    def __repr__(self) -> str:
        return f"Mosquitto({self._port}, {'running' if self.running else 'stopped'})"


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Subscriber:
    """A paho client subscribed to ``topic`` at QoS 1 that records every message.

    ``persistent=True`` (clean_session off, fixed client id): the broker keeps
    the subscription and queues messages while it is disconnected.
    """

    def __init__(
        self,
        broker: Mosquitto,
        topic: str = "#",
        *,
        client_id: str = "test-subscriber",
        persistent: bool = True,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt

        self.topic = topic
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=not persistent,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if broker.tls is not None:
            self.client.tls_set(ca_certs=str(broker.tls.ca))
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect_async("127.0.0.1", broker.port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise MosquittoError(f"subscriber could not subscribe to {topic!r}")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append(Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))

    def received(self, topic: str | None = None) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if topic is None or m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def mosquitto_sub_retained(broker: Mosquitto, topic: str, timeout: float = 5) -> bytes | None:
    """The retained message on ``topic`` as ``mosquitto_sub`` sees it, or None."""
    tool = shutil.which("mosquitto_sub")
    if tool is None:
        raise MosquittoError(f"mosquitto_sub not found: {SETUP_HINT}")
    cmd = [tool, "-h", "127.0.0.1", "-p", str(broker.port), "-t", topic, "-C", "1"]
    cmd += ["-W", str(max(1, round(timeout))), "--retained-only"]
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout + 5)
    return proc.stdout.rstrip(b"\n") if proc.returncode == 0 and proc.stdout else None


def start_sink(
    sinks: list[MqttSink],
    broker: Mosquitto,
    state_dir: Path,
    instance: str = "",
    *,
    cameras: Mapping[str, CameraConfig] | None = None,
    configured: list[str] | None = None,
    snapshots: Iterable[CameraSnapshot] = (),
    **options: Any,
) -> MqttSink:
    """A started ``MqttSink`` of node box1 at ``broker``, remembered in ``sinks`` (the
    ``sinks`` fixture stops them). ``options``: more ``[mqtt]`` keys; ``snapshots``:
    camera states it has before it connects."""
    opts: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": broker.port,
        "node": "box1",
        "reconnect_max_delay": 1,
        **options,
    }
    sink = MqttSink(MqttConfig.model_validate(opts), state_dir, instance, cameras, configured)
    sinks.append(sink)
    for snapshot in snapshots:
        sink.on_state(snapshot)
    sink.start()
    return sink
