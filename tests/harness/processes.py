"""Processes the tests and the benchmark start: their ports, stopping them, and their children.

Ports: every server the suite starts (gunicorn, mariadbd, the in-process HTTP
server) takes its port from `free_port()`. By default that is any free port the
kernel offers. On a shared host set FLUXKART_TEST_PORTS=start-end (e.g.
`FLUXKART_TEST_PORTS=42000-42199`) and every port comes from that range, so the
suite never lands on a port another service expects to be free.

Stopping: `stop_process` asks politely (SIGTERM), then kills the process's whole group.
gunicorn itself is started by tests/harness/gunicorn.py.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import subprocess
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


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, ...); None when it is gone.

    The command name may contain spaces and parentheses: fields are counted after the last ')'.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def child_pids(parent: int) -> list[int]:
    """Live (not zombie) direct children of a process, e.g. gunicorn's workers, from /proc/*/stat."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = stat_fields(entry.name)
        if fields is None:
            continue
        state, ppid = fields[:2]
        if int(ppid) == parent and state != "Z":
            found.append(int(entry.name))
    return sorted(found)
