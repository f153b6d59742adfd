"""Side by side: this service against another running service, on one MariaDB, A B B A.

    python3 dev.py bench --compare http://127.0.0.1:3100@refdb \\
        --compare-command '../shared/reference/run.sh {port} {database} --indexes'

The benchmark starts a throwaway mariadbd (never the machine's server on 3306), preloads
the service's database, then starts the other service with `--compare-command` (its
`{port}`, `{database}` and `{mysql_port}` filled in, MYSQL_HOST/MYSQL_PORT/MYSQL_USER/
MYSQL_PASSWORD pointing at the throwaway server and MYSQL_DATABASE naming its database);
without a command it prints those settings
and waits for the URL to answer, for a service the developer starts by hand. Once the other
service has created its tables, the preloaded rows are copied into every table the two
databases share (same name, common columns), so both start from the same customers.

Each side then gets the shop workload from its own copy of the customer model (same mix
of repeat and new customers, merges), every body carrying both keys (an absent identifier
as null, which every implementation accepts). Runs alternate A B, B A, A B, ... (with
several gunicorn configurations, the order reverses each repetition), so drift on the
shared machine hits every side alike. Reported per side: req/s, p50/p99, non-2xx, CPU per
request of the server's processes, mariadbd and wrk, CPU of everything else, RSS at rest
and under load; ratios of medians against the other service; the invariants on the
service's final table (the other service's table is not judged).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import shlex
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import database, statements
from bench.loadgen import percentiles_ms, run_wrk, timed_posts
from bench.measure import (
    DISTURBED_CORES,
    Bench,
    CpuSnapshot,
    Options,
    Tenant,
    log,
    run_record,
    scrape_metrics,
)
from bench.procs import descendant_pids, rss_mib
from bench.workload import Batch, ShopMix, commit, shop_batch
from tests.harness.gunicorn import Gunicorn
from tests.harness.processes import stop_process
from tests.harness.slow_clients import SlowClients, raise_open_files_limit


@dataclass
class Other:
    """The service compared against: its URL, database and (when the bench started it) process."""

    url: str
    database: str
    port: int
    process: subprocess.Popen[bytes] | None = None
    pid_hint: int = 0  # a service started by hand: the process listening on the port

    @classmethod
    def parse(cls, text: str) -> Other:
        """'http://127.0.0.1:3100@refdb' -> Other; only 127.0.0.1/localhost (load stays local)."""
        url, at, name = text.rpartition("@")
        if not at or not url or not name:
            raise SystemExit(f"--compare wants URL@DATABASE, got {text!r}")
        parts = urllib.parse.urlsplit(url)
        if parts.hostname not in ("127.0.0.1", "localhost") or not parts.port:
            raise SystemExit("--compare: the URL must be http://127.0.0.1:PORT (the load stays on this host)")
        return cls(url.rstrip("/"), name, parts.port)

    def pids(self) -> list[int]:
        root = self.process.pid if self.process else self.pid_hint
        return [root, *descendant_pids(root)] if root else []

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer means it is up
        except OSError:
            return False


@dataclass
class Side:
    """One participant: a gunicorn configuration of this service, or the other service."""

    label: str
    port: int
    tenant: Tenant
    pids: Any  # () -> list[int]
    server: Gunicorn | None = None
    rss_rest: list[float] = field(default_factory=list)
    rss_load: dict[int, float] = field(default_factory=dict)


def listening_pid(port: int) -> int:
    """The pid of the process listening on 127.0.0.1:port (for a service started by hand), or 0."""
    inode = ""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    inode = fields[9]
    if not inode:
        return 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                for fd in (entry / "fd").iterdir():
                    if os.readlink(fd) == f"socket:[{inode}]":
                        return int(entry.name)
    return 0


class RssSampler:
    """Samples VmRSS of every side's processes twice a second while a run goes on."""

    def __init__(self, side: Side):
        self.side, self.stop_event = side, threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        while not self.stop_event.wait(0.5):
            for pid in self.side.pids():
                self.side.rss_load[pid] = max(self.side.rss_load.get(pid, 0.0), rss_mib(pid))

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join()


