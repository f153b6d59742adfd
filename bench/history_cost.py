"""What the history costs identify's write path: p50 of new-customer and merge requests, with and without.

    .venv/bin/python bench/history_cost.py                       # MariaDB, 4 runs (A B B A), ~2 minutes
    .venv/bin/python bench/history_cost.py --backend sqlite --requests 200

A is a copy of the service whose record_identify_events returns at once (history off: the
same code otherwise), B is the service itself. Runs go A B B A so drift on the machine
hits both alike; each run gets a fresh database and a fresh gunicorn (one sync worker,
requests sent one at a time from one client, so a request's latency is the service's
alone). A run times `--requests` new-customer requests, then creates `--requests` pairs of
customers (untimed) and times the merge of each pair. Reported: p50 per run and kind, and
the ratio of B's median p50 to A's, with the min-max over runs. Bounded: 4 runs of
3 x --requests requests; talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.mariadb import MariaDBServer  # noqa: E402
from tests.service import Gunicorn  # noqa: E402

HOOK = re.compile(r'(def record_identify_events\(.*?\n    """.*?"""\n)', re.S)


def copy_without_history(target: Path) -> Path:
    """The service's files, with record_identify_events turned into a no-op (history off)."""
    target.mkdir(parents=True)
    for name in ("fluxkart.py", "gunicorn.conf.py", "openapi.json"):
        shutil.copy(ROOT / name, target / name)
    shutil.copytree(ROOT / "sql", target / "sql")
    source = (target / "fluxkart.py").read_text()
    patched, count = HOOK.subn(r"\1    return  # benchmark copy: history off\n", source)
    if count != 1:
        raise SystemExit("bench/history_cost.py: record_identify_events not found in fluxkart.py")
    (target / "fluxkart.py").write_text(patched)
    return target


def timed(session: requests.Session, url: str, email: str, phone: str) -> float:
    """One identify, its latency in seconds (raises on anything but 200)."""
    started = time.perf_counter()
    response = session.post(url + "/identify", json={"email": email, "phoneNumber": phone}, timeout=30)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"identify answered {response.status_code}: {response.text[:200]}")
    return elapsed


def one_run(
    app_dir: Path, settings: dict[str, str], work: Path, run: int, requests_per_kind: int
) -> dict[str, float]:
    """p50 (ms) of new-customer and merge requests against one fresh service and database."""
    server = Gunicorn(app_dir, settings, work, (1, 1, "sync"))
    server.start()
    try:
        url, session = server.url, requests.Session()
        tag = f"r{run}"
        for i in range(20):  # warm-up: connection, caches
            timed(session, url, f"warm{i}@{tag}.test", f"1{run:02d}{i:05d}")
        created = [
            timed(session, url, f"new{i}@{tag}.test", f"2{run:02d}{i:05d}") for i in range(requests_per_kind)
        ]
        for i in range(requests_per_kind):
            timed(session, url, f"a{i}@{tag}.test", f"3{run:02d}{i:05d}")
            timed(session, url, f"b{i}@{tag}.test", f"4{run:02d}{i:05d}")
        merged = [
            timed(session, url, f"a{i}@{tag}.test", f"4{run:02d}{i:05d}") for i in range(requests_per_kind)
        ]
        session.close()
    finally:
        server.stop()
    return {"new customer": statistics.median(created) * 1000, "merge": statistics.median(merged) * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["mysql", "sqlite"], default="mysql")
    parser.add_argument("--requests", type=int, default=300, help="timed requests per kind and run")
    parser.add_argument("--flush-at-commit", type=int, default=1, help="innodb_flush_log_at_trx_commit")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fluxkart-history-cost-") as tmp:
        work = Path(tmp)
        variants = {"A (history off)": copy_without_history(work / "off"), "B (history on)": ROOT}
        mariadb = None
        if args.backend == "mysql":
            mariadb = MariaDBServer(work / "mariadb")
            mariadb.start()
            with mariadb.connect() as conn, conn.cursor() as cur:
                cur.execute("SET GLOBAL innodb_flush_log_at_trx_commit = %s", (args.flush_at_commit,))
        try:
            results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
            order = ["A (history off)", "B (history on)", "B (history on)", "A (history off)"]
            for run, name in enumerate(order):
                settings = {"FLUXKART_SQLITE_PATH": str(work / f"run{run}.db")}
                if mariadb is not None:
                    database = f"history_cost_{run}"
                    with mariadb.connect() as conn, conn.cursor() as cur:
                        cur.execute(f"CREATE DATABASE `{database}`")
                    settings = mariadb.settings(database)
                figures = one_run(variants[name], settings, work, run, args.requests)
                results[name].append(figures)
                print(
                    f"run {run + 1} {name}: " + ", ".join(f"{k} p50 {v:.2f} ms" for k, v in figures.items())
                )
        finally:
            if mariadb is not None:
                mariadb.stop()

    print(f"\n{args.backend}, {args.requests} timed requests per kind and run, runs A B B A")
    print("| request | A p50 ms (runs) | B p50 ms (runs) | B/A of medians | B/A min-max (run pairs) |")
    print("|---|---|---|---|---|")
    for kind in ("new customer", "merge"):
        a = [r[kind] for r in results["A (history off)"]]
        b = [r[kind] for r in results["B (history on)"]]
        ratios = [y / x for x in a for y in b]
        print(
            f"| {kind} | {statistics.median(a):.2f} ({', '.join(f'{v:.2f}' for v in a)}) "
            f"| {statistics.median(b):.2f} ({', '.join(f'{v:.2f}' for v in b)}) "
            f"| {statistics.median(b) / statistics.median(a):.3f} | {min(ratios):.3f}-{max(ratios):.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
