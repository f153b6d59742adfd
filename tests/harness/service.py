"""gunicorn serving a copy of the service, as in production, for the stress and Galera tests.

server = Gunicorn(app_dir, settings, log_dir, (workers, threads, worker_class))
server.start(); ...; server.stop()
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import requests

from fluxkart import SETTINGS
from tests.harness.mariadb import free_port
from tests.harness.processes import stop_process

# As in production (Procfile), plus --no-control-socket: gunicorn 27 otherwise opens
# ~/.gunicorn/gunicorn.ctl, one path shared by every instance on the host.
COMMAND = [
    sys.executable,
    "-m",
    "gunicorn",
    "-c",
    "gunicorn.conf.py",
    "--no-control-socket",
    "fluxkart:create_app()",
]


class Gunicorn:
    """`gunicorn -c gunicorn.conf.py 'fluxkart:create_app()'` in `app_dir`, on a free port of 127.0.0.1."""

    def __init__(self, app_dir: Path, settings: dict[str, str], log_dir: Path, workers: tuple[int, int, str]):
        self.app_dir = app_dir
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stderr_path = log_dir / f"gunicorn-{self.port}.stderr"
        self.stdout_path = log_dir / f"gunicorn-{self.port}.stdout"
        # No PYTHONPATH (the app must come from app_dir), no shared metrics folder.
        dropped = ("PYTHONPATH", "PROMETHEUS_MULTIPROC_DIR")
        self.env = {name: value for name, value in os.environ.items() if name not in dropped}
        self.env.update({name: "" for name in SETTINGS})  # nothing leaks in from the developer's shell
        self.env.update(settings)
        self.env.update(
            PORT=str(self.port),
            HOST="127.0.0.1",
            WEB_CONCURRENCY=str(workers[0]),
            GUNICORN_THREADS=str(workers[1]),
            GUNICORN_WORKER_CLASS=workers[2],
            LOG_LEVEL="info",
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                COMMAND,
                cwd=self.app_dir,
                env=self.env,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group, so stop() can reach the workers too
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited ({self.process.returncode}):\n{self.stderr()}")
            # Our own master must be listening (not some other process on a reused port).
            if f"Listening at: {self.url}" in self.stderr():
                try:
                    if requests.get(self.url + "/health/ready", timeout=2).status_code == 200:
                        return
                except requests.RequestException:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not become ready within {timeout}s:\n{self.stderr()}")

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL to the whole process group if it lingers."""
        process, self.process = self.process, None
        stop_process(process)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def logs(self) -> str:
        """stdout (the service's JSON log lines) and stderr (gunicorn's own log), together."""
        out = self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""
        return out + self.stderr()

    def metric(self, name: str) -> dict[str, float]:
        """A counter from /metrics summed by its first label ({} when the service has none)."""
        try:
            response = requests.get(self.url + "/metrics", timeout=10)
        except requests.RequestException:
            return {}
        if response.status_code != 200:
            return {}
        totals: dict[str, float] = {}
        for line in response.text.splitlines():
            match = re.match(rf'^{name}_total\{{\w+="([^"]*)"[^}}]*\}} ([0-9.e+]+)$', line)
            if match:
                totals[match.group(1)] = totals.get(match.group(1), 0) + float(match.group(2))
        return totals