def both_keys(body: str) -> str:
    """The body with both keys present: an absent identifier sent as null (the reference
    answers 500 to a body without a phoneNumber key; null is valid for every implementation)."""
    data = json.loads(body)
    data.setdefault("email", None)
    data.setdefault("phoneNumber", None)
    return json.dumps(data)


def with_both_keys(batch: Batch) -> Batch:
    """The batch, every body carrying both keys (both_keys)."""
    batch.bodies = [both_keys(body) for body in batch.bodies]
    return batch


class Compare(Bench):
    """The side-by-side run: throwaway MariaDB, this service and the other, interleaved."""

    def __init__(self, options: Options, stack: contextlib.ExitStack):
        super().__init__(options, stack)
        assert options.compare is not None
        self.other = Other.parse(options.compare)
        self.sides: list[Side] = []

    # -- the other service ----------------------------------------------------

    def start_other(self) -> None:
        """Run --compare-command against the throwaway server, or wait for a hand-started service."""
        other, settings = self.other, self.db_settings()
        if self.options.compare_command:
            fields = {"port": other.port, "database": other.database, "mysql_port": self.port}
            command = [part.format(**fields) for part in shlex.split(self.options.compare_command)]
            log_path = self.raw / "other.log"
            with open(log_path, "ab") as out:
                other.process = subprocess.Popen(
                    command,
                    env={**os.environ, **settings, "MYSQL_DATABASE": other.database},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own group: stopped with everything it started
                )
            self.stack.callback(stop_process, other.process, 20)
            limit, hint = 600.0, f"see {log_path}"
        else:
            exports = " ".join(f"{k}={v}" for k, v in {**settings, "MYSQL_DATABASE": other.database}.items())
            log(f"start the other service now on {other.url} with database {other.database}: {exports}")
            limit, hint = 900.0, "nothing answered"
        deadline = time.monotonic() + limit  # the first run of the reference installs its npm packages
        while not other.answers():
            if other.process is not None and other.process.poll() is not None:
                raise RuntimeError(f"the other service exited ({other.process.returncode}); {hint}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the other service did not answer on {other.url}; {hint}")
            time.sleep(0.5)
        if other.process is None:
            other.pid_hint = listening_pid(other.port)

    def db_settings(self) -> dict[str, str]:
        return {
            "MYSQL_HOST": "127.0.0.1",
            "MYSQL_PORT": str(self.port),
            "MYSQL_USER": "root",
            "MYSQL_PASSWORD": "",
        }

    def seed_other(self) -> dict[str, int]:
        """Copy the preloaded rows into every table both databases have, through common columns."""
        copied: dict[str, int] = {}
        conn = database.connect(self.port)
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT a.TABLE_NAME, a.COLUMN_NAME FROM information_schema.COLUMNS a "
                "JOIN information_schema.COLUMNS b "
                "ON b.TABLE_NAME = a.TABLE_NAME AND b.COLUMN_NAME = a.COLUMN_NAME "
                "WHERE a.TABLE_SCHEMA = %s AND b.TABLE_SCHEMA = %s ORDER BY a.TABLE_NAME, a.ORDINAL_POSITION",
                (self.main.database, self.other.database),
            )
            tables: dict[str, list[str]] = {}
            for table, column in cur.fetchall():
                tables.setdefault(table, []).append(f"`{column}`")
            for table, columns in tables.items():
                cur.execute(f"SELECT COUNT(*) FROM `{self.other.database}`.`{table}`")  # noqa: S608 (names from the catalog)
                if cur.fetchone()[0]:
                    if table in ("Contact", "ContactIdentifier"):
                        raise RuntimeError(
                            f"{self.other.database}.{table} is not empty: give --compare a fresh database"
                        )
                    # Rows the other service wrote itself at start (another build of this
                    # service writes ServiceState and its blocked values): its own, kept.
                    log(f"{self.other.database}.{table} already has rows: left as they are")
                    continue
                listed = ", ".join(columns)
                copied[table] = cur.execute(
                    f"INSERT INTO `{self.other.database}`.`{table}` ({listed}) "  # noqa: S608 (catalog names)
                    f"SELECT {listed} FROM `{self.main.database}`.`{table}`"
                )
        if "Contact" not in copied:
            raise RuntimeError(f"{self.other.database} has no Contact table to seed")
        log(f"seeded {self.other.database}: " + ", ".join(f"{t} {n:,} rows" for t, n in copied.items()))
        return copied

    # -- load -----------------------------------------------------------------

    def batch(self, tenant: Tenant, workload: str, count: int) -> Batch:
        return with_both_keys(super().batch(tenant, workload, count))

    def side_run(self, side: Side, label: str, duration: float | None = None) -> dict[str, Any]:
        """One shop run against a side (unmeasured with `duration`), its requests folded into its model."""
        c = max(self.options.concurrency)
        seconds = duration or self.options.duration
        batch = self.batch(side.tenant, "shop", int(seconds * 6000))
        pids = side.pids()
        before = CpuSnapshot.take(pids, self.mariadb_pid)
        metrics_before = scrape_metrics(side.port)
        with RssSampler(side):
            result = run_wrk(side.port, batch.bodies, c, seconds, self.base)
        after = CpuSnapshot.take(pids, self.mariadb_pid)
        record = run_record(result, before, after)
        counts = scrape_metrics(side.port) - metrics_before
        if counts:
            record["counts"] = dict(counts)
        sent = min(result.sent, len(batch.bodies))
        side.tenant.non_2xx += result.non_2xx
        commit(side.tenant.model, batch, sent)
        side.tenant.record(label, batch.pairs[:sent], sent)
        return record

    def slow_client_probe(self, side: Side, held_count: int, requests: int = 60) -> dict[str, Any]:
        """identify latency of one fast client (sequential, keep-alive) with and without
        `held_count` idle / slow-header / slow-body connections held open on the side."""
        out: dict[str, Any] = {"connections": held_count}
        for phase in ("alone", "held"):
            held = SlowClients(side.port, held_count if phase == "held" else 0)
            try:
                held.open()
                held.trickle()
                batch = self.batch(side.tenant, "shop", requests)
                answers = timed_posts(side.port, batch.bodies)
                commit(side.tenant.model, batch, len(batch.bodies))
                side.tenant.record(f"slow clients {phase}", batch.pairs, len(batch.pairs))
                held.trickle()
                finished = held.finish("slow body", 3) if phase == "held" else []
                if finished:  # the slow bodies' identify request, now complete
                    side.tenant.record("slow body", [("slow@example.com", "5550001")], 1)
            finally:
                held.close()
            errors = sum(1 for status, _, _ in answers if status != 200)
            side.tenant.non_2xx += errors
            latency = percentiles_ms([seconds for _, seconds, _ in answers])
            out[phase] = {
                "p50": latency["p50"],
                "p99": latency["p99"],
                "max": latency["max"],
                "errors": errors,
            }
            if phase == "held":
                out["held_served"] = finished
        log(
            f"  slow clients, {side.label}: identify p50 {out['alone']['p50']:.1f} ms alone, "
            f"{out['held']['p50']:.1f} ms (max {out['held']['max']:.1f}) with {held_count} held"
        )
        return out

    # -- statements per request ------------------------------------------------

    def statements_phase(self, count: int) -> dict[str, Any]:
        """Statements per identify by request kind (bench/statements.py): one stream of `count`
        shop requests, sent one at a time to the first service side, then to the other, each
        classified against that side's own model before it is sent.

        Runs before any load, while both models are still the seeded copy, so both sides get
        the same bodies and classify them alike (checked). Several gunicorn configurations
        share one database, so only the first is counted: statements do not depend on it.
        """
        service = next(side for side in self.sides if side.server is not None)
        other = next(side for side in self.sides if side.server is None)
        if service.tenant.model.parent != other.tenant.model.parent:
            raise RuntimeError(
                "the statements phase needs both sides' models still equal: run it before the load"
            )
        rng = random.Random(self.options.seed)
        batch = with_both_keys(shop_batch(rng, service.tenant.model, self.ids, count))
        # Repeats only: they change nothing stored, so the models stay equal.
        warm_up = with_both_keys(shop_batch(rng, service.tenant.model, self.ids, 20, ShopMix(0, 0, 0)))
        conn = database.connect(self.port)
        with conn:
            counter = statements.QuestionsCounter(conn)
            counter.calibrate()
            idle = {"before": counter.idle_rate()}
            log(
                f"  the status query adds {counter.own} to Questions (back to back: "
                f"{sorted(set(counter.back_to_back))}); idle: {idle['before']:.2f} statements/s"
            )
            sides: dict[str, Any] = {}
            sent_by_side: list[list[statements.Sent]] = []
            for side in (service, other):
                sent = statements.send_counted(
                    side.port,
                    batch,
                    counter,
                    statements.KnownIdentifiers(side.tenant.model),
                    warm_up.bodies,
                    side.label,
                )
                idle[f"after {side.label}"] = counter.idle_rate()
                side.tenant.record("statements warm-up", warm_up.pairs, len(warm_up.pairs))
                side.tenant.record("statements", batch.pairs, len(sent))
                side.tenant.non_2xx += sum(1 for s in sent if s.status >= 400)
                summary = statements.summarize(sent)
                sent_by_side.append(sent)
                sides[side.label] = {
                    "summary": summary,
                    "statements": [s.statements for s in sent],
                    "errors": {str(i): s.status for i, s in enumerate(sent) if s.status >= 400},
                }
                log(
                    f"  {side.label}: {summary['all']['mean']:.2f} statements per request ("
                    + ", ".join(f"{k} {v['mean']:.2f}" for k, v in summary.items() if k != "all")
                    + ")"
                )
        return {
            "requests": count,
            "seed": self.options.seed,
            "status_query_adds": counter.own,
            "back_to_back_reads": counter.back_to_back,
            "idle_per_s": idle,
            "kinds": [s.kind for s in sent_by_side[0]],
            "kinds_differ": statements.kinds_differ(*sent_by_side),
            "service": service.label,
            "other": other.label,
            "sides": sides,
        }

    # -- the whole run ----------------------------------------------------------

    def run(self) -> dict[str, Any]:
        o = self.options
        with self.phase("start mariadbd"):
            self.start_database()
        with self.phase(f"preload {o.contacts:,} contacts"):
            self.results["preload"] = self.preload(self.main, o.contacts)
        with self.phase("start the other service"):
            self.start_other()
            other_tenant = Tenant(self.other.database, model=copy.deepcopy(self.main.model))
            other_tenant.applied = list(self.main.applied)
            self.results["seeded"] = self.seed_other()
            self.settle()
        with self.phase("start gunicorn"):
            for index, config in enumerate(o.configs):
                server = self.start_service(self.main, index, config)
                self.sides.append(
                    Side(f"service ({config.label()})", server.port, self.main, server.all_pids, server)
                )
        self.sides.append(Side(f"other ({self.other.url})", self.other.port, other_tenant, self.other.pids))
        statements_figures: dict[str, Any] = {}
        if o.statements:
            with self.phase(f"statements per request: {o.statements:,} requests per side, one at a time"):
                statements_figures = self.statements_phase(o.statements)
        runs: dict[str, list[dict[str, Any]]] = {side.label: [] for side in self.sides}
        order: dict[str, list[str]] = {}
        if not o.statements_only:
            self.load(runs, order)
        slow: dict[str, Any] = {}
        if o.slow_clients and not o.statements_only:
            raise_open_files_limit(4 * o.slow_clients + 1000)
            with self.phase(f"{o.slow_clients} slow clients"):
                for side in self.sides:
                    slow[side.label] = self.slow_client_probe(side, o.slow_clients)
        with self.phase("invariants"):
            self.invariants(self.main, "after the side-by-side load")
        self.results["compare"] = {
            "sides": [
                {
                    "label": side.label,
                    "service": side.server is not None,
                    "rss_rest_mib": side.rss_rest,
                    "rss_load_mib": [round(v, 1) for v in side.rss_load.values()],
                    "non_2xx_total": side.tenant.non_2xx,
                }
                for side in self.sides
            ],
            "runs": runs,
            "order": order,
            "disturbed_above_cores": DISTURBED_CORES,
            "slow_clients": slow,
            "statements": statements_figures,
            "other": {"url": self.other.url, "database": self.other.database, "command": o.compare_command},
        }
        return self.results

    def load(self, runs: dict[str, list[dict[str, Any]]], order: dict[str, list[str]]) -> None:
        """Warm-up, RSS at rest, then `runs` shop runs per side, the order reversed every repetition."""
        o = self.options
        with self.phase("warm-up"):
            for side in self.sides:
                self.side_run(side, "warm-up", o.warmup)
        for side in self.sides:
            time.sleep(1)
            side.rss_rest = [round(rss_mib(pid), 1) for pid in side.pids()]
            side.rss_load = {}
        with self.phase("load: side by side"):
            for rep in range(o.runs):
                sequence = self.sides if rep % 2 == 0 else self.sides[::-1]
                order[str(rep + 1)] = [s.label for s in sequence]
                for side in sequence:
                    record = self.side_run(side, f"run {rep + 1} {side.label}")
                    runs[side.label].append(record)
                    errors = f" non-2xx {record['non_2xx']}" if record["non_2xx"] else ""
                    log(
                        f"  {rep + 1}/{o.runs} {side.label}: {record['throughput']:,.0f}/s "
                        f"p50 {record['p50']:.2f} ms p99 {record['p99']:.2f} ms "
                        f"server {record['workers_us']:.0f} µs/req "
                        f"mariadbd {record['mariadb_us']:.0f} µs/req{errors}"
                    )


