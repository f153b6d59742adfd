"""What merge protection costs identify, and what a blob costs everyone else (issue 21, "Done when").

    .venv/bin/python -m bench.protection_cost                        # MariaDB, 1,500 a kind and side
    .venv/bin/python -m bench.protection_cost --backend sqlite
    .venv/bin/python -m bench.protection_cost --requests 20          # a check of the script, no figures

Two measurements in one run, each between two sides A and B whose requests alternate
A B B A from one client, one request at a time, so that both sides see the same machine load
at the same moments (bench/history_cost.py explains why):

1. **A customer at the limit.** One service (gunicorn, one sync worker) on a database holding
   customers of FLUXKART_MAX_CUSTOMER_IDENTIFIERS (its default, 50) identifiers: 49 rows
   sharing one phone number, each its own email; and customers of 2 rows (one phone, two
   emails). A is a 2-row customer, B one at the limit, for two kinds of request: a repeat
   (an email and the phone the customer has, nothing written) and a new identifier (a new
   email with the customer's phone: the 2-row customer links it; the customer at the limit
   cannot take it, so the request is applied without the phone, a new customer of the email
   alone, and a `refused` event). p50 and p99 of each.
2. **A blob in the table.** Two databases on the same server (or two SQLite files) holding the
   same small customers; B also holds a blob written behind the service's back: --blob-rows
   rows sharing one phone number that is not blocked, each its own email, all linked to the
   oldest, with their ContactIdentifier rows. Two services (one sync worker each, like
   history_cost) answer unrelated requests, the same bodies on both sides: new customers,
   and repeat orders of the small customers. For information, B also answers requests with
   the blob's own identifiers (a partial answer), timed between them.

Every customer is written by SQL, consistent with the schema (ids, one primary per customer,
the oldest, secondaries linked straight to it, canonical values, a ContactIdentifier row per
identifier), before the services start; every answer is checked (the customer it names, the
`ignored` and `partial` keys). The requests are sent in --blocks blocks, every kind in every
block; figures are the median over the blocks with their range (min-max), and p99 over all
of a kind's requests. CPU of the services, of mariadbd, of this client and of the rest of the
machine (/proc/stat less those) is read around every block: the run is marked disturbed
when the rest used more than a fifth of a core.

Bounded: 9 x (--requests + 20 warm-up) requests in all (part 1: two kinds on two sides;
part 2: two kinds on two sides, the blob's on one), one at a time, each with a 30 s timeout;
the run stops after --max-minutes (5). Expected at the defaults, from short runs: 1 to
1.5 minutes on a quiet machine, up to 3 on a busy one.
Talks only to 127.0.0.1 (a throwaway mariadbd from tests/harness/mariadb.py, never the
machine's server; or SQLite files in a temporary folder); stops every process it started.
Writes --out (bench/results/protection_cost.md: one section per backend, the other
backend's section kept) and prints it.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from bench.procs import cpu_seconds, machine_busy_seconds, total_cpu_seconds
from identity.settings import DEFAULTS
from tests.harness.database import blank_settings, run_sql
from tests.harness.gunicorn import Gunicorn, gunicorn_env
from tests.harness.mariadb import MariaDBServer

REPO = Path(__file__).resolve().parent.parent
LIMIT = int(DEFAULTS["FLUXKART_MAX_CUSTOMER_IDENTIFIERS"])
AT_LIMIT_ROWS = LIMIT - 1  # one phone and LIMIT - 1 emails: LIMIT identifiers
CUSTOMERS_AT_LIMIT = 10  # part 1 rotates over these (and as many 2-row customers)
SMALL_CUSTOMERS = 1000  # part 2: the small customers both databases hold
BLOB_PHONE = "48151623"  # not blocked by default (DEFAULT_BLOCKED: one digit repeated, 1234567890, ...)
WARMUP = 20  # untimed requests of every kind and side first
DISTURBED_CORES = 0.2
TIMEOUT_S = 30


def phone(tag: str, number: int) -> str:
    """A canonical phone number no default rule blocks: a two-digit tag ending in 1-9, then six
    digits starting with 0 (so no digit repeats seven times)."""
    assert len(tag) == 2 and tag[1] != "0" and number < 100_000
    return f"{tag}{number:06d}"


def email(name: str) -> str:
    return f"{name}@bench.example"


# --------------------------------------------------------------------------
# The tables, written by SQL
# --------------------------------------------------------------------------


class Seed:
    """Rows to write into one fresh database: customers whose rows all share one phone, each
    row its own email; ids handed out here, the primary the oldest."""

    def __init__(self) -> None:
        self.contacts: list[tuple[Any, ...]] = []
        self.identifiers: list[tuple[str, str, int]] = []
        self.start = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=30)

    def customer(self, emails: list[str], phone_: str) -> int:
        """Append one customer; its primary's id."""
        primary = len(self.contacts) + 1
        for offset, address in enumerate(emails):
            row_id = primary + offset
            when = (self.start + timedelta(milliseconds=row_id)).strftime("%Y-%m-%d %H:%M:%S.%f")
            linked, precedence = (None, "primary") if offset == 0 else (primary, "secondary")
            self.contacts.append((row_id, address, phone_, linked, precedence, when, when))
            self.identifiers.append(("email", address, 1))
        self.identifiers.append(("phone", phone_, 1))
        return primary

    def write(self, settings: dict[str, Any]) -> None:
        for start in range(0, len(self.contacts), 5000):
            run_sql(
                settings,
                "INSERT INTO Contact (id, email, phoneNumber, linkedId, linkPrecedence, createdAt, updatedAt)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                self.contacts[start : start + 5000],
                many=True,
            )
        ordered = sorted(self.identifiers)
        for start in range(0, len(ordered), 5000):
            run_sql(
                settings,
                "INSERT INTO ContactIdentifier (kind, value, version) VALUES (%s, %s, %s)",
                ordered[start : start + 5000],
                many=True,
            )


