"""A real Prometheus server for tests, scraping edged daemons through ``file_sd``.

``Prometheus`` runs ``/usr/bin/prometheus`` (Debian package ``prometheus``) on a
free 127.0.0.1 port with its own config and data folder, one scrape a second.
Its targets come from a ``file_sd`` JSON file, the way the README's fleet
section tells users to list their boxes, so the test reads the same setup.
:meth:`query` asks its HTTP API (``/api/v1/query``) for an instant vector.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from helpers import wait_for

from components.rtsp import free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def check_prometheus() -> str | None:
    """None if the server can run here, else what is missing."""
    if not os.access(PROMETHEUS, os.X_OK):
        return f"{PROMETHEUS} not found: apt-get install prometheus"
    return None


class Prometheus:
    """One server in ``folder``; ``targets``: [(address 'host:port', labels), ...]."""

    def __init__(self, folder: Path, targets: list[tuple[str, dict[str, str]]]) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "prometheus.log"
        self.targets_path = folder / "edged.json"
        self.targets_path.write_text(
            json.dumps([{"targets": [addr], "labels": labels} for addr, labels in targets])
        )
        (folder / "prometheus.yml").write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "scrape_configs:\n"
            "  - job_name: edged\n"
            "    file_sd_configs:\n"
            f"      - files: ['{self.targets_path}']\n"
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for("Prometheus ready", self._ready, timeout=20, every=0.1)
        return self

    def _ready(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def query(self, expr: str) -> dict[str, float]:
        """The instant vector ``expr`` as {"label=value,...": value}, labels sorted
        (without ``__name__``)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as reply:
            body: dict[str, Any] = json.load(reply)
        assert body["status"] == "success", body
        out: dict[str, float] = {}
        for item in body["data"]["result"]:
            labels = {k: v for k, v in item["metric"].items() if k != "__name__"}
            key = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
            out[key] = float(item["value"][1])
        return out

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc is not None:
            self._log.close()