def median_of(records: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in records) if records else 0.0


def spread(records: list[dict[str, Any]], key: str, digits: int = 0) -> str:
    found = [r[key] for r in records]
    if not found:
        return "-"
    text = f"{statistics.median(found):,.{digits}f}"
    return text + (f" [{min(found):,.{digits}f}-{max(found):,.{digits}f}]" if len(found) > 1 else "")


def undisturbed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs the medians use: those where other processes used at most DISTURBED_CORES,
    or every run when all of them were disturbed (the report then says so)."""
    quiet = [r for r in records if not r.get("disturbed")]
    return quiet or records


def statements_table(figures: dict[str, Any], contacts: int) -> list[str]:
    """Statements per identify by request kind, both sides, with the phase's own checks."""
    service, other = figures["sides"][figures["service"]], figures["sides"][figures["other"]]
    lines = [
        "## Statements per identify, by request kind",
        "",
        f"{figures['requests']:,} shop requests per side (seed {figures['seed']}, {contacts:,} contacts "
        "preloaded), the same bodies to both, one at a time on one keep-alive connection, before any "
        "load; each request's kind decided before it was sent, from the benchmark's model of what is "
        "stored. A request's statements: MariaDB's global `Questions` counter read before and after it, "
        f"less the {figures['status_query_adds']} the status query itself adds (BEGIN and COMMIT count). "
        "Mean, and median [min-max] per request:",
        "",
        f"| request kind | share | {figures['service']} mean | median [min-max] | "
        f"{figures['other']} mean | median [min-max] |",
        "|---|---|---|---|---|---|",
    ]
    total = figures["requests"]
    for kind, label in [*statements.KINDS.items(), ("all", "all")]:
        a, b = service["summary"].get(kind), other["summary"].get(kind)
        if not a or not b:
            continue
        share = "" if kind == "all" else f"{a['requests'] / total:.0%} ({a['requests']:,})"

        def cells(f: dict[str, Any]) -> str:
            return f"**{f['mean']:.2f}** | {f['median']:g} [{f['min']}-{f['max']}]"

        lines.append(f"| {label} | {share} | {cells(a)} | {cells(b)} |")
    idle = figures["idle_per_s"]
    lines += [
        "",
        "Other clients' statements while none was sent (the counter is global, so they would be counted "
        "against the request in flight): "
        + ", ".join(f"{when} {rate:.2f}/s" for when, rate in idle.items())
        + ". The service re-reads its blocked values (every 2 s) and ServiceState (every 5 s) inside the "
        "next request: those statements are in the means, rarely in the medians.",
    ]
    notes = []
    if figures["kinds_differ"]:
        notes.append(f"the two sides' models classified {figures['kinds_differ']} requests differently")
    for label in (figures["service"], figures["other"]):
        errors = figures["sides"][label]["errors"]
        if errors:
            notes.append(f"{label} answered {len(errors)} of them with an error status")
        if any(v < 0 for v in figures["sides"][label]["statements"]):
            notes.append(f"{label}: a negative count (the status query's own count is not constant)")
    if notes:
        lines += ["", "**Check:** " + "; ".join(notes) + "."]
    lines.append("")
    return lines