def create_schema(settings: dict[str, Any]) -> None:
    """The service's schema and facts, made by the service's own code (what init-db runs)."""
    import logging

    import fluxkart
    from identity.pool import get_db

    app = fluxkart.create_app({**blank_settings(), **settings})
    logging.getLogger("fluxkart").setLevel(logging.ERROR)
    with app.app_context():
        db = get_db()
        db.connect()
        db.close()


def limit_seed(grow_customers: int) -> Seed:
    """Part 1's database: customers at the limit, 2-row customers for repeats, and 2-row
    customers that each take one new email (one per request)."""
    seed = Seed()
    for c in range(CUSTOMERS_AT_LIMIT):
        seed.customer([email(f"limit{c}.{i}") for i in range(AT_LIMIT_ROWS)], phone("42", c))
        seed.customer([email(f"small{c}.{i}") for i in range(2)], phone("41", c))
    for c in range(grow_customers):
        seed.customer([email(f"grow{c}.{i}") for i in range(2)], phone("43", c))
    return seed


def blob_seed(blob_rows: int) -> Seed:
    """Part 2's databases: SMALL_CUSTOMERS 2-row customers, then (B only) the blob."""
    seed = Seed()
    for c in range(SMALL_CUSTOMERS):
        seed.customer([email(f"cust{c}.{i}") for i in range(2)], phone("51", c))
    if blob_rows:
        seed.customer([email(f"blob{i}") for i in range(blob_rows)], BLOB_PHONE)
    return seed


# --------------------------------------------------------------------------
# Requests, and what each answer must say
# --------------------------------------------------------------------------

Body = dict[str, str]
Check = Callable[[dict[str, Any]], bool]


@dataclass
class Side:
    """One side of a kind of request: which service, the body of its i-th request, what the
    answer must satisfy."""

    server: str
    body: Callable[[int], Body]
    check: Check


@dataclass
class Kind:
    name: str
    sides: dict[str, Side]  # "A" and "B"; or "B" alone (timed for information)
    next_index: int = 0  # bodies are never reused across blocks and the warm-up
    times: dict[str, list[list[float]]] = field(default_factory=dict)  # side -> one list per block
    sizes: dict[str, list[int]] = field(default_factory=dict)  # side -> answer bytes


