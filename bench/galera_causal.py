"""What causal reads cost on Galera: identify with wsrep_sync_wait 1 (the default) against 0.

    .venv/bin/python -m bench.galera_causal            # about 3 minutes on 2 cores
    .venv/bin/python -m bench.galera_causal --rounds 2 --requests 2000

Starts a throwaway three-node Galera cluster (tests/harness/galera.py) and, for every run, one
gunicorn instance of the service per node with FLUXKART_WSREP_SYNC_WAIT set to 1 (A,
causal reads) or 0 (B), in the order A B B A per round, each on a fresh database
preloaded with the same customers. Each run sends the same requests from 12 client
threads, round-robin over the three instances: 80% repeat orders (answered by the
lock-free read, where causal reads add their wait) and 20% orders that link a new
phone number (the locked write path). Before them, one indexed SELECT is timed on
node 2 with each setting (A B B A), to show the wait alone. Reported: throughput and p50/p90 latency per run,
then per setting the median over runs with min-max, and B's median as a ratio of A's.
Everything runs on 127.0.0.1 and stops by itself (bounded by --requests per run).
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from identity.settings import SETTINGS
from tests.harness.galera import GaleraCluster, galera_missing
from tests.harness.gunicorn import Gunicorn

CLIENTS = 12
CUSTOMERS = 200
WORKERS = (2, 4, "gthread")  # per instance, as tests/cluster/test_galera.py runs them


def plan(requests_per_run: int, seed: int = 1) -> list[tuple[str, dict[str, str]]]:
    """(kind, body): "read" repeats a preloaded customer's order, "write" links a new phone."""
    rng = random.Random(seed)
    extra = itertools.count(1)
    bodies = []
    for _ in range(requests_per_run):
        c = rng.randrange(CUSTOMERS)
        if rng.random() < 0.8:
            bodies.append(("read", {"email": f"c{c}@bench.test", "phoneNumber": f"4{c:06d}"}))
        else:
            bodies.append(("write", {"email": f"c{c}@bench.test", "phoneNumber": f"3{next(extra):08d}"}))
    return bodies


def run_once(urls: list[str], bodies: list[tuple[str, dict[str, str]]]) -> dict[str, object]:
    """Send `bodies` from CLIENTS threads round-robin over `urls`; throughput and latency by kind."""
    latencies: dict[str, list[float]] = {"read": [], "write": []}
    failures = 0
    lock = threading.Lock()
    positions = itertools.count()

    def client() -> None:
        nonlocal failures
        with requests.Session() as session:
            while (i := next(positions)) < len(bodies):
                kind, body = bodies[i]
                started = time.perf_counter()
                response = session.post(urls[i % len(urls)] + "/identify", json=body, timeout=(5, 65))
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code == 200:
                        latencies[kind].append(elapsed)
                    else:
                        failures += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    every = latencies["read"] + latencies["write"]
    return {
        "rps": len(every) / seconds,
        "p50_ms": statistics.median(every) * 1000,
        "p90_ms": statistics.quantiles(every, n=10)[-1] * 1000,
        "read_p50_ms": statistics.median(latencies["read"]) * 1000,
        "write_p50_ms": statistics.median(latencies["write"]) * 1000,
        "failures": failures,
    }


def measure(
    cluster: GaleraCluster, sync_wait: str, number: int, bodies: list[tuple[str, dict[str, str]]], logs: Path
) -> dict[str, object]:
    """One run: fresh database, preload, three instances with this setting, the requests."""
    database = f"bench_causal_{number}"
    cluster.create_database(database)
    instances = []
    try:
        for settings in cluster.settings(database):
            env = {name: "" for name in SETTINGS}  # nothing leaks in from the shell
            env.update(settings, FLUXKART_WSREP_SYNC_WAIT=sync_wait, LOG_LEVEL="info")
            env.update(WEB_CONCURRENCY=str(WORKERS[0]), GUNICORN_THREADS=str(WORKERS[1]))
            env.update(GUNICORN_WORKER_CLASS=WORKERS[2])
            server = Gunicorn(env, logs)
            instances.append(server)
            server.start(ready_path="/health/ready")
        urls = [server.url for server in instances]
        with requests.Session() as session:
            for c in range(CUSTOMERS):  # the repeat customers, unmeasured
                body = {"email": f"c{c}@bench.test", "phoneNumber": f"4{c:06d}"}
                session.post(urls[c % 3] + "/identify", json=body, timeout=(5, 65)).raise_for_status()
        return run_once(urls, bodies)
    finally:
        for server in instances:
            server.stop()


