"""What erased-means-gone costs an erasure on SQLite: p50 of DELETE /customers, with and without.

    .venv/bin/python -m bench.erasure_cost                          # 20,000 customers, 200 erasures a side
    .venv/bin/python -m bench.erasure_cost --customers 2000 --erasures 100

A is the service as it erased before issue 22 (tests.harness.patched:erasure_without_scrub:
no secure_delete, no VACUUM, no WAL checkpoint), B is the service itself. Each side gets its
own SQLite file holding the same `--customers` customers (two rows each, written in-process
before the servers start), is served by gunicorn (one sync worker), and erasures alternate
A B B A from one client, so both sides see the same machine load at the same moments. Also
timed, the same way: identify of a new customer (what secure_delete costs the write path).
Reported: p50 per side, B/A, and the file size. Talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

from tests.harness.database import blank_settings
from tests.harness.gunicorn import Gunicorn, gunicorn_env

APPS = {"A": "tests.harness.patched:erasure_without_scrub()", "B": "fluxkart:create_app()"}
TOKEN = "erasure-cost-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def customer(number: int) -> tuple[str, str]:
    """The email and phone of customer `number` (12-digit phones, no blocked placeholder)."""
    return f"c{number:07d}.{number * 7919 % 100003}@bench.example", f"91{(number * 48271) % 10**10:010d}"


def preload(settings: dict[str, str], customers: int) -> None:
    """Write the customers through the service's own code, in-process (two rows each)."""
    import logging

    import fluxkart

    client = fluxkart.create_app(settings).test_client()
    logging.getLogger("fluxkart").setLevel(logging.ERROR)  # after create_app, which sets LOG_LEVEL's
    for number in range(customers):
        email, phone = customer(number)
        for body in ({"phoneNumber": phone}, {"email": email, "phoneNumber": phone}):
            response = client.post("/identify", json=body, headers=AUTH)
            if response.status_code != 200:
                raise RuntimeError(f"preload: identify answered {response.status_code}")


def timed(session: requests.Session, method: str, url: str, **kwargs: object) -> float:
    started = time.perf_counter()
    response = session.request(method, url, headers=AUTH, timeout=60, **kwargs)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{method} answered {response.status_code}: {response.text[:200]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--erasures", type=int, default=200, help="timed erasures per side")
    args = parser.parse_args()
    if args.erasures * 2 > args.customers:
        parser.error("--erasures must be at most half of --customers")
    times: dict[str, dict[str, list[float]]] = {"erasure": {"A": [], "B": []}, "identify": {"A": [], "B": []}}
    with tempfile.TemporaryDirectory(prefix="fluxkart-erasure-cost-") as tmp:
        work = Path(tmp)
        servers: dict[str, Gunicorn] = {}
        sizes: dict[str, int] = {}
        try:
            for side, app in APPS.items():
                settings = {"FLUXKART_SQLITE_PATH": str(work / f"{side}.db"), "FLUXKART_API_TOKEN": TOKEN}
                started = time.perf_counter()
                preload({**blank_settings(), **settings}, args.customers)
                print(
                    f"side {side}: {args.customers} customers written in {time.perf_counter() - started:.0f}s"
                )
                servers[side] = Gunicorn(gunicorn_env(settings, 1, 1, "sync"), work, app=app)
                servers[side].start(ready_path="/health/ready")
                sizes[side] = os.path.getsize(settings["FLUXKART_SQLITE_PATH"])
            sessions = {side: requests.Session() for side in servers}
            for number in range(args.erasures):
                email, _ = customer(number * 2)  # every other customer: spread over the file
                new_email, new_phone = f"new{number}@bench.example", f"93{number:010d}"
                for side in ("AB", "BA")[number % 2]:
                    url = servers[side].url
                    times["erasure"][side].append(
                        timed(sessions[side], "DELETE", url + "/customers", params={"email": email})
                    )
                    body = {"email": new_email, "phoneNumber": new_phone}
                    times["identify"][side].append(
                        timed(sessions[side], "POST", url + "/identify", json=body)
                    )
        finally:
            for server in servers.values():
                server.stop()
    print(
        f"\nSQLite, {args.customers} customers ({args.customers * 2} rows, "
        f"file {sizes['B'] / 2**20:.1f} MiB), "
        f"{args.erasures} erasures per side, sides alternating A B B A"
    )
    print("| request | A p50 ms (before: no clean-up) | B p50 ms (VACUUM + checkpoint) | B/A |")
    print("|---|---|---|---|")
    for kind, sides in times.items():
        p50a, p50b = (statistics.median(sides[side]) * 1000 for side in "AB")
        print(f"| {kind} | {p50a:.2f} | {p50b:.2f} | {p50b / p50a:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