def contact(answer: dict[str, Any]) -> dict[str, Any]:
    return answer.get("contact", {})  # type: ignore[no-any-return]


def plain(emails: int, phones: int = 1) -> Check:
    """A whole customer of this many emails and phones, nothing ignored, not partial."""
    return lambda a: (
        len(contact(a).get("emails", [])) == emails
        and len(contact(a).get("phoneNumbers", [])) == phones
        and "ignored" not in a
        and "partial" not in a
    )


def refused_phone(a: dict[str, Any]) -> bool:
    """The phone left out by the limit; a new customer of the email alone."""
    return (
        a.get("ignored") == [{"field": "phoneNumber", "reason": "limit"}]
        and len(contact(a).get("emails", [])) == 1
        and contact(a).get("phoneNumbers") == []
        and "partial" not in a
    )


def partial(a: dict[str, Any]) -> bool:
    return a.get("partial") is True and len(contact(a).get("emails", [])) <= LIMIT


def limit_kinds() -> list[Kind]:
    n = CUSTOMERS_AT_LIMIT
    return [
        Kind(
            "repeat (every identifier known)",
            {
                "A": Side("L", lambda i: body(f"small{i % n}.{i % 2}", phone("41", i % n)), plain(2)),
                "B": Side(
                    "L",
                    lambda i: body(f"limit{i % n}.{i % AT_LIMIT_ROWS}", phone("42", i % n)),
                    plain(AT_LIMIT_ROWS),
                ),
            },
        ),
        Kind(
            "new email with the customer's phone (A links it; B: refused by the limit, a new customer)",
            {
                "A": Side("L", lambda i: body(f"grow{i}.new", phone("43", i)), plain(3)),
                "B": Side("L", lambda i: body(f"refused{i}", phone("42", i % n)), refused_phone),
            },
        ),
    ]


def blob_kinds(blob_rows: int) -> list[Kind]:
    def new(i: int) -> Body:
        return body(f"new{i}", phone("52", i))

    def repeat(i: int) -> Body:
        c = i * 7 % SMALL_CUSTOMERS
        return body(f"cust{c}.{i % 2}", phone("51", c))

    return [
        Kind("new customer", {side: Side(side, new, plain(1)) for side in "AB"}),
        Kind("repeat order of a 2-row customer", {side: Side(side, repeat, plain(2)) for side in "AB"}),
        Kind(
            "the blob's own email and phone (B only; partial answer, for information)",
            {"B": Side("B", lambda i: body(f"blob{i * 37 % blob_rows}", BLOB_PHONE), partial)},
        ),
    ]


def body(name: str, phone_: str) -> Body:
    return {"email": email(name), "phoneNumber": phone_}


# --------------------------------------------------------------------------
# Sending, A B B A
# --------------------------------------------------------------------------


class Client:
    """One client, one keep-alive connection per service, one request at a time."""

    def __init__(self, servers: dict[str, Gunicorn], deadline: float):
        self.urls = {name: server.url for name, server in servers.items()}
        self.sessions = {name: requests.Session() for name in servers}
        self.deadline = deadline

    def send(self, side: Side, index: int) -> tuple[float, int]:
        """One identify: its latency (s) and answer size (bytes); raises on a wrong answer."""
        if time.monotonic() > self.deadline:
            raise SystemExit("stopped: the run took longer than --max-minutes")
        payload = side.body(index)
        started = time.perf_counter()
        response = self.sessions[side.server].post(
            self.urls[side.server] + "/identify", json=payload, timeout=TIMEOUT_S
        )
        elapsed = time.perf_counter() - started
        if response.status_code != 200 or not side.check(response.json()):
            raise RuntimeError(
                f"identify {payload} on {side.server} answered {response.status_code}: {response.text[:300]}"
            )
        return elapsed, len(response.content)

    def run(self, kind: Kind, count: int, timed: bool = True) -> None:
        """`count` requests a side, A B, B A, A B, ... (a side alone when the kind has one)."""
        order = [("AB", "BA")[i % 2] for i in range(count)] if len(kind.sides) == 2 else ["B"] * count
        block: dict[str, list[float]] = {side: [] for side in kind.sides}
        for sides in order:
            index = kind.next_index
            kind.next_index += 1
            for name in sides:
                elapsed, size = self.send(kind.sides[name], index)
                block[name].append(elapsed)
                if timed:
                    kind.sizes.setdefault(name, []).append(size)
        if timed:
            for name, times in block.items():
                kind.times.setdefault(name, []).append(times)

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()


