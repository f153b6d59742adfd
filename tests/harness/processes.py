"""The servers tests and the benchmark start: ports, gunicorn, and stopping them.

Ports: every server the suite starts (gunicorn, mariadbd, the in-process HTTP
server) takes its port from `free_port()`. By default that is any free port the
kernel offers. On a shared host set FLUXKART_TEST_PORTS=start-end (e.g.
`FLUXKART_TEST_PORTS=42000-42199`) and every port comes from that range, so the
suite never lands on a port another service expects to be free.

gunicorn: `Gunicorn` runs `gunicorn -c gunicorn.conf.py 'fluxkart:create_app()'`
(as the Procfile does) from a folder holding the service, on 127.0.0.1, logging
to a file. The fault, stress and observability tests and bench/ all use it.
"""

from __future__ import annotations

import errno
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SERVICE_DIR = Path(__file__).resolve().parents[2]
PORTS_SETTING = "FLUXKART_TEST_PORTS"
handed_out: set[int] = set()  # ports this process gave a server already (tried last next time)


def port_range() -> range | None:
    """The ports FLUXKART_TEST_PORTS allows ("start-end", both included), or None when unset."""
    text = os.environ.get(PORTS_SETTING, "").strip()
    if not text:
        return None
    match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", text)
    if not match or not 1024 <= int(match.group(1)) <= int(match.group(2)) <= 65535:
        raise RuntimeError(f"{PORTS_SETTING} must look like 42000-42199 (ports 1024-65535), not {text!r}")
    return range(int(match.group(1)), int(match.group(2)) + 1)


def can_bind(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (from FLUXKART_TEST_PORTS when set).

    Another process may still take it before our server binds it: servers
    started on it check that they own it and retry on another port.
    """
    ports = port_range()
    if ports is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    # Ports not handed out yet first, starting at a per-process offset so two
    # sessions sharing a range do not race for the same first port.
    start = os.getpid() % len(ports)
    ordered = [ports[(start + i) % len(ports)] for i in range(len(ports))]
    for port in sorted(ordered, key=lambda p: p in handed_out):
        if can_bind(port):
            handed_out.add(port)
            return port
    raise RuntimeError(f"no free port left in {PORTS_SETTING}={os.environ[PORTS_SETTING]}")


def stop_process(process: subprocess.Popen[bytes] | None, grace: float = 15) -> None:
    """SIGTERM (graceful), then SIGKILL to the process and its group if it lingers.

    The group is killed only when the process leads one (started with
    start_new_session=True), so a server's workers never outlive it.
    """
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
        except ProcessLookupError:
            pass
        process.wait(10)


def child_pids(parent: int) -> list[int]:
    """Live (not zombie) direct children of a process, e.g. gunicorn's workers, from /proc/*/stat."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: count fields after the last ')'.
        state, ppid = text[text.rindex(")") + 2 :].split()[:2]
        if int(ppid) == parent and state != "Z":
            found.append(int(entry.name))
    return sorted(found)


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