def load_table(results: dict[str, Any]) -> list[str]:
    """The load runs: one row per figure, one column per side; disturbed runs left out of the medians."""
    o, cmp = results["options"], results["compare"]
    sides, every_run = cmp["sides"], cmp["runs"]
    limit = cmp.get("disturbed_above_cores", DISTURBED_CORES)
    runs = {label: undisturbed(records) for label, records in every_run.items()}
    other = next(s for s in sides if not s["service"])
    base = runs[other["label"]]
    left_out = {label: sum(1 for r in records if r.get("disturbed")) for label, records in every_run.items()}
    all_disturbed = [
        label for label, records in every_run.items() if records and left_out[label] == len(records)
    ]
    lines = [
        "## Load, side by side",
        "",
        f"{o['contacts']:,} contacts preloaded into both databases; shop workload, C={max(o['concurrency'])} "
        f"keep-alive connections (wrk, 1 thread), {o['runs']} runs of {o['duration']:g} s per side, "
        "interleaved "
        + "; ".join(f"run {k}: {' → '.join(v)}" for k, v in cmp["order"].items())
        + ". Medians [min-max]; a ratio is this side's median / the other service's median, "
        "and in brackets the range of the per-repetition ratios. A run during which processes outside "
        f"the benchmark used more than {limit:g} cores is **disturbed**: left out of the medians and ratios "
        "(the non-2xx, others and disturbed rows count every run).",
        "",
    ]
    if all_disturbed:
        lines += [
            f"**Every run of {', '.join(all_disturbed)} was disturbed**: its figures below come from those "
            "disturbed runs (nothing else was measured); measure again on a quiet machine.",
            "",
        ]
    lines += [
        "| figure | " + " | ".join(s["label"] for s in sides) + " |",
        "|---|" + "---|" * len(sides),
    ]

    def row(name: str, cell: Any, every: bool = False) -> None:
        chosen = every_run if every else runs
        lines.append(f"| {name} | " + " | ".join(cell(s, chosen[s["label"]]) for s in sides) + " |")

    def ratio(key: str) -> Any:
        def cell(side: dict[str, Any], records: list[dict[str, Any]]) -> str:
            if side is other:
                return "1"
            kept = {id(r) for r in records} | {id(r) for r in base}
            pairs = [
                a[key] / b[key]
                for a, b in zip(every_run[side["label"]], every_run[other["label"]], strict=False)
                if b[key] and id(a) in kept and id(b) in kept
            ]
            whole = median_of(records, key) / median_of(base, key) if median_of(base, key) else 0
            return f"**{whole:.2f}**" + (f" [{min(pairs):.2f}-{max(pairs):.2f}]" if len(pairs) > 1 else "")

        return cell

    row("req/s", lambda s, r: spread(r, "throughput"))
    row("req/s ratio", ratio("throughput"))
    row("p50 ms", lambda s, r: spread(r, "p50", 2))
    row("p99 ms", lambda s, r: spread(r, "p99", 2))
    row("p99 ratio", ratio("p99"))
    row("non-2xx (all runs)", lambda s, r: str(sum(x["non_2xx"] for x in r)), every=True)
    row("server processes µs/req", lambda s, r: spread(r, "workers_us"))
    row("server in kernel", lambda s, r: f"{median_of(r, 'workers_system_share'):.0%}")
    row("mariadbd µs/req", lambda s, r: spread(r, "mariadb_us"))
    row("mariadbd µs/req ratio", ratio("mariadb_us"))
    row("wrk µs/req", lambda s, r: spread(r, "generator_us", 1))
    row("server cores", lambda s, r: spread(r, "workers_cores", 2))
    row("mariadbd cores", lambda s, r: spread(r, "mariadb_cores", 2))
    row("others (cores), every run", lambda s, r: spread(r, "others_cores", 2), every=True)
    row(
        f"disturbed runs (others > {limit:g} cores), left out",
        lambda s, r: (
            f"{left_out[s['label']]} of {len(r)}"
            + (" (all: used anyway)" if s["label"] in all_disturbed else "")
        ),
        every=True,
    )
    row(
        "RSS at rest MiB (total; per process)",
        lambda s, r: f"{sum(s['rss_rest_mib']):.0f}; {', '.join(f'{v:.0f}' for v in s['rss_rest_mib'])}",
    )
    row(
        "RSS under load MiB (total; per process)",
        lambda s, r: f"{sum(s['rss_load_mib']):.0f}; {', '.join(f'{v:.0f}' for v in s['rss_load_mib'])}",
    )
    lines.append("")
    lines.append(
        "Server processes: the gunicorn master and workers for the service; the process tree of "
        f"`{cmp['other']['command'] or 'the hand-started service'}` for the other. RSS per process: the "
        "gunicorn master first, then each worker; under load, the highest VmRSS sampled every 0.5 s."
    )
    return lines


