"""Benchmark of `flask --app fluxkart import`: import against API replay, in one run.

    .venv/bin/python -m bench.import_bench                      # 1,000,000 orders, 2 runs (~6 minutes)
    .venv/bin/python -m bench.import_bench --orders 100000 --preload 100000 --replay-seconds 10

On a throwaway mariadbd (tests/harness/mariadb.py; never the machine's server), with the
benchmark's shop workload (bench/workload.py: repeat customers, new customers, new
emails or phones, ~2% bridges that merge two customers) written as a CSV export:

1. API replay: the file's orders as JSON bodies sent to POST /identify by wrk at
   concurrency 32, the service under gunicorn with its default settings (gunicorn.conf.py,
   as the Procfile starts it), for --replay-seconds on a fresh database: orders/s.
2. import of the whole file into an empty database: wall time, orders/s, peak RSS.
   Steps 1 and 2 run --runs times each, A B B A (medians, min-max).
3. import of the first tenth of the file into an empty database: peak RSS again, to show
   memory does not grow with the file.
4. import of the whole file into a database preloaded with --preload contacts (bulk SQL,
   bench/database.py): wall time.
5. the invariant checker (tests/harness/checker.py) on the table of step 2.

Prints a markdown report and writes it to bench/results/import.md (--out). Every process it
starts is stopped at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fluxkart
from bench import database
from bench.loadgen import run_wrk
from bench.workload import CustomerModel, Identifiers, Pair, ShopMix, commit, shop_batch
from identity.pool import get_db
from identity.settings import SETTINGS
from tests.harness.checker import check_invariants, violation_kinds
from tests.harness.gunicorn import Gunicorn
from tests.harness.mariadb import MariaDBServer

REPO = Path(__file__).resolve().parents[1]
CHUNK = 10_000  # orders drawn from the model at a time (the model then learns what they did)
SUMMARY = re.compile(
    r"lines read (?P<lines>[\d,]+), imported (?P<imported>[\d,]+): customers created (?P<created>[\d,]+), "
    r"rows linked (?P<linked>[\d,]+), merges (?P<merged>[\d,]+), repaired (?P<repaired>[\d,]+), "
    r"unchanged (?P<unchanged>[\d,]+); "
    r"rejected (?P<rejected>[\d,]+); (?P<seconds>[\d.]+) s, (?P<rate>[\d,]+) orders/s, "
    r"peak RSS (?P<rss>\d+) MiB, reading (?P<reader_rss>\d+) MiB"
)
STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


def write_orders(path: Path, orders: int, seed: int) -> tuple[list[str], list[Pair]]:
    """A CSV export of `orders` shop orders (orderId, email, phoneNumber, total); returns the
    JSON bodies and canonical pairs of every order, in file order.

    The first orders are all new customers (an empty shop has no repeat customers yet);
    then the shop mix. Values are spelled as shops send them: upper-case emails with
    spaces, phones as numbers or formatted (bench/workload.py's encode_body).
    """
    rng = random.Random(seed)
    model, ids = CustomerModel(), Identifiers()
    bodies: list[str] = []
    pairs: list[Pair] = []
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["orderId", "email", "phoneNumber", "total"])
        while len(bodies) < orders:
            count = min(CHUNK, orders - len(bodies))
            mix = ShopMix(new_customer=1.0, new_identifier=0, bridge=0) if not model else None
            batch = shop_batch(rng, model, ids, count, mix)
            commit(model, batch, count)
            for body in batch.bodies:
                fields = json.loads(body)
                writer.writerow(
                    [
                        len(bodies) + 1,
                        fields.get("email") or "",
                        fields.get("phoneNumber") if fields.get("phoneNumber") is not None else "",
                        f"{rng.uniform(5, 500):.2f}",
                    ]
                )
                bodies.append(body)
            pairs.extend(batch.pairs)
    return bodies, pairs


def create_database(port: int, name: str) -> None:
    """A fresh database whose schema the service itself creates (so ServiceState says it is its own)."""
    conn = database.connect(port)
    with conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        cur.execute(f"CREATE DATABASE `{name}`")
    settings = {name: "" for name in SETTINGS}
    settings.update(MYSQL_HOST="127.0.0.1", MYSQL_PORT=str(port), MYSQL_USER="root", MYSQL_DATABASE=name)
    app = fluxkart.create_app(settings)
    with app.app_context():
        db = get_db()
        db.connect()
        db.close()


def run_import(port: int, database_name: str, path: Path, out: Path) -> dict[str, Any]:
    """`flask --app fluxkart import PATH --quiet` as its own process; its summary's figures and wall time."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("MYSQL_", "FLUXKART_"))}
    env.update(MYSQL_HOST="127.0.0.1", MYSQL_PORT=str(port), MYSQL_USER="root", MYSQL_DATABASE=database_name)
    command = [str(REPO / ".venv" / "bin" / "flask"), "--app", "fluxkart", "import", str(path), "--quiet"]
    started = time.monotonic()
    with open(out, "wb") as log:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, check=False)
    wall = time.monotonic() - started
    text = done.stdout.decode()
    match = SUMMARY.search(text)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"import failed ({done.returncode}): {text} (stderr in {out})")
    figures = {name: float(value.replace(",", "")) for name, value in match.groupdict().items()}
    figures["wall_s"] = wall
    return figures