def statement_cost(cluster: GaleraCluster, queries: int) -> dict[str, list[float]]:
    """Median microseconds of one indexed SELECT on node 2, wsrep_sync_wait 1 and 0, A B B A.

    The HTTP runs above mix the wait with everything else a request does; this is
    the wait alone: one causal-read round through the cluster per statement.
    """
    cluster.create_database("bench_causal_statement")
    with cluster.nodes[0].connect("bench_causal_statement") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY, email VARCHAR(64), KEY (email))")
        cur.executemany("INSERT INTO t VALUES (%s, %s)", [(i, f"c{i}@bench.test") for i in range(1000)])
    medians: dict[str, list[float]] = {"1": [], "0": []}
    with cluster.nodes[1].connect("bench_causal_statement") as conn, conn.cursor() as cur:
        for sync_wait in ("1", "0", "0", "1"):
            cur.execute("SET SESSION wsrep_sync_wait = %s", (int(sync_wait),))
            times = []
            for i in range(queries):
                started = time.perf_counter()
                cur.execute("SELECT id FROM t WHERE email = %s", (f"c{i % 1000}@bench.test",))
                cur.fetchall()
                times.append(time.perf_counter() - started)
            medians[sync_wait].append(statistics.median(times) * 1e6)
    return medians


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=1, help="A B B A rounds (default 1: 4 runs)")
    parser.add_argument("--requests", type=int, default=1500, help="requests per run (default 1500)")
    parser.add_argument(
        "--statements", type=int, default=3000, help="SELECTs per statement run (default 3000)"
    )
    args = parser.parse_args()
    why = galera_missing()
    if why:
        sys.exit(f"needs a Galera cluster: {why}")
    order = ["1", "0", "0", "1"] * args.rounds
    bodies = plan(args.requests)
    results: dict[str, list[dict[str, object]]] = {"1": [], "0": []}
    with tempfile.TemporaryDirectory(prefix="fluxkart-bench-galera-") as base:
        cluster = GaleraCluster(Path(base))
        cluster.start()
        try:
            per_statement = statement_cost(cluster, args.statements)
            for number, sync_wait in enumerate(order, start=1):
                result = measure(cluster, sync_wait, number, bodies, Path(base))
                results[sync_wait].append(result)
                shown = ", ".join(
                    f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()
                )
                print(f"run {number} wsrep_sync_wait={sync_wait}: {shown}", flush=True)
        finally:
            cluster.stop()
    print(
        f"\n{args.requests} identify requests per run, {CLIENTS} clients over 3 nodes; "
        "median (min-max) over runs"
    )
    print("| wsrep_sync_wait | requests/s | p50 ms | p90 ms | repeat-order p50 ms | linking-order p50 ms |")
    print("|---|---|---|---|---|---|")
    keys = ("rps", "p50_ms", "p90_ms", "read_p50_ms", "write_p50_ms")
    medians: dict[str, dict[str, float]] = {}
    for sync_wait in ("1", "0"):
        cells = []
        for key in keys:
            values = [float(r[key]) for r in results[sync_wait]]  # type: ignore[arg-type]
            medians.setdefault(sync_wait, {})[key] = statistics.median(values)
            cells.append(f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})")
        print(f"| {sync_wait} | " + " | ".join(cells) + " |")
    ratios = ", ".join(f"{key} {medians['1'][key] / medians['0'][key]:.2f}" for key in keys)
    print(f"\ncausal reads (1) as a ratio of none (0): {ratios}")
    runs = {k: ", ".join(f"{v:.0f}" for v in values) for k, values in per_statement.items()}
    print(
        f"one indexed SELECT on node 2, median microseconds per run: wsrep_sync_wait=1: {runs['1']}; "
        f"0: {runs['0']}; ratio of medians "
        f"{statistics.median(per_statement['1']) / statistics.median(per_statement['0']):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
