"""Switching from the reference implementation at scale: `migrate` on a legacy table of N rows.

    .venv/bin/python -m bench.legacy                      # 1,000,000 rows, 2 runs of each (~5 min)
    .venv/bin/python -m bench.legacy --rows 100000        # smaller, for development
    .venv/bin/python -m bench.legacy --indexes            # the table as `run.sh --indexes` leaves it

Starts a throwaway mariadbd (tests/harness/mariadb.py: its own data directory and port, never
the machine's server), builds the reference implementation's Contact table
(tests/harness/legacy.py) with N rows carrying the defects that implementation and the tools
around it leave (identifiers stored as sent, chains, several primaries per customer,
NULL precedence and timestamps, deleted rows, rows without identifiers, secondaries
pointing at missing rows), and keeps it as a template. Then, A B B A: A rewrites a fresh
copy of the template once (`ALTER TABLE ... FORCE, ALGORITHM=COPY`: the floor for any
migration that must rewrite the table on this machine), B runs
`flask --app fluxkart migrate` on a fresh copy as an operator would (a subprocess; wall
time, and peak RSS as the command reports it). Also times `migrate --dry-run` and a second, idempotent
`migrate`. Writes a markdown report (default bench/results/legacy.md) and prints it.
Every process it starts is stopped at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench import database
from tests.harness.legacy import INSERT_CONTACT, LEGACY_INDEXES, MYSQL_CONTACT
from tests.harness.mariadb import MariaDBServer

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = "legacy_template"
DATABASE = "Fluxkart"
BATCH = 5000
DOMAINS = ("example.com", "example.net", "Example.org", "shop.example")
# How often each defect is drawn, per customer or per row (see LegacyRows).
CHAIN_RATE = 0.05
EXTRA_PRIMARY_RATE = 0.03
NULL_PRECEDENCE_RATE = 0.01
NULL_CREATED_RATE = 0.002
NULL_UPDATED_RATE = 0.002
DELETED_RATE = 0.01
EMPTY_ROW_RATE = 0.002
DANGLING_RATE = 0.001


@dataclass
class Command:
    """One finished run of the service's CLI."""

    seconds: float
    peak_rss_mib: float
    output: str


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


class LegacyRows:
    """Deterministic legacy rows with realistic defects, customer by customer, counted by kind."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.kinds: Counter[str] = Counter()
        self.next_id = 1
        self.customer = 0
        self.clock = datetime(2023, 1, 1)

    def email(self, n: int, variant: int) -> str:
        local = f"customer{n}"
        if variant % 3 == 1:
            self.kinds["email in another letter case"] += 1
            local = local.capitalize()
        return f"{local}@{DOMAINS[n % len(DOMAINS)]}"

    def phone(self, n: int, variant: int) -> str:
        digits = f"9{(n * 48271) % 10**9:09d}"
        if variant % 4 == 1:
            self.kinds["phone with spaces"] += 1
            return f"{digits[:5]} {digits[5:]}"
        if variant % 4 == 2:
            self.kinds["phone with country code and dashes"] += 1
            return f"+91-{digits[:5]}-{digits[5:]}"
        return digits

    def stamp(self) -> str:
        self.clock += timedelta(seconds=self.rng.randint(1, 60))
        return self.clock.strftime("%Y-%m-%d %H:%M:%S")  # the reference's DATETIME: whole seconds

    def row(
        self, phone: str | None, email: str | None, linked: int | None, precedence: str | None
    ) -> tuple[Any, ...]:
        rng, created = self.rng, self.stamp()
        updated: str | None = created
        deleted = None
        if rng.random() < NULL_PRECEDENCE_RATE:
            precedence = None
            self.kinds["NULL linkPrecedence"] += 1
        if rng.random() < DELETED_RATE:
            deleted = created
            self.kinds["soft-deleted"] += 1
        if rng.random() < NULL_UPDATED_RATE:
            updated = None
            self.kinds["NULL updatedAt"] += 1
        created_value: str | None = created
        if rng.random() < NULL_CREATED_RATE:
            created_value = None
            self.kinds["NULL createdAt"] += 1
        row = (self.next_id, phone, email, linked, precedence, created_value, updated, deleted)
        self.next_id += 1
        return row

    def customer_rows(self) -> list[tuple[Any, ...]]:
        """One customer: a primary and 0-3 secondaries, with this customer's defects."""
        rng = self.rng
        self.customer += 1
        n = self.customer
        if rng.random() < EMPTY_ROW_RATE:
            self.kinds["neither email nor phone"] += 1
            return [self.row(None, None, None, "primary")]
        size = rng.choice((1, 1, 1, 2, 2, 3, 4))
        primary = self.next_id
        rows = [self.row(self.phone(n, 0), self.email(n, 0), None, "primary")]
        chain = size >= 3 and rng.random() < CHAIN_RATE
        for k in range(1, size):
            if k > 1 and rng.random() < EXTRA_PRIMARY_RATE:
                self.kinds["second primary in a customer"] += 1
                rows.append(self.row(self.phone(n, k), self.email(n, k), None, "primary"))
                continue
            target = rows[-1][0] if chain and k > 1 else primary
            if chain and k > 1:
                self.kinds["secondary pointing at a secondary"] += 1
            if rng.random() < DANGLING_RATE:
                target = 2**31 - 1  # no such row
                self.kinds["secondary pointing at a missing row"] += 1
            rows.append(self.row(self.phone(n, k), self.email(n, k), target, "secondary"))
        return rows

    def batches(self, total: int) -> Iterator[list[tuple[Any, ...]]]:
        batch: list[tuple[Any, ...]] = []
        while self.next_id <= total:
            for row in self.customer_rows():
                if row[0] <= total:
                    batch.append(row)
            if len(batch) >= BATCH:
                yield batch
                batch = []
        if batch:
            yield batch


