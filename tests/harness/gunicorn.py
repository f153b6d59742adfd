"""The one gunicorn launcher: the tests, the console's browser tests and bench/ all start it.

`Gunicorn(env, log_dir, app_dir=..., app=..., port=...)` runs
`gunicorn -c gunicorn.conf.py --no-control-socket 'fluxkart:create_app()'` (as the Procfile
does, minus gunicorn 27's control socket, one path shared by every instance on the host)
from a folder holding the service (or a patched copy of it), on 127.0.0.1, its master and
workers logging to one file. `start(ready_path=...)` returns once our own master listens and
the path answers 200 ("/health/live" by default; "/health/ready" also waits for the
database); `stop()` is SIGTERM, then SIGKILL to the whole process group.

`gunicorn_env(settings, workers, threads, worker_class)` is the environment of one that
serves `settings` and nothing else (every setting blank unless given), and
`start_gunicorn(...)` starts one on a free port, trying another port when a different
process took it (conftest's `gunicorn` fixture).
"""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from identity.settings import SETTINGS
from tests.harness.processes import SERVICE_DIR, child_pids, free_port, stop_process


def gunicorn_env(
    settings: dict[str, Any],
    workers: int | None = None,
    threads: int | None = None,
    worker_class: str | None = None,
    metrics_dir: Path | None = None,
) -> dict[str, str]:
    """The environment of a gunicorn serving `settings`: nothing leaks in from the developer's shell.

    Every setting of the service is blank unless `settings` gives it; None for workers,
    threads or worker class keeps gunicorn.conf.py's default; `metrics_dir` is where the
    workers count requests (None: a folder gunicorn.conf.py makes).
    """
    env = {name: "" for name in SETTINGS}
    env.update({name: str(value or "") for name, value in settings.items()})
    concurrency = {
        "WEB_CONCURRENCY": workers,
        "GUNICORN_THREADS": threads,
        "GUNICORN_WORKER_CLASS": worker_class,
    }
    env.update({name: str(value) for name, value in concurrency.items() if value is not None})
    env["LOG_LEVEL"] = "info"
    if metrics_dir is not None:
        # Our own folder (gunicorn.conf.py keeps one it is given): tests read which workers counted.
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    return env


class Gunicorn:
    """`gunicorn -c gunicorn.conf.py APP` run from `app_dir` on 127.0.0.1, logging to one file.

    `env` is laid over this process's environment (minus PYTHONPATH, so the app
    comes from `app_dir`, and minus PROMETHEUS_MULTIPROC_DIR, so runs do not share
    metrics); PORT and HOST are set here. The master leads its own process group,
    so stop() reaches every worker.
    """

    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path,
        app_dir: Path = SERVICE_DIR,
        app: str = "fluxkart:create_app()",
        port: int | None = None,
        log_path: Path | None = None,
    ):
        self.app_dir, self.app = app_dir, app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or log_dir / f"gunicorn-{self.port}.log"
        dropped = ("PYTHONPATH", "PROMETHEUS_MULTIPROC_DIR")
        self.env = {name: value for name, value in os.environ.items() if name not in dropped}
        self.env.update(env)
        # Where the workers count requests, when the caller chose the folder (None: gunicorn.conf.py's own).
        metrics = env.get("PROMETHEUS_MULTIPROC_DIR")
        self.metrics_dir = Path(metrics) if metrics else None
        self.env.update(PORT=str(self.port), HOST="127.0.0.1", PYTHONUNBUFFERED="1")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60, ready_path: str = "/health/live") -> None:
        """Start the master; return once it listens on our port and `ready_path` answers 200.

        RuntimeError when it exits or does not get ready in `timeout` seconds
        (e.g. another process took the port): the caller may try a new port.
        """
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--no-control-socket", self.app],
                cwd=self.app_dir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited ({self.process.returncode}):\n{self.logs()[-3000:]}")
            # Our own master must be listening (not some other process on a reused port).
            if f"Listening at: {self.url}" in self.logs() and self.answers(ready_path) == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not get ready within {timeout}s:\n{self.logs()[-3000:]}")

    def answers(self, path: str) -> int:
        """Status of one GET, 0 when nothing answers."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        except OSError:
            return 0
        finally:
            conn.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def worker_pids(self) -> list[int]:
        """The master's live worker processes."""
        return child_pids(self.pid) if self.process is not None else []

    def all_pids(self) -> list[int]:
        return [self.pid, *self.worker_pids()]

    def stop(self, grace: float = 20) -> None:
        """SIGTERM (graceful), then SIGKILL to the whole process group if it lingers."""
        process, self.process = self.process, None
        stop_process(process, grace)

    def logs(self) -> str:
        """Everything the master and its workers wrote (the service's JSON lines and gunicorn's own)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metric(self, name: str) -> dict[str, float]:
        """A counter from /metrics summed by its first label ({} when the service has none)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            text = response.read().decode(errors="replace") if response.status == 200 else ""
        except OSError:
            return {}
        finally:
            conn.close()
        totals: dict[str, float] = {}
        for line in text.splitlines():
            match = re.match(rf'^{name}_total\{{\w+="([^"]*)"[^}}]*\}} ([0-9.e+]+)$', line)
            if match:
                totals[match.group(1)] = totals.get(match.group(1), 0) + float(match.group(2))
        return totals


def start_gunicorn(
    settings: dict[str, Any],
    log_dir: Path,
    started: list[Gunicorn],
    workers: int = 2,
    threads: int = 4,
    worker_class: str = "gthread",
    app_dir: Path = SERVICE_DIR,
    ready_path: str = "/health/live",
    app: str = "fluxkart:create_app()",
) -> Gunicorn:
    """The service (or a copy of it in app_dir, or another app factory such as
    'tests.harness.patched:dropped_connection_500()') under gunicorn on a free port, ready.

    Tries a new port up to three times when another process took it. Every one
    started, also a half-started one, is appended to `started` for the caller to stop.
    """
    failures = []
    for _ in range(3):
        port = free_port()
        metrics_dir = log_dir / f"metrics-{port}"
        metrics_dir.mkdir(exist_ok=True)
        env = gunicorn_env(settings, workers, threads, worker_class, metrics_dir)
        server = Gunicorn(env, log_dir, app_dir=app_dir, app=app, port=port)
        started.append(server)  # registered first, so a half-started one is stopped too
        try:
            server.start(ready_path=ready_path)
            return server
        except RuntimeError as exc:
            server.stop()
            failures.append(str(exc))
    raise RuntimeError("gunicorn would not start:\n" + "\n".join(failures))
