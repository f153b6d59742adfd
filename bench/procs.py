"""What the benchmark watches in the processes it starts: CPU and memory from /proc, and
gunicorn's three concurrency settings (`GunicornConfig`).

CPU comes from /proc/<pid>/stat (utime + stime) read before and after a measured run,
so it costs nothing while the run is going; the load generator's CPU comes from
getrusage(RUSAGE_CHILDREN) around its wait (it has exited by then, so /proc has
nothing left to read). gunicorn is started by the tests' own launcher
(tests/harness/gunicorn.py): in its own process group, stopped by its own pid, politely
first, then by force.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tests.harness.processes import child_pids, stat_fields

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a live process has used so far; zeros when it is gone."""
    fields = stat_fields(pid)
    if fields is None:
        return 0.0, 0.0
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """User + system CPU a live process has used so far; 0 when it is gone."""
    return sum(cpu_times(pid))


def total_cpu_seconds(pids: Iterable[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def total_system_seconds(pids: Iterable[int]) -> float:
    """Kernel-mode CPU of these processes: syscalls, mostly socket reads and writes here."""
    return sum(cpu_times(pid)[1] for pid in pids)


def children_cpu_seconds() -> float:
    """CPU of this process's children that have exited and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used (all cores), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def descendant_pids(root: int) -> list[int]:
    """Every process below `root` (a shell script's children and theirs)."""
    found, frontier = [], [root]
    while frontier:
        children = [pid for parent in frontier for pid in child_pids(parent)]
        found += children
        frontier = children
    return found


def status_mib(pid: int, field: str) -> float:
    """A memory figure (kB) from /proc/<pid>/status, in MiB; 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_mib(pid: int) -> float:
    """Resident memory (VmRSS) of a live process now, in MiB; 0 when it is gone."""
    return status_mib(pid, "VmRSS")


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) of a live process, in MiB; 0 when it is gone."""
    return status_mib(pid, "VmHWM")


@dataclass
class GunicornConfig:
    """The settings gunicorn.conf.py reads from the environment, and the worker's database
    connections (FLUXKART_DB_POOL_SIZE: the requests it runs at once); None keeps the default."""

    workers: int | None = None
    threads: int | None = None
    worker_class: str | None = None
    pool_size: int | None = None

    @classmethod
    def parse(cls, text: str) -> GunicornConfig:
        """'2:8:gthread', '4:1:sync', ':16:', '2::gevent:4' (empty parts keep the defaults)."""
        parts = (text.split(":") + ["", "", "", ""])[:4]
        workers, threads, pool = (int(part) if part else None for part in (parts[0], parts[1], parts[3]))
        return cls(workers, threads, parts[2] or None, pool)

    def env(self) -> dict[str, str]:
        values = {
            "WEB_CONCURRENCY": self.workers,
            "GUNICORN_THREADS": self.threads,
            "GUNICORN_WORKER_CLASS": self.worker_class,
            "FLUXKART_DB_POOL_SIZE": self.pool_size,
        }
        return {name: str(value) for name, value in values.items() if value is not None}

    def label(self) -> str:
        """What gunicorn will run, defaults resolved as gunicorn.conf.py resolves them."""
        workers = self.workers or (os.cpu_count() or 1)
        worker_class = self.worker_class or "gevent"
        threads = self.threads or 1
        if worker_class == "sync" and threads > 1:
            worker_class = "gthread"  # what gunicorn itself does with sync and threads > 1
        return (
            f"{workers} {worker_class} workers"
            + (f" x {threads} threads" if worker_class == "gthread" else "")
            + (f", {self.pool_size} connections each" if self.pool_size else "")
        )
