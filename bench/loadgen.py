"""Load generators: wrk for closed-loop HTTP load, a sequential client, and the database ceiling.

- `run_wrk`: one wrk thread, C keep-alive connections, each sending its next request as
  soon as the previous answer arrives (closed loop), bodies from a file (wrk_bodies.lua).
- `timed_posts`: one keep-alive connection from Python, one request at a time, for
  latencies of individual requests (merges, growth probes) where wrk's histogram of a
  mixed run would hide them.
- `db_ceiling`: the minimal identify transaction issued straight through PyMySQL from P
  processes, no HTTP: what the database alone sustains on this machine.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import multiprocessing.synchronize
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

from bench.procs import children_cpu_seconds
from bench.workload import Pair

WRK_SCRIPT = Path(__file__).with_name("wrk_bodies.lua")


@dataclass
class LoadResult:
    """One measured run: counts, latency percentiles (ms), and the generator's CPU."""

    requests: int
    sent: int
    duration_s: float
    errors: dict[str, int]
    latency_ms: dict[str, float]
    generator_cpu_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def non_2xx(self) -> int:
        return self.errors.get("status", 0)

    @property
    def socket_errors(self) -> int:
        return sum(v for k, v in self.errors.items() if k != "status")


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    """p50/p90/p95/p99/p999/mean/max of latencies given in seconds, in ms."""
    if not seconds:
        return {}
    ordered = sorted(seconds)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {
        "p50": at(0.50),
        "p90": at(0.90),
        "p95": at(0.95),
        "p99": at(0.99),
        "p999": at(0.999),
        "mean": statistics.fmean(ordered) * 1000,
        "max": ordered[-1] * 1000,
    }


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk")
    return found


def run_wrk(
    port: int, bodies: list[str], connections: int, duration_s: float, scratch: Path, path: str = "/identify"
) -> LoadResult:
    """POST `bodies` in order for `duration_s` over `connections` keep-alive connections."""
    bodies_file = scratch / "bodies.jsonl"
    bodies_file.write_text("\n".join(bodies) + "\n")
    command = [
        wrk_binary(),
        "-t1",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        f"http://127.0.0.1:{port}",
        "--",
        str(bodies_file),
        path,
    ]
    before = children_cpu_seconds()
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    generator_cpu = children_cpu_seconds() - before
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    data = json.loads(line.removeprefix("BENCH_RESULT "))
    latency = {name: value / 1000 for name, value in data["latency_us"].items()}
    return LoadResult(
        requests=int(data["requests"]),
        sent=int(data["sent"]),
        duration_s=data["duration_us"] / 1e6,
        errors={name: int(value) for name, value in data["errors"].items()},
        latency_ms=latency,
        generator_cpu_s=generator_cpu,
        extra={"wrapped": data["sent"] > len(bodies)},
    )


def timed_posts(port: int, bodies: list[str], path: str = "/identify") -> list[tuple[int, float, Any]]:
    """Send bodies one at a time on one keep-alive connection: (status, seconds, answer) each."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}
    results = []
    try:
        conn.request("GET", "/health/live")  # open the connection outside the timings
        conn.getresponse().read()
        for body in bodies:
            started = time.perf_counter()
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            elapsed = time.perf_counter() - started
            if response.getheader("Connection", "").lower() == "close":
                conn.close()  # sync workers close after every answer; reconnect next time
            results.append((response.status, elapsed, json.loads(payload) if payload else None))
    finally:
        conn.close()
    return results


# --------------------------------------------------------------------------
# Database ceiling
# --------------------------------------------------------------------------

SELECT_BY_EMAIL = "SELECT id FROM Contact WHERE email = %s"
SELECT_BY_PHONE = "SELECT id FROM Contact WHERE phoneNumber = %s"
INSERT_NEW = (
    "INSERT INTO Contact (phoneNumber, email, linkedId, linkPrecedence, createdAt, updatedAt) "
    "VALUES (%s, %s, NULL, 'primary', NOW(6), NOW(6))"
)


def minimal_identify(conn: pymysql.connections.Connection, email: str | None, phone: str | None) -> None:
    """BEGIN; indexed SELECT by email; indexed SELECT by phone; INSERT when new; COMMIT."""
    conn.begin()
    with conn.cursor() as cur:
        email_known = phone_known = False
        if email is not None:
            email_known = cur.execute(SELECT_BY_EMAIL, (email,)) > 0
        if phone is not None:
            phone_known = cur.execute(SELECT_BY_PHONE, (phone,)) > 0
        if (email is not None and not email_known) or (phone is not None and not phone_known):
            cur.execute(INSERT_NEW, (phone, email))
    conn.commit()


def ceiling_process(
    port: int,
    database: str,
    pairs: list[Pair],
    duration_s: float,
    barrier: multiprocessing.synchronize.Barrier,
    results: Any,
) -> None:
    """One client process: connect, wait for the others, run transactions until time is up."""
    conn = pymysql.connect(
        host="127.0.0.1",
        port=port,
        user="root",
        password="",
        database=database,
        autocommit=True,
        charset="utf8mb4",
    )
    with conn.cursor() as cur:
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")  # as the service does
    latencies = []
    barrier.wait(timeout=60)
    end = time.perf_counter() + duration_s
    i = 0
    while True:
        started = time.perf_counter()
        if started >= end:
            break
        email, phone = pairs[i % len(pairs)]
        i += 1
        try:
            minimal_identify(conn, email, phone)
        except pymysql.err.OperationalError:
            conn.rollback()  # a deadlock between two inserts of one new pair: not counted
            continue
        latencies.append(time.perf_counter() - started)
    conn.close()
    results.put(latencies)


@dataclass
class CeilingResult:
    processes: int
    transactions: int
    duration_s: float
    latency_ms: dict[str, float]
    client_cpu_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.transactions / self.duration_s


def db_ceiling(
    port: int,
    database: str,
    pairs: list[Pair],
    processes: int,
    duration_s: float,
    on_start: Any = None,
) -> CeilingResult:
    """Run `processes` clients for `duration_s`; `on_start()` is called as they are released."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(processes + 1)
    results = context.Queue()
    workers = [
        context.Process(
            target=ceiling_process,
            args=(port, database, pairs[i::processes] or pairs, duration_s, barrier, results),
        )
        for i in range(processes)
    ]
    before = children_cpu_seconds()
    for worker in workers:
        worker.start()
    latencies: list[float] = []
    try:
        barrier.wait(timeout=60)
        if on_start:
            on_start()
        for _ in workers:
            latencies.extend(results.get(timeout=duration_s + 60))
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
                worker.join()
    return CeilingResult(
        processes, len(latencies), duration_s, percentiles_ms(latencies), children_cpu_seconds() - before
    )