def write_markdown(results: dict[str, Any], path: Path) -> None:
    """latest-compare.md: statements per request kind, then one table per figure, one column
    per side, ratios against the other service."""
    m, o, cmp = results["machine"], results["options"], results["compare"]
    argv = " ".join(shlex.quote(a) for a in o.get("argv", []))
    lines = [
        "# FluxKart Identity side by side with another service",
        "",
        f"Measured {m['date']} on {m['nproc']} cores ({m['cpu_model']}); MariaDB {m['mariadb']} (throwaway, "
        f"innodb_flush_log_at_trx_commit={o['flush_at_commit']}); {m['gunicorn']}; {m['wrk']}; "
        f"commit {m['commit']}.",
        "",
        f"Command: `python3 dev.py bench {argv}`",
        "",
    ]
    if cmp.get("statements"):
        lines += statements_table(cmp["statements"], o["contacts"])
    if any(cmp["runs"].values()):
        lines += [*load_table(results), ""]
    slow = cmp.get("slow_clients")
    if slow:
        held = o["slow_clients"]
        lines += [
            f"One fast client's identify (sequential, keep-alive, 60 requests) alone and while {held:,} "
            "other connections are held open (a third idle, a third sending headers a line at a time, "
            "a third with part of a body):",
            "",
            "| side | p50 ms alone | p50 ms held | p99 ms held | max ms held | errors "
            "| held connections served after |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, probe in slow.items():
            lines.append(
                f"| {label} | {probe['alone']['p50']:.1f} | {probe['held']['p50']:.1f} | "
                f"{probe['held']['p99']:.1f} | {probe['held']['max']:.1f} | "
                f"{probe['alone']['errors'] + probe['held']['errors']} | {probe.get('held_served')} |"
            )
        lines.append("")
    for verdict in results.get("invariants", []):
        found = {**(verdict.get("project") or {}), **verdict["linkage"]}
        lines.append(
            f"Invariants on the service's final table ({verdict['rows']:,} rows, {verdict['requests']:,} "
            f"requests): tests/harness/checker.py {verdict['project'] or 'clean'}, bench/invariants.py "
            f"{verdict['linkage'] or 'clean'}{' (VIOLATIONS)' if any(found.values()) else ''}. "
            "The other service's table is not judged."
        )
    lines.append("")
    path.write_text("\n".join(lines) + "\n")