@dataclass
class Cpu:
    """CPU (cores) of each party over each block."""

    parties: dict[str, Callable[[], float]]
    blocks: list[dict[str, float]] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)  # seconds of each block

    def measure(self, work: Callable[[], None]) -> None:
        before = {name: read() for name, read in self.parties.items()}
        busy, started = machine_busy_seconds(), time.monotonic()
        work()
        wall = time.monotonic() - started
        used = {name: (read() - before[name]) / wall for name, read in self.parties.items()}
        used["rest of the machine"] = (machine_busy_seconds() - busy) / wall - sum(used.values())
        self.blocks.append(used)
        self.walls.append(wall)

    def mean(self, name: str) -> float:
        """Cores over all the blocks together (weighted by their length)."""
        return sum(b[name] * w for b, w in zip(self.blocks, self.walls, strict=True)) / sum(self.walls)


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def ms(values: list[float]) -> str:
    """The median and, over several blocks, the range: '4.12 (3.98-4.40)' (ms)."""
    text = f"{statistics.median(values) * 1000:.2f}"
    return text + (f" ({min(values) * 1000:.2f}-{max(values) * 1000:.2f})" if len(values) > 1 else "")


def ratio(b: list[float], a: list[float]) -> str:
    """B/A of the medians, and the range of the blocks' ratios."""
    per_block = [y / x for x, y in zip(a, b, strict=True)]
    text = f"{statistics.median(b) / statistics.median(a):.2f}"
    return text + (f" ({min(per_block):.2f}-{max(per_block):.2f})" if len(per_block) > 1 else "")


def figures(kind: Kind, side: str) -> tuple[list[float], list[float], list[float]]:
    """(the blocks' p50s, the blocks' p99s, every latency) of one side."""
    blocks = kind.times[side]
    return [statistics.median(t) for t in blocks], [p99(t) for t in blocks], [x for t in blocks for x in t]