def build_template(port: int, rows: int, indexes: bool, seed: int) -> Counter[str]:
    """The legacy table with `rows` rows in TEMPLATE; returns the defects drawn."""
    conn = database.connect(port)
    legacy = LegacyRows(seed)
    with conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{TEMPLATE}`")
        cur.execute(f"CREATE DATABASE `{TEMPLATE}`")
        cur.execute(f"USE `{TEMPLATE}`")
        cur.execute(MYSQL_CONTACT)
        for statement in LEGACY_INDEXES if indexes else []:
            cur.execute(statement)
        for batch in legacy.batches(rows):
            cur.execute("BEGIN")
            cur.executemany(INSERT_CONTACT, batch)
            cur.execute("COMMIT")
    legacy.kinds["customers"] = legacy.customer
    return legacy.kinds


def restore(port: int) -> float:
    """A fresh DATABASE whose Contact is a copy of the template; returns seconds."""
    started = time.perf_counter()
    database.copy_database(port, TEMPLATE, DATABASE)
    return time.perf_counter() - started


def rewrite_once(port: int) -> float:
    """A: rewrite the table once, as any COPY ALTER must; returns seconds."""
    conn = database.connect(port, DATABASE)
    with conn, conn.cursor() as cur:
        started = time.perf_counter()
        cur.execute("ALTER TABLE Contact FORCE, ALGORITHM = COPY, LOCK = SHARED")
        return time.perf_counter() - started


def run_cli(port: int, *args: str, ok: tuple[int, ...] = (0,)) -> Command:
    """`flask --app fluxkart <args>` on DATABASE as an operator runs it; wall time and peak RSS."""
    env = {
        **os.environ,
        "MYSQL_HOST": "127.0.0.1",
        "MYSQL_PORT": str(port),
        "MYSQL_USER": "root",
        "MYSQL_PASSWORD": "",
        "MYSQL_DATABASE": DATABASE,
    }
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "fluxkart", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode not in ok:
        raise RuntimeError(f"flask {' '.join(args)} exited {process.returncode}:\n{output}")
    # The command's own figure (VmHWM) when it prints one: wait4's ru_maxrss also counts
    # this process's peak, which Linux carries into the child across exec.
    reported = re.search(r"peak memory: (\d+) MiB", output)
    rss = float(reported.group(1)) if reported else usage.ru_maxrss / 1024  # KiB on Linux
    return Command(seconds, rss, output)


def replay(port: int, orders: int, seed: int) -> Counter[int]:
    """Orders for identifiers the legacy table holds, in the spellings shops send (other case,
    formatted phones, phones as numbers), sent through the app in this process: status counts."""
    os.environ.update(
        MYSQL_HOST="127.0.0.1", MYSQL_PORT=str(port), MYSQL_USER="root", MYSQL_DATABASE=DATABASE
    )
    import logging

    import fluxkart

    client = fluxkart.create_app().test_client()
    logging.getLogger("fluxkart.access").setLevel(logging.WARNING)
    conn = database.connect(port, DATABASE)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT email, phoneNumber FROM Contact WHERE deletedAt IS NULL ORDER BY RAND(%s) LIMIT %s",
            (seed, orders),
        )
        rows = cur.fetchall()
    conn.close()
    pick = random.Random(seed)
    statuses: Counter[int] = Counter()
    for email, phone in rows:
        body: dict[str, Any] = {}
        if email and pick.random() < 0.8:
            body["email"] = email.upper() if pick.random() < 0.3 else email
        if phone and (not body or pick.random() < 0.7):
            digits = "".join(ch for ch in phone if ch.isdigit())
            body["phoneNumber"] = int(digits) if digits and pick.random() < 0.2 else phone
        if pick.random() < 0.1:
            body["email"] = f"new{pick.randrange(10**6)}@example.com"
        statuses[client.post("/identify", json=body).status_code] += 1
    return statuses


def dump_and_restore(port: int, base: Path) -> dict[str, float]:
    """The backup docs/switching.md prescribes, timed: mariadb-dump of the legacy table, and
    loading that dump into a scratch database (what going back costs)."""
    dump_bin = shutil.which("mariadb-dump") or shutil.which("mysqldump")
    client_bin = shutil.which("mariadb") or shutil.which("mysql")
    if not dump_bin or not client_bin:
        return {}
    login = ["--protocol=tcp", "-h127.0.0.1", f"-P{port}", "-uroot"]
    path = base / "legacy-dump.sql"
    started = time.perf_counter()
    with open(path, "wb") as out:
        subprocess.run([dump_bin, *login, "--single-transaction", TEMPLATE], stdout=out, check=True)
    dumped = time.perf_counter() - started
    conn = database.connect(port)
    with conn, conn.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS restore_check")
        cur.execute("CREATE DATABASE restore_check")
    started = time.perf_counter()
    with open(path, "rb") as dump:
        subprocess.run([client_bin, *login, "restore_check"], stdin=dump, check=True)
    restored = time.perf_counter() - started
    size = path.stat().st_size / 2**20
    path.unlink()
    return {"dump": dumped, "restore": restored, "size_mib": size}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} s ({min(values):.1f}-{max(values):.1f})"


def report(options: argparse.Namespace, facts: dict[str, Any], results: dict[str, Any]) -> str:
    """The markdown report."""
    kinds: Counter[str] = results["kinds"]
    rewrite, migrate = results["rewrite"], results["migrate"]
    ratio = [m / statistics.median(rewrite) for m in migrate]
    lines = [
        "# migrate on a legacy table",
        "",
        f"Command: `.venv/bin/python -m bench.legacy --rows {options.rows}"
        + (" --indexes" if options.indexes else "")
        + f" --runs {options.runs}` ({facts['when']}, {facts['cpus']} cores, MariaDB {facts['server']}, "
        f"buffer pool {options.buffer_pool_mib} MiB, innodb_flush_log_at_trx_commit=1).",
        "",
        f"Legacy table: {options.rows:,} rows in the reference's shape "
        + ("with its `run.sh --indexes` indexes" if options.indexes else "(no secondary indexes)")
        + f", {kinds['customers']:,} customers. Defects drawn:",
        "",
        "| defect | rows |",
        "|---|---|",
        *[f"| {kind} | {count:,} |" for kind, count in sorted(kinds.items()) if kind != "customers"],
        "",
        "Medians over the runs, min-max in brackets, measured A B B A in one run:",
        "",
        "| what | time |",
        "|---|---|",
        f"| A: rewrite the table once (`ALTER TABLE Contact FORCE, ALGORITHM=COPY`) | {spread(rewrite)} |",
        f"| B: `flask --app fluxkart migrate` (whole command, as a subprocess) | {spread(migrate)} |",
        f'| of which migrate\'s own steps (its "migrated in" line) | {spread(results["steps"])} |',
        f"| B / A | {statistics.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f}) |",
        f"| `migrate --dry-run` (inspection only) | {spread(results['dry_run'])} |",
        f"| second `migrate` (nothing to change) | {spread(results['again'])} |",
        f"| peak RSS of the migrate process | {max(results['rss']):.0f} MiB |",
        f"| B: `flask --app fluxkart repair` after migrate | {spread(results['repair'])} |",
        f"| second `repair` (nothing to repair) | {spread(results['repair_again'])} |",
        f"| peak RSS of the repair process | {max(results['repair_rss']):.0f} MiB |",
        f"| {options.replay:,} legacy orders replayed before repair: statuses "
        f"| {dict(results['replay_before'])} |",
        f"| the same orders replayed after repair: statuses | {dict(results['replay_after'])} |",
        *(
            [
                f"| backup: `mariadb-dump --single-transaction` of the legacy table "
                f"({results['dump']['size_mib']:.0f} MiB) | {results['dump']['dump']:.1f} s |",
                f"| going back: loading that dump with `mariadb` | {results['dump']['restore']:.1f} s |",
            ]
            if results.get("dump")
            else []
        ),
        "",
        f"Load average (1 min) at the start and the end: {facts['load_start']:.1f}, {facts['load_end']:.1f} "
        f"on {facts['cpus']} cores (a shared machine: other work ran meanwhile).",
        "",
        "The last repair's summary:",
        "",
        "```",
        results["repair_output"].rstrip(),
        "```",
        "",
        "Steps of the last migrate, as it printed them:",
        "",
        "```",
        results["last_output"].rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def stop(signum: int, frame: Any) -> None:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so the ExitStack stops the server it started."""
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--runs", type=int, default=2, help="runs of each: 2 is A B B A, 4 is twice that, 1 is A B"
    )
    parser.add_argument(
        "--indexes", action="store_true", help="the legacy table has run.sh --indexes' indexes"
    )
    parser.add_argument("--buffer-pool-mib", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--replay", type=int, default=2000, help="orders replayed before and after repair")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "legacy.md")
    options = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fluxkart-legacy-")))
        server = MariaDBServer(base)
        stack.callback(server.stop)
        server.start(timeout=60)
        database.set_buffer_pool(server.port, options.buffer_pool_mib)
        database.set_flush_at_commit(server.port, 1)
        facts = {
            "when": datetime.now().strftime("%Y-%m-%d %H:%M"),
            "cpus": os.cpu_count(),
            "server": database.server_version(server.port),
            "load_start": os.getloadavg()[0],
        }
        log(f"building {options.rows:,} legacy rows on port {server.port}")
        started = time.perf_counter()
        kinds = build_template(server.port, options.rows, options.indexes, options.seed)
        log(f"built in {time.perf_counter() - started:.0f} s: {dict(kinds)}")

        results: dict[str, Any] = {"kinds": kinds, "rewrite": [], "migrate": [], "rss": [], "steps": []}
        results["dry_run"], results["again"] = [], []
        # A B B A per two runs; one run is A B (when a run takes long: no spread, say so).
        order = ["A", "B"] if options.runs == 1 else ["A", "B", "B", "A"] * (options.runs // 2)
        for label in order:
            log(f"restoring a copy of the template ({label})")
            restore(server.port)
            if label == "A":
                seconds = rewrite_once(server.port)
                results["rewrite"].append(seconds)
                log(f"A: rewrite once {seconds:.1f} s")
                continue
            dry = run_cli(server.port, "migrate", "--dry-run")
            results["dry_run"].append(dry.seconds)
            done = run_cli(server.port, "migrate")
            results["migrate"].append(done.seconds)
            results["rss"].append(done.peak_rss_mib)
            results["last_output"] = done.output
            results["steps"].append(float(done.output.split("migrated in ")[1].split()[0]))
            log(f"B: migrate {done.seconds:.1f} s, peak RSS {done.peak_rss_mib:.0f} MiB")
            log("B: its output:\n" + done.output)
            again = run_cli(server.port, "migrate")
            if "nothing to change" not in again.output:
                raise RuntimeError(f"the second migrate changed something:\n{again.output}")
            results["again"].append(again.seconds)
            rows, _ = database.count_contacts(server.port, DATABASE)
            if rows != options.rows:
                raise RuntimeError(f"migrate left {rows} rows of {options.rows}")
            # The first B replays orders before repair, the second after it: 5xx either way?
            before = not results.get("replay_before")
            if before:
                results["replay_before"] = replay(server.port, options.replay, options.seed)
                log(f"replay before repair: {dict(results['replay_before'])}")
            fixed = run_cli(server.port, "repair", ok=(0, 1))  # 1: invalid values reported
            results.setdefault("repair", []).append(fixed.seconds)
            results.setdefault("repair_rss", []).append(fixed.peak_rss_mib)
            results["repair_output"] = fixed.output
            log(f"B: repair {fixed.seconds:.1f} s, peak RSS {fixed.peak_rss_mib:.0f} MiB")
            second = run_cli(server.port, "repair", ok=(0, 1))
            if "nothing to repair" not in second.output:
                raise RuntimeError(f"the second repair changed something:\n{second.output}")
            results.setdefault("repair_again", []).append(second.seconds)
            if not before:
                results["replay_after"] = replay(server.port, options.replay, options.seed)
                log(f"replay after repair: {dict(results['replay_after'])}")
        log("timing mariadb-dump and its restore")
        results["dump"] = dump_and_restore(server.port, base)
        facts["load_end"] = os.getloadavg()[0]
        text = report(options, facts, results)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