def replay(port: int, database_name: str, bodies: list[str], seconds: float, scratch: Path) -> dict[str, Any]:
    """The orders sent to POST /identify by wrk at C=32, gunicorn with its default settings."""
    settings = {
        "MYSQL_HOST": "127.0.0.1",
        "MYSQL_PORT": str(port),
        "MYSQL_USER": "root",
        "MYSQL_PASSWORD": "",
        "MYSQL_DATABASE": database_name,
        "FLUXKART_API_TOKEN": "",
        "FLUXKART_PHONE_REGION": "",
    }
    server = Gunicorn(settings, scratch, app_dir=REPO, log_path=scratch / "gunicorn.log")
    try:
        server.start()
        result = run_wrk(server.port, bodies, 32, seconds, scratch)
    finally:
        server.stop()
    return {
        "requests": result.requests,
        "seconds": result.duration_s,
        "rate": result.throughput,
        "non_2xx": result.non_2xx + result.socket_errors,
        "wrapped": bool(result.extra.get("wrapped")),
    }


def spread(values: list[float], form: str) -> str:
    """The median and, over several runs, the range: '12,762 (11,657-13,100)'."""
    text = format(statistics.median(values), form)
    if len(values) > 1:
        text += f" ({format(min(values), form)}-{format(max(values), form)})"
    return text


