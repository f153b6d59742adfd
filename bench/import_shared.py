"""Benchmark of `flask --app fluxkart import` on a file where one phone number is on every order,
beside an ordinary file of the same size, in one run (issue 21; SPEC, "Merge protection").

    .venv/bin/python -m bench.import_shared                       # 2,000 orders, 3 runs, both backends
    .venv/bin/python -m bench.import_shared --orders 20000 --runs 1 --backends sqlite

Three CSV exports of --orders lines each:

- ordinary: the benchmark's shop workload (bench/import_bench.py's write_orders: new and
  repeat customers, new emails or phones, ~2% bridges);
- shared: `userN@shop.example` with one phone number that is not blocked on every line: its
  customer reaches FLUXKART_MAX_CUSTOMER_IDENTIFIERS, then every other order is applied
  without the number (a customer of its own, a `refused` event);
- blocked: the same with `0000000000`, blocked by default: left out of every order.

Each file is imported --runs times into a fresh database on each backend (SQLite in a
scratch folder; MariaDB on a throwaway mariadbd, tests/harness/mariadb.py, never the
machine's server), the files' runs interleaved (A B C, C B A, ...), as an operator runs it
(`flask --app fluxkart import FILE --quiet`, its own process, from --repo). Prints a markdown
table of the import's own rate (its summary line) and the wall time, medians with the
range over the runs, and writes it to --out. Every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.import_bench import write_orders
from identity.settings import SETTINGS
from tests.harness.mariadb import MariaDBServer

REPO = Path(__file__).resolve().parents[1]
SHARED_PHONE = "9876501234"
BLOCKED_PHONE = "0000000000"
RATE = re.compile(r"imported (?P<imported>[\d,]+):.*?; (?P<seconds>[\d.]+) s, (?P<rate>[\d,]+) orders/s")
FILES = ("ordinary", "shared", "blocked")


def write_shared(path: Path, orders: int, phone: str) -> None:
    """A CSV export whose every line carries `phone`, each with a shopper's own email."""
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["orderId", "email", "phoneNumber"])
        for i in range(orders):
            writer.writerow([i + 1, f"user{i}@shop.example", phone])


def import_file(repo: Path, settings: dict[str, str], path: Path, log: Path) -> dict[str, float]:
    """`flask --app fluxkart import PATH --quiet` from `repo` as its own process; the rate its
    summary reports, and the wall time of the whole command."""
    env = {name: value for name, value in os.environ.items() if name not in SETTINGS}
    env.update(settings)
    command = [sys.executable, "-m", "flask", "--app", "fluxkart", "import", str(path), "--quiet"]
    started = time.monotonic()
    with open(log, "ab") as err:
        done = subprocess.run(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=err, check=False)
    wall = time.monotonic() - started
    text = done.stdout.decode()
    match = RATE.search(text)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"import failed ({done.returncode}): {text} (stderr in {log})")
    return {
        "rate": float(match["rate"].replace(",", "")),
        "seconds": float(match["seconds"]),
        "wall": wall,
        "imported": float(match["imported"].replace(",", "")),
    }


def spread(values: list[float], form: str) -> str:
    """The median and, over several runs, the range: '1,762 (1,657-1,800)'."""
    text = format(statistics.median(values), form)
    if len(values) > 1:
        text += f" ({format(min(values), form)}-{format(max(values), form)})"
    return text


def report(options: argparse.Namespace, results: dict[tuple[str, str], list[dict[str, float]]]) -> str:
    lines = [
        f"# Import of a file where one phone number is on every order ({datetime.now(UTC):%Y-%m-%d})",
        "",
        f"`{' '.join(['python -m bench.import_shared', *sys.argv[1:]])}` on {platform.node()}, "
        f"{os.cpu_count()} cores; {options.orders:,} orders a file, {options.runs} run(s) each, "
        "medians (min-max).",
        "",
        "| backend | file | orders/s (the import's summary) | import s | command wall s |",
        "|---|---|---|---|---|",
    ]
    for backend in options.backends:
        for name in FILES:
            runs = results.get((backend, name), [])
            if runs:
                rate = spread([r["rate"] for r in runs], ",.0f")
                seconds = spread([r["seconds"] for r in runs], ".2f")
                wall = spread([r["wall"] for r in runs], ".2f")
                lines.append(f"| {backend} | {name} | {rate} | {seconds} | {wall} |")
    lines += [
        "",
        f"ordinary: the shop workload; shared: `userN@shop.example` with {SHARED_PHONE} on every line "
        f"(not blocked); blocked: the same with {BLOCKED_PHONE} (blocked by default). "
        "FLUXKART_MAX_CUSTOMER_IDENTIFIERS at its default (50).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backends", type=lambda text: text.split(","), default=["sqlite", "mysql"])
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose import is measured")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "import_shared.md")
    options = parser.parse_args()
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="fluxkart-import-shared-") as folder,
        contextlib.ExitStack() as stack,
    ):
        scratch = Path(folder)
        paths = {name: scratch / f"{name}.csv" for name in FILES}
        write_orders(paths["ordinary"], options.orders, seed=21)
        write_shared(paths["shared"], options.orders, SHARED_PHONE)
        write_shared(paths["blocked"], options.orders, BLOCKED_PHONE)
        server = None
        if "mysql" in options.backends:
            (scratch / "mariadb").mkdir()
            server = MariaDBServer(scratch / "mariadb")
            stack.callback(server.stop)
            server.start(timeout=60)
        databases = iter(range(1, 10**6))
        for run in range(options.runs):
            order = FILES if run % 2 == 0 else FILES[::-1]
            for backend in options.backends:
                for name in order:
                    settings = {name_: "" for name_ in SETTINGS}
                    database = f"import_shared_{next(databases)}"
                    if backend == "mysql":
                        assert server is not None
                        with server.connect() as conn, conn.cursor() as cur:
                            cur.execute(f"CREATE DATABASE `{database}`")
                        settings.update(server.settings(database))
                    else:
                        settings["FLUXKART_SQLITE_PATH"] = str(scratch / f"{database}.db")
                    figures = import_file(options.repo, settings, paths[name], scratch / "import.log")
                    print(
                        f"run {run + 1} {backend:6} {name:8} {figures['rate']:8,.0f} orders/s "
                        f"{figures['seconds']:7.2f} s (wall {figures['wall']:.2f} s)",
                        file=sys.stderr,
                        flush=True,
                    )
                    results.setdefault((backend, name), []).append(figures)
    text = report(options, results)
    print(text)
    options.out.write_text(text)


if __name__ == "__main__":
    main()