def part1_table(kinds: list[Kind]) -> list[str]:
    lines = [
        "| request | A p50 ms: 2 rows | B p50 ms: at the limit | B/A p50 "
        "| A p99 ms | B p99 ms | B/A p99 | answer bytes A / B |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in kinds:
        a50, a99, a_all = figures(kind, "A")
        b50, b99, b_all = figures(kind, "B")
        lines.append(
            f"| {kind.name} | {ms(a50)} | {ms(b50)} | {ratio(b50, a50)} "
            f"| {p99(a_all) * 1000:.2f} | {p99(b_all) * 1000:.2f} | {p99(b_all) / p99(a_all):.2f} "
            f"| {statistics.median(kind.sizes['A']):,.0f} / {statistics.median(kind.sizes['B']):,.0f} |"
        )
    return lines


def part2_table(kinds: list[Kind]) -> list[str]:
    lines = [
        "| request | A p50 ms: without the blob | B p50 ms: with it | B/A p50 | A p99 ms | B p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for kind in kinds:
        if "A" not in kind.sides:
            continue
        a50, _, a_all = figures(kind, "A")
        b50, _, b_all = figures(kind, "B")
        lines.append(
            f"| {kind.name} | {ms(a50)} | {ms(b50)} | {ratio(b50, a50)} "
            f"| {p99(a_all) * 1000:.2f} | {p99(b_all) * 1000:.2f} |"
        )
    return lines


def section(options: argparse.Namespace, result: dict[str, Any]) -> str:
    n, blocks = options.requests, options.blocks
    part1, part2, cpu = result["part1"], result["part2"], result["cpu"]
    info = next(kind for kind in part2 if "A" not in kind.sides)
    b50, _, _ = figures(info, "B")
    repeat50, _, _ = figures(part2[1], "B")
    rest = [block["rest of the machine"] for block in cpu.blocks]
    rest_all = cpu.mean("rest of the machine")
    disturbed = rest_all > DISTURBED_CORES
    lines = [
        f"## {options.backend}",
        "",
        f"`{' '.join(['python -m bench.protection_cost', *sys.argv[1:]])}` "
        f"on {platform.node()}, {os.cpu_count()} cores, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
        f"{n} timed requests per kind and side in {blocks} blocks (after {WARMUP} untimed), one client, "
        "sides alternating A B B A; p50: median of the blocks' p50s (min-max); p99: over all the "
        "requests of a kind and side; gunicorn with one sync worker per service.",
        "",
        f"**{'DISTURBED' if disturbed else 'Quiet'}**: the rest of the machine used "
        f"{rest_all:.2f} cores during the timed blocks ({min(rest):.2f}-{max(rest):.2f} block by block; "
        f"the run counts as disturbed above {DISTURBED_CORES})."
        + (" Its figures are for checking the script, not for quoting." if disturbed else ""),
        "",
        f"### A customer at the limit ({LIMIT} identifiers) against a customer of 2 rows",
        "",
        f"One service and database; B: {CUSTOMERS_AT_LIMIT} customers of {AT_LIMIT_ROWS} rows (one phone, "
        f"{AT_LIMIT_ROWS} emails), A: 2-row customers (one phone, two emails), requests rotating over them.",
        "",
        *part1_table(part1),
        "",
        f"### Unrelated customers with and without a {options.blob_rows:,}-row blob",
        "",
        f"Two databases on one {'server' if options.backend == 'mysql' else 'machine (two SQLite files)'}, "
        f"each with the same {SMALL_CUSTOMERS:,} customers of 2 rows; B also holds the blob "
        f"({options.blob_rows:,} rows sharing {BLOB_PHONE}, not blocked, each its own email, all linked "
        "to the oldest, written by SQL), two services.",
        "",
        *part2_table(part2),
        "",
        f"For information, on B between those: a request with the blob's own email and phone (a partial "
        f"answer of {statistics.median(info.sizes['B']):,.0f} bytes) took {ms(b50)} ms at p50, "
        f"{statistics.median(b50) / statistics.median(repeat50):.2f}x a repeat order of a 2-row customer.",
        "",
        "### CPU during the timed blocks (cores over all of them; min-max block by block)",
        "",
        "| process | cores |",
        "|---|---|",
    ]
    for name in cpu.blocks[0]:
        values = [block[name] for block in cpu.blocks]
        lines.append(f"| {name} | {cpu.mean(name):.2f} ({min(values):.2f}-{max(values):.2f}) |")
    lines += [
        "",
        "Wall time: "
        + ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in result["phases"].items())
        + ".",
    ]
    return "\n".join(lines) + "\n"


def write_out(path: Path, backend: str, text: str) -> str:
    """The results file with this backend's section replaced (the other's kept)."""
    sections: dict[str, str] = {}
    if path.exists():
        for match in re.finditer(r"<!-- (\w+) -->\n(.*?)<!-- /\1 -->\n", path.read_text(), re.S):
            sections[match.group(1)] = match.group(2)
    sections[backend] = text
    document = (
        "# What merge protection costs identify (issue 21)\n\n"
        "Written by `bench/protection_cost.py` (its docstring says what it does), "
        "one section per backend.\n\n"
    )
    for name in sorted(sections, key=["mysql", "sqlite"].index):
        document += f"<!-- {name} -->\n{sections[name]}<!-- /{name} -->\n\n"
    path.write_text(document.rstrip("\n") + "\n")
    return document


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


def server_cpu_seconds(server: Gunicorn) -> float:
    """CPU a service has used so far: its gunicorn master and workers."""
    return total_cpu_seconds(server.all_pids())


def measure(options: argparse.Namespace, work: Path) -> dict[str, Any]:
    phases: dict[str, float] = {}
    started = time.monotonic()
    deadline = started + options.max_minutes * 60
    per_block = max(1, options.requests // options.blocks)
    options.requests = per_block * options.blocks
    mariadb = None
    servers: dict[str, Gunicorn] = {}
    try:
        if options.backend == "mysql":
            (work / "mariadb").mkdir()
            mariadb = MariaDBServer(work / "mariadb")
            mariadb.start(timeout=60)
            with mariadb.connect() as conn, conn.cursor() as cur:
                cur.execute("SET GLOBAL innodb_flush_log_at_trx_commit = %s", (options.flush_at_commit,))
        seeds = {
            "L": limit_seed(WARMUP + options.requests),
            "A": blob_seed(0),
            "B": blob_seed(options.blob_rows),
        }
        for name, seed in seeds.items():
            settings: dict[str, Any] = {"FLUXKART_SQLITE_PATH": str(work / f"{name}.db")}
            if mariadb is not None:
                with mariadb.connect() as conn, conn.cursor() as cur:
                    cur.execute(f"CREATE DATABASE `protection_cost_{name}`")
                settings = mariadb.settings(f"protection_cost_{name}")
            create_schema(settings)
            seed.write({**blank_settings(), **settings})
            servers[name] = Gunicorn(gunicorn_env(settings, 1, 1, "sync"), work)
            servers[name].start(ready_path="/health/ready")
        phases["set-up"] = time.monotonic() - started

        part1, part2 = limit_kinds(), blob_kinds(options.blob_rows)
        client = Client(servers, deadline)
        for kind in part1 + part2:
            client.run(kind, WARMUP, timed=False)
        parties: dict[str, Callable[[], float]] = {
            f"service {name} (gunicorn master and worker)": functools.partial(server_cpu_seconds, server)
            for name, server in servers.items()
        }
        if mariadb is not None and mariadb.process is not None:
            pid = mariadb.process.pid
            parties["mariadbd"] = lambda: cpu_seconds(pid)
        parties["this client"] = own_cpu
        cpu = Cpu(parties)
        timed_from = time.monotonic()
        for block in range(options.blocks):

            def one_block() -> None:
                for kind in part1 + part2:
                    client.run(kind, per_block)

            cpu.measure(one_block)
            rest = cpu.blocks[-1]["rest of the machine"]
            print(
                f"block {block + 1}/{options.blocks} done ({time.monotonic() - started:.0f} s; "
                f"rest of the machine {rest:.2f} cores)",
                file=sys.stderr,
                flush=True,
            )
        phases["timed blocks"] = time.monotonic() - timed_from
        client.close()
    finally:
        for server in servers.values():
            server.stop()
        if mariadb is not None:
            mariadb.stop()
    phases["total"] = time.monotonic() - started
    return {"part1": part1, "part2": part2, "cpu": cpu, "phases": phases}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["mysql", "sqlite"], default="mysql")
    parser.add_argument("--requests", type=int, default=1500, help="timed requests per kind and side")
    parser.add_argument("--blocks", type=int, default=5, help="blocks the requests are sent in")
    parser.add_argument("--blob-rows", type=int, default=10_000)
    parser.add_argument("--flush-at-commit", type=int, default=1, help="innodb_flush_log_at_trx_commit")
    parser.add_argument("--max-minutes", type=float, default=5, help="stop the run after this long")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "protection_cost.md")
    options = parser.parse_args()
    if options.requests > 90_000 or options.blocks < 1 or not 0 < options.blob_rows <= 1_000_000:
        parser.error("--requests at most 90000, --blocks at least 1, --blob-rows 1 to 1000000")
    with tempfile.TemporaryDirectory(prefix="fluxkart-protection-cost-") as tmp:
        result = measure(options, Path(tmp))
    text = section(options, result)
    write_out(options.out, options.backend, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