def report(options: argparse.Namespace, figures: dict[str, Any], command: str) -> str:
    replays, empties = figures["replay"], figures["empty"]
    tenth, full, first = figures["tenth"], figures["preloaded"], figures["empty"][0]
    api = [r["rate"] for r in replays]
    imports = [e["imported"] / e["wall_s"] for e in empties]
    # Each import against the replay next to it in the A B B A order.
    ratios = [i / a for i, a in zip(imports, api, strict=True) if a]
    rows = [
        ("API replay: POST /identify, wrk C=32, default gunicorn", f"{spread(api, ',.0f')} orders/s", "-"),
        ("import into an empty database", f"{spread(imports, ',.0f')} orders/s", "-"),
        ("import / API replay", f"{spread(ratios, '.1f')}x", "at least 20x"),
        (
            f"{options.orders:,} orders into an empty database",
            f"{spread([e['wall_s'] for e in empties], '.0f')} s",
            "under 180 s",
        ),
        (
            f"{options.orders:,} orders into a database of {options.preload:,} contacts",
            f"{full['wall_s']:.0f} s",
            "under 300 s",
        ),
        (
            "peak RSS of the import process: whole file / first tenth",
            f"{max(e['rss'] for e in empties):.0f} MiB / {tenth['rss']:.0f} MiB",
            "bounded (not growing with the file)",
        ),
        (
            "peak RSS of its reading process: whole file / first tenth",
            f"{max(e['reader_rss'] for e in empties):.0f} MiB / {tenth['reader_rss']:.0f} MiB",
            "bounded (not growing with the file)",
        ),
        ("invariant violations after the import (tests/harness/checker.py)", str(figures["violations"]), "0"),
    ]
    outcome = (
        f"Outcomes of the import into the empty database: customers created {first['created']:,.0f}, "
        f"rows linked {first['linked']:,.0f}, merges {first['merged']:,.0f}, "
        f"unchanged {first['unchanged']:,.0f}."
    )
    replayed = "; ".join(
        f"{r['requests']:,} requests in {r['seconds']:.1f} s, non-2xx or socket errors {r['non_2xx']}"
        for r in replays
    )
    lines = [
        "# Import benchmark",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores (load average at the "
        f"end {figures['load']}), MariaDB {figures['mariadb']} (throwaway server, tests/harness/mariadb.py). "
        f"{len(empties)} runs of the API replay and of the import into an empty database, A B B A; "
        "medians, min-max in brackets; the ratio pairs each import with the replay next to it. "
        "The preloaded import and the first tenth: one run each.",
        "",
        f"Command: `{command}`",
        "",
        "| figure | this run | target |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        outcome,
        f"API replays: {replayed}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--preload", type=int, default=1_000_000, help="contacts already stored for step 4")
    parser.add_argument("--replay-seconds", type=float, default=20)
    parser.add_argument("--runs", type=int, default=2, help="API replays and imports into an empty database")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--buffer-pool-mib", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "import.md")
    options = parser.parse_args(argv)
    command = "python3 -m bench.import_bench " + " ".join(argv)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fluxkart-import-bench-") as scratch_name:
        scratch = Path(scratch_name)
        log(f"writing {options.orders:,} shop orders")
        path = scratch / "orders.csv"
        bodies, pairs = write_orders(path, options.orders, options.seed)
        tenth_path = scratch / "tenth.csv"
        with open(path) as source, open(tenth_path, "w") as tenth:
            for line in itertools.islice(source, options.orders // 10 + 1):
                tenth.write(line)
        (scratch / "mariadb").mkdir()
        server = MariaDBServer(scratch / "mariadb")
        with contextlib.ExitStack() as stack:
            stack.callback(server.stop)
            server.start(timeout=60)
            port = server.port
            database.set_buffer_pool(port, options.buffer_pool_mib)
            database.set_flush_at_commit(port, 1)
            figures["mariadb"] = database.server_version(port)

            figures["replay"], figures["empty"] = [], []
            for run in range(options.runs):
                # A B B A: the replay first in even runs, the import first in odd ones.
                for step in ("replay", "import") if run % 2 == 0 else ("import", "replay"):
                    if step == "replay":
                        log(f"API replay ({run + 1}/{options.runs})")
                        create_database(port, "replay")
                        # As many bodies as the service could take in the time, so wrk never wraps.
                        bodies_sent = bodies[: int(6000 * options.replay_seconds)]
                        result = replay(port, "replay", bodies_sent, options.replay_seconds, scratch)
                        figures["replay"].append(result)
                        log(f"  {result['rate']:,.0f} orders/s")
                        database.drop_databases(port, ["replay"])
                        continue
                    log(f"import into an empty database ({run + 1}/{options.runs})")
                    create_database(port, "empty")
                    result = run_import(port, "empty", path, scratch / f"import-empty-{run}.log")
                    figures["empty"].append(result)
                    log(f"  {result['wall_s']:.0f} s")
                    if run == 0:
                        rows = database.fetch_rows(port, "empty")
                        violations = check_invariants(rows, pairs)
                        figures["violations"] = len(violations)
                        log(f"  invariant violations: {dict(violation_kinds(violations)) or 'none'}")
                        del rows
                    database.drop_databases(port, ["empty"])

            log("import of the first tenth")
            create_database(port, "tenth")
            figures["tenth"] = run_import(port, "tenth", tenth_path, scratch / "import-tenth.log")
            database.drop_databases(port, ["tenth"])

            log(f"preloading {options.preload:,} contacts")
            create_database(port, "preloaded")
            model, ids = CustomerModel(), Identifiers()
            # Identifiers from another seed's counter range would collide with the file's:
            # skip past every identifier the file uses, so the preload is other customers.
            ids.emails = ids.phones = options.orders * 2
            database.preload(port, "preloaded", model, ids, random.Random(options.seed + 1), options.preload)
            log("import into the preloaded database")
            figures["preloaded"] = run_import(port, "preloaded", path, scratch / "import-preloaded.log")
            log(f"  {figures['preloaded']['wall_s']:.0f} s")
        figures["load"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    text = report(options, figures, command)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
