"""What the history costs identify's write path: p50 of new-customer and merge requests, with and without.

    .venv/bin/python -m bench.history_cost                       # MariaDB, ~3 minutes
    .venv/bin/python -m bench.history_cost --backend sqlite

A is the service with record_identify_events replaced by a no-op (history off: the
same code otherwise), B is the service itself. Both are served at the same time (gunicorn,
one sync worker each, a database each on the same server) and requests alternate between
them A B B A, one at a time from one client: on a shared machine whose load changes from
second to second, both see the same load at the same moments (separate runs one after the
other differed by +-30% here, hiding a cost of one INSERT). Timed: `--requests` new-customer
requests per side, then, after creating `--requests` pairs of customers per side (untimed),
the merge of each pair. Reported per kind: p50 of A and B, B/A, the median of the paired
differences B - A, and B/A per quarter of the requests (min-max). Bounded: 6 x --requests
requests per side; talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

from tests.harness.gunicorn import Gunicorn, gunicorn_env
from tests.harness.mariadb import MariaDBServer

ROOT = Path(__file__).resolve().parent.parent

# The two sides: A the service with history off (identify records nothing: its patch point
# record_identify_events replaced by name), B the service itself.
APPS = {"A": "tests.harness.patched:without_history()", "B": "fluxkart:create_app()"}


def timed(session: requests.Session, url: str, email: str, phone: str) -> float:
    """One identify, its latency in seconds (raises on anything but 200)."""
    started = time.perf_counter()
    response = session.post(url + "/identify", json={"email": email, "phoneNumber": phone}, timeout=30)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"identify answered {response.status_code}: {response.text[:200]}")
    return elapsed


def abba(count: int) -> list[str]:
    """The side of each of `count` paired slots: A B, B A, A B, ... (two requests per slot)."""
    return [("AB", "BA")[i % 2] for i in range(count)]


def paired(
    sessions: dict[str, requests.Session], urls: dict[str, str], bodies: list[tuple[str, str]]
) -> dict[str, list[float]]:
    """Send bodies[i] to both sides in A B B A order; latencies (s) per side, in body order."""
    times: dict[str, list[float]] = {"A": [], "B": []}
    for order, (email, phone) in zip(abba(len(bodies)), bodies, strict=True):
        for side in order:
            times[side].append(timed(sessions[side], urls[side], email, phone))
    return times


def measure(servers: dict[str, Gunicorn], requests_per_kind: int) -> dict[str, dict[str, list[float]]]:
    """Latencies (s) of new-customer and merge requests on both sides, sent A B B A."""
    urls = {side: server.url for side, server in servers.items()}
    sessions = {side: requests.Session() for side in servers}
    n = requests_per_kind
    paired(sessions, urls, [(f"warm{i}@x.test", f"1{i:06d}") for i in range(30)])
    created = paired(sessions, urls, [(f"new{i}@x.test", f"2{i:06d}") for i in range(n)])
    paired(sessions, urls, [(f"a{i}@x.test", f"3{i:06d}") for i in range(n)])
    paired(sessions, urls, [(f"b{i}@x.test", f"4{i:06d}") for i in range(n)])
    merged = paired(sessions, urls, [(f"a{i}@x.test", f"4{i:06d}") for i in range(n)])
    for session in sessions.values():
        session.close()
    return {"new customer": created, "merge": merged}


def report(
    backend: str,
    results: dict[str, dict[str, list[float]]],
    n: int,
    sides: tuple[str, str] = ("history off", "history on"),
) -> None:
    """A markdown table of the figures; `sides` names A and B (bench.changes_cost shares it)."""
    print(f"\n{backend}: {n} requests per kind and side, sides alternating A B B A")
    print(
        f"| request | A p50 ms ({sides[0]}) | B p50 ms ({sides[1]}) | B/A "
        "| median of B - A, ms | B/A by quarter |"
    )
    print("|---|---|---|---|---|---|")
    for kind, times in results.items():
        a, b = times["A"], times["B"]
        p50a, p50b = statistics.median(a) * 1000, statistics.median(b) * 1000
        diff = statistics.median(y - x for x, y in zip(a, b, strict=True)) * 1000
        q = len(a) // 4
        quarters = [
            statistics.median(b[i : i + q]) / statistics.median(a[i : i + q]) for i in range(0, 4 * q, q)
        ]
        print(
            f"| {kind} | {p50a:.2f} | {p50b:.2f} | {p50b / p50a:.3f} | {diff:+.2f} "
            f"| {min(quarters):.3f}-{max(quarters):.3f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["mysql", "sqlite"], default="mysql")
    parser.add_argument("--requests", type=int, default=400, help="timed requests per kind and side")
    parser.add_argument("--flush-at-commit", type=int, default=1, help="innodb_flush_log_at_trx_commit")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fluxkart-history-cost-") as tmp:
        work = Path(tmp)
        mariadb = None
        if args.backend == "mysql":
            mariadb = MariaDBServer(work / "mariadb")
            mariadb.start()
            with mariadb.connect() as conn, conn.cursor() as cur:
                cur.execute("SET GLOBAL innodb_flush_log_at_trx_commit = %s", (args.flush_at_commit,))
        servers: dict[str, Gunicorn] = {}
        try:
            for side, app in APPS.items():
                settings = {"FLUXKART_SQLITE_PATH": str(work / f"{side}.db")}
                if mariadb is not None:
                    with mariadb.connect() as conn, conn.cursor() as cur:
                        cur.execute(f"CREATE DATABASE `history_cost_{side}`")
                    settings = mariadb.settings(f"history_cost_{side}")
                servers[side] = Gunicorn(gunicorn_env(settings, 1, 1, "sync"), work, app=app)
                servers[side].start(ready_path="/health/ready")
            results = measure(servers, args.requests)
        finally:
            for server in servers.values():
                server.stop()
            if mariadb is not None:
                mariadb.stop()
    report(args.backend, results, args.requests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
