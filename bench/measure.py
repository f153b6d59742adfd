"""One run of the benchmark on MariaDB: its options, phases and measurements (`Bench`).

bench/run.py is the command (`python -m bench.run`); bench/compare.py extends `Bench` for
--compare. `Bench.run()` starts a throwaway mariadbd (tests/harness/mariadb.py) and the
service under gunicorn exactly as the Procfile does (tests/harness/gunicorn.py), preloads
contacts with bulk SQL, drives closed-loop load with wrk, measures the database-bound and
HTTP-bound ceilings in the same run, times merges and checks the final table's invariants.
Every process it starts is registered on the ExitStack it is given, so it is stopped at the
end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import database, report
from bench.invariants import judge
from bench.loadgen import LoadResult, db_ceiling, run_wrk, timed_posts
from bench.procs import (
    GunicornConfig,
    cpu_seconds,
    machine_busy_seconds,
    peak_rss_mib,
    total_cpu_seconds,
    total_system_seconds,
)
from bench.workload import (
    Batch,
    CustomerModel,
    Identifiers,
    Pair,
    commit,
    encode_body,
    hot_batch,
    new_identifier_pair,
    shop_batch,
)
from tests.harness.gunicorn import Gunicorn
from tests.harness.mariadb import MariaDBServer

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
DATABASE = "Fluxkart"
CEILING_DATABASE = "bench_ceiling"
# Bodies generated per second of a run: above any rate this 2-core machine reaches for
# identify, so wrk never wraps around (a wrap would turn new customers into repeats).
SERVICE_RATE_CAP = 6000
# The trivial app's bodies are never stored, so a small list that wraps is fine.
TRIVIAL_BODIES = 5000
# A run during which processes outside the benchmark used more CPU than this (in cores)
# shared the machine: it is marked disturbed and left out of the medians (issue 24).
DISTURBED_CORES = 0.2


def log(message: str) -> None:
    """Progress on stderr with the elapsed time, so a long run shows where it is."""
    print(f"[{time.monotonic() - STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


STARTED = time.monotonic()


# --------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------


@dataclass
class Options:
    contacts: int
    runs: int
    duration: float
    warmup: float
    concurrency: list[int]
    db_processes: list[int]
    configs: list[GunicornConfig]
    workloads: list[str]
    growth: bool
    growth_contacts: int
    merge_sizes: list[int]
    merge_repeats: int
    probe_requests: int
    profile: bool
    buffer_pool_mib: int
    flush_at_commit: int
    seed: int
    out: Path
    quick: bool
    compare: str | None = None  # "URL@DATABASE" of another service (bench/compare.py)
    compare_command: str | None = None
    slow_clients: int = 0
    statements: int = 0  # --compare: requests per side counted one at a time (bench/statements.py)
    statements_only: bool = False  # --compare: only that phase (no load, no slow clients)


# --------------------------------------------------------------------------
# Machine and versions
# --------------------------------------------------------------------------


def command_output(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_facts(mariadb_version: str) -> dict[str, Any]:
    """What the results were measured on: cores, CPU, memory, versions, commit."""
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    dirty = command_output(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(memory_kib / 1024**2, 1),
        "os": command_output(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "mariadb": mariadb_version,
        "wrk": command_output(["sh", "-c", "wrk -v 2>&1 | head -1"]).split(" Copyright")[0],
        "gunicorn": command_output([str(REPO / ".venv" / "bin" / "gunicorn"), "--version"]),
        "commit": command_output(["git", "rev-parse", "--short", "HEAD"])
        + (" (uncommitted changes)" if dirty else ""),
    }


# --------------------------------------------------------------------------
# Measuring one run
# --------------------------------------------------------------------------


def scrape_metrics(port: int) -> Counter[str]:
    """identify outcomes and retries so far, summed over workers, from the service's /metrics."""
    counts: Counter[str] = Counter()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return counts
    for line in text.splitlines():
        for prefix, label in (
            ("fluxkart_identify_outcomes_total{", "outcome"),
            ("fluxkart_transaction_retries_total{", "retry"),
        ):
            if line.startswith(prefix):
                labels, value = line[len(prefix) :].rsplit("} ", 1)
                name = labels.split('"')[1] if '"' in labels else labels
                counts[f"{label}:{name}"] += int(float(value))
    return counts


@dataclass
class CpuSnapshot:
    workers: float
    workers_system: float
    mariadb: float
    machine: float

    @classmethod
    def take(cls, server_pids: list[int], mariadb_pid: int) -> CpuSnapshot:
        return cls(
            total_cpu_seconds(server_pids),
            total_system_seconds(server_pids),
            cpu_seconds(mariadb_pid),
            machine_busy_seconds(),
        )


def run_record(result: LoadResult, before: CpuSnapshot, after: CpuSnapshot) -> dict[str, Any]:
    """One run's figures: throughput, latencies, errors, CPU per request of each party."""
    n = max(result.requests, 1)
    seconds = result.duration_s
    workers = after.workers - before.workers
    mariadb = after.mariadb - before.mariadb
    others = (after.machine - before.machine) - workers - mariadb - result.generator_cpu_s
    return {
        "throughput": result.throughput,
        "requests": result.requests,
        "sent": result.sent,
        "p50": result.latency_ms["p50"],
        "p95": result.latency_ms["p95"],
        "p99": result.latency_ms["p99"],
        "p999": result.latency_ms["p999"],
        "max": result.latency_ms["max"],
        "non_2xx": result.non_2xx,
        "socket_errors": result.socket_errors,
        "wrapped": result.extra.get("wrapped", False),
        "generator_us": result.generator_cpu_s / n * 1e6,
        "workers_us": workers / n * 1e6,
        "mariadb_us": mariadb / n * 1e6,
        "generator_cores": result.generator_cpu_s / seconds,
        "workers_cores": workers / seconds,
        "mariadb_cores": mariadb / seconds,
        "others_cores": max(others, 0.0) / seconds,
        "disturbed": max(others, 0.0) / seconds > DISTURBED_CORES,
        # Share of the workers' CPU spent in the kernel (socket syscalls), not in Python.
        "workers_system_share": (after.workers_system - before.workers_system) / workers if workers else 0.0,
    }


@dataclass
class Tenant:
    """One database the service runs on, with what the benchmark knows about it.

    The main runs use one tenant; --growth adds a small and a large one, served side by
    side, so their probes alternate in the same minutes and drift hits both alike.
    """

    database: str
    model: CustomerModel = field(default_factory=CustomerModel)
    applied: list[Pair] = field(default_factory=list)  # seed rows and every request sent: the checker's input
    # (first index in `applied`, run label, requests sent): says where a finding was sent.
    segments: list[tuple[int, str, int]] = field(default_factory=list)
    services: list[Gunicorn] = field(default_factory=list)
    non_2xx: int = 0  # failed requests: rolled back, yet in `applied` (see bench/invariants.py)

    def record(self, label: str, pairs: list[Pair], sent: int) -> None:
        """Add requests that reached the service (sent=0 marks rows written directly)."""
        self.segments.append((len(self.applied), label, sent))
        self.applied.extend(pairs)

    def where_sent(self, pair: Pair) -> str:
        """The runs that sent a request, and how close to each run's end (wrk stops mid-flight)."""
        found = []
        for index, sent_pair in enumerate(self.applied):
            if sent_pair == tuple(pair):
                start, label, sent = max(seg for seg in self.segments if seg[0] <= index)
                position = (
                    f"{sent - (index - start)} from the end of {sent:,}" if sent else "written directly"
                )
                found.append(f"{label}: {position}")
        return f"{pair}: " + "; ".join(found)


class Bench:
    """One benchmark run: owns the servers, the tenants, and the results."""

    def __init__(self, options: Options, stack: contextlib.ExitStack):
        self.options = options
        self.stack = stack
        self.rng = random.Random(options.seed)
        self.ids = Identifiers()  # shared by every tenant: identifiers never repeat in a run
        self.main = Tenant(DATABASE)
        self.base = Path(tempfile.mkdtemp(prefix="fluxkart-bench-"))
        stack.callback(shutil.rmtree, self.base, ignore_errors=True)
        self.raw = BENCH / "results" / "raw" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.raw.mkdir(parents=True, exist_ok=True)
        self.db: MariaDBServer | None = None
        self.trivials: list[Gunicorn] = []
        self.results: dict[str, Any] = {
            "options": {
                **asdict(options),
                "out": str(options.out),
                "configs": [c.label() for c in options.configs],
                "argv": sys.argv[1:],
            },
            "phases": {},
        }

    # -- set-up --------------------------------------------------------------

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase of the run for the report (the README quotes these)."""
        log(f"{name} ...")
        started = time.monotonic()
        yield
        self.results["phases"][name] = round(time.monotonic() - started, 1)

    @property
    def port(self) -> int:
        assert self.db is not None
        return self.db.port

    @property
    def mariadb_pid(self) -> int:
        assert self.db is not None and self.db.process is not None
        return self.db.process.pid

    def start_database(self) -> None:
        self.db = MariaDBServer(self.base / "mariadb")
        (self.base / "mariadb").mkdir()
        self.stack.callback(self.db.stop)
        self.db.start(timeout=60)
        database.set_buffer_pool(self.port, self.options.buffer_pool_mib)
        database.set_flush_at_commit(self.port, self.options.flush_at_commit)
        self.results["machine"] = machine_facts(database.server_version(self.port))

    def preload(self, tenant: Tenant, contacts: int) -> dict[str, Any]:
        """The service's schema on a fresh database, then `contacts` contacts in bulk."""
        database.create_database(self.port, tenant.database)
        pairs, seconds = database.preload(
            self.port, tenant.database, tenant.model, self.ids, self.rng, contacts
        )
        tenant.record("preload", pairs, 0)
        log(f"preloaded {len(pairs):,} contacts ({len(tenant.model):,} customers) in {seconds:.1f}s")
        self.settle()
        return {"contacts": len(pairs), "customers": len(tenant.model), "seconds": round(seconds, 1)}

    def settle(self, limit_s: float = 120) -> None:
        """Wait until mariadbd is idle: after a bulk load InnoDB flushes and purges in the background,
        which would otherwise be measured as the service's slowness."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            before = cpu_seconds(self.mariadb_pid)
            time.sleep(1)
            if cpu_seconds(self.mariadb_pid) - before < 0.05:
                return
        log(f"mariadbd still busy after {limit_s:.0f}s; measuring anyway")

    def start_service(self, tenant: Tenant, index: int, config: GunicornConfig) -> Gunicorn:
        """The service under gunicorn exactly as the Procfile starts it, on the tenant's database."""
        settings = {
            "MYSQL_HOST": "127.0.0.1",
            "MYSQL_PORT": str(self.port),
            "MYSQL_USER": "root",
            "MYSQL_PASSWORD": "",
            "MYSQL_DATABASE": tenant.database,
            # Explicitly empty, so a developer's .env cannot switch them on for the benchmark.
            "FLUXKART_API_TOKEN": "",
            "FLUXKART_PHONE_REGION": "",
            # The preload's largest customers (21-60 rows, one identifier each) and the load's
            # new identifiers pass merge protection's default limit of 50: refused links the
            # final invariant check (which sees requests, not answers) cannot tell from lost
            # ones. The limit's own cost is bench/protection_cost.py's.
            "FLUXKART_MAX_CUSTOMER_IDENTIFIERS": "10000",
        }
        log_path = self.raw / f"gunicorn-{tenant.database}-{index}.log"
        server = Gunicorn({**config.env(), **settings}, log_path.parent, app_dir=REPO, log_path=log_path)
        self.stack.callback(server.stop)
        server.start()
        tenant.services.append(server)
        return server

    def start_servers(self) -> None:
        """Per configuration: the service and the trivial app, side by side, under the same settings."""
        for index, config in enumerate(self.options.configs):
            self.start_service(self.main, index, config)
            trivial = Gunicorn(
                config.env(),
                self.raw,
                app_dir=REPO,
                app="bench.trivial_app:create_app()",
                log_path=self.raw / f"gunicorn-trivial-{index}.log",
            )
            self.stack.callback(trivial.stop)
            trivial.start()
            self.trivials.append(trivial)

    # -- measuring -------------------------------------------------------------

    def measure(
        self, server: Gunicorn, bodies: list[str], connections: int
    ) -> tuple[dict[str, Any], LoadResult]:
        """One wrk run against a server, with CPU of every party and the service's outcome counts."""
        metrics_before = scrape_metrics(server.port)
        pids = server.all_pids()
        before = CpuSnapshot.take(pids, self.mariadb_pid)
        result = run_wrk(server.port, bodies, connections, self.options.duration, self.base)
        after = CpuSnapshot.take(pids, self.mariadb_pid)
        record = run_record(result, before, after)
        delta = scrape_metrics(server.port) - metrics_before
        if delta:
            record["counts"] = dict(delta)
        return record, result

    def service_run(
        self,
        tenant: Tenant,
        label: str,
        server: Gunicorn,
        workload: str,
        connections: int,
        duration: float | None = None,
    ) -> dict[str, Any]:
        """Generate bodies, send them, and fold what was sent into the tenant's model and list.

        With `duration`, an unmeasured run (warm-up) of that length.
        """
        seconds = duration or self.options.duration
        batch = self.batch(tenant, workload, int(seconds * SERVICE_RATE_CAP))
        if duration is not None:
            result = run_wrk(server.port, batch.bodies, connections, duration, self.base)
            record: dict[str, Any] = {"sent": result.sent, "non_2xx": result.non_2xx}
        else:
            record, result = self.measure(server, batch.bodies, connections)
        sent = min(result.sent, len(batch.bodies))
        tenant.non_2xx += result.non_2xx
        commit(tenant.model, batch, sent)
        tenant.record(label, batch.pairs[:sent], sent)
        record["kinds"] = dict(Counter(batch.kinds[:sent]))
        return record

    def batch(self, tenant: Tenant, workload: str, count: int) -> Batch:
        """`count` requests of a workload, drawn from what the tenant holds now."""
        if workload == "hot":
            return hot_batch(self.rng, self.ids, count)
        return shop_batch(self.rng, tenant.model, self.ids, count)

    def warm_up(self, tenant: Tenant) -> None:
        """Unmeasured load: opens each worker thread's database connection, fills caches."""
        for server in tenant.services:
            self.service_run(
                tenant, "warm-up", server, "shop", max(self.options.concurrency), self.options.warmup
            )

    def warm_up_trivial(self) -> None:
        bodies = self.batch(self.main, "shop", TRIVIAL_BODIES).bodies  # never committed: nothing is stored
        for server in self.trivials:
            run_wrk(server.port, bodies, max(self.options.concurrency), self.options.warmup, self.base)

    def db_ceiling_run(self, processes: int) -> dict[str, Any]:
        """The minimal identify transaction from `processes` PyMySQL clients on the ceiling's copy."""
        # Shop requests drawn from the main tenant but never committed: they go to another database.
        pairs = self.batch(self.main, "shop", int(self.options.duration * 8000)).pairs
        marks: dict[str, float] = {}

        def on_start() -> None:
            marks["mariadb"], marks["machine"] = cpu_seconds(self.mariadb_pid), machine_busy_seconds()

        result = db_ceiling(self.port, CEILING_DATABASE, pairs, processes, self.options.duration, on_start)
        mariadb = cpu_seconds(self.mariadb_pid) - marks["mariadb"]
        others = machine_busy_seconds() - marks["machine"] - mariadb - result.client_cpu_s
        n = max(result.transactions, 1)
        return {
            "throughput": result.throughput,
            "requests": result.transactions,
            "p50": result.latency_ms.get("p50", 0),
            "p95": result.latency_ms.get("p95", 0),
            "p99": result.latency_ms.get("p99", 0),
            "clients_us": result.client_cpu_s / n * 1e6,
            "mariadb_us": mariadb / n * 1e6,
            "clients_cores": result.client_cpu_s / result.duration_s,
            "mariadb_cores": mariadb / result.duration_s,
            "others_cores": max(others, 0) / result.duration_s,
        }

    def repetitions(self) -> None:
        """Every configuration `runs` times, interleaved so drift hits service and ceilings alike."""
        o = self.options
        runs: dict[str, list[dict[str, Any]]] = {}
        self.results["runs"] = runs

        def keep(key: str, record: dict[str, Any]) -> None:
            runs.setdefault(key, []).append(record)
            errors = f" non-2xx {record['non_2xx']}" if record.get("non_2xx") else ""
            log(
                f"  {key}: {record['throughput']:,.0f}/s p50 {record.get('p50', 0):.2f} ms "
                f"p99 {record.get('p99', 0):.2f} ms{errors}"
            )

        for rep in range(o.runs):
            log(f"repetition {rep + 1}/{o.runs}")
            for processes in o.db_processes:
                keep(f"db/P={processes}", self.db_ceiling_run(processes))
            trivial_bodies = self.batch(self.main, "shop", TRIVIAL_BODIES).bodies
            for index, (service, trivial) in enumerate(zip(self.main.services, self.trivials, strict=True)):
                for c in o.concurrency:
                    keep(f"http/{index}/C={c}", self.measure(trivial, trivial_bodies, c)[0])
                for workload in o.workloads:
                    for c in o.concurrency:
                        key = f"{workload}/{index}/C={c}"
                        keep(key, self.service_run(self.main, key, service, workload, c))

    # -- single requests -------------------------------------------------------

    def merge_latency(self) -> None:
        """Time one POST /identify that bridges two customers of n rows each, built in the database."""
        server = self.main.services[0]
        created = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=400)
        out: dict[str, Any] = {}
        for size in self.options.merge_sizes:
            times, problems = [], 0
            for _ in range(self.options.merge_repeats):
                a_email, _, a_pairs = database.build_customer(self.port, DATABASE, self.ids, size, created)
                later = created + timedelta(hours=1)
                _, b_phone, b_pairs = database.build_customer(self.port, DATABASE, self.ids, size, later)
                created += timedelta(days=1)
                self.main.record(f"merge fixture {size}", a_pairs + b_pairs, 0)
                body = json.dumps({"email": a_email, "phoneNumber": b_phone})
                status, seconds, answer = timed_posts(server.port, [body])[0]
                self.main.non_2xx += status != 200
                self.main.record(f"merge {size}", [(a_email, b_phone)], 1)
                ok = status == 200 and len(answer["contact"]["secondaryContactIds"]) == 2 * size - 1
                problems += not ok
                times.append(seconds * 1000)
            out[str(size)] = {
                "median_ms": statistics.median(times),
                "min_ms": min(times),
                "max_ms": max(times),
                "wrong_answers": problems,
            }
            log(f"  merge of 2 x {size} rows: {statistics.median(times):.1f} ms (median of {len(times)})")
        self.results["merges"] = out

    def probe_batch(self, tenant: Tenant) -> Batch:
        """Interleaved sequential requests: a repeat customer (both identifiers known), a new one, a link."""
        model, batch = tenant.model, Batch()
        for _ in range(self.options.probe_requests):
            root = model.random_root(self.rng)
            while not (model.emails[root] and model.phones[root]):
                root = model.random_root(self.rng)
            known: Pair = (self.rng.choice(model.emails[root]), self.rng.choice(model.phones[root]))
            new: Pair = (self.ids.email(), self.ids.phone())
            linked, linked_root = new_identifier_pair(self.rng, model, self.ids)
            for kind, pair, event in (
                ("repeat", known, None),
                ("new", new, ("new", *new)),
                ("link", linked, ("link", linked_root, *linked)),
            ):
                batch.bodies.append(encode_body(self.rng, *pair))
                batch.pairs.append(pair)
                batch.kinds.append(kind)
                batch.events.append(event)
        return batch

    def probe(self, tenant: Tenant) -> dict[str, Any]:
        """identify latency by kind (sequential, one connection), then the shop workload under wrk."""
        server = tenant.services[0]
        misses = database.buffer_pool_misses(self.port)
        batch = self.probe_batch(tenant)
        answers = timed_posts(server.port, batch.bodies)
        commit(tenant.model, batch, len(batch.bodies))
        tenant.record("probe sequential", batch.pairs, len(batch.pairs))
        result: dict[str, Any] = {"sequential": {}, "errors": sum(1 for a in answers if a[0] != 200)}
        tenant.non_2xx += result["errors"]
        for kind in ("repeat", "new", "link"):
            times = [a[1] * 1000 for a, k in zip(answers, batch.kinds, strict=True) if k == kind]
            result["sequential"][kind] = statistics.median(times)
        sent = len(batch.bodies)
        for c in (1, max(self.options.concurrency)):
            record = self.service_run(tenant, f"probe C={c}", server, "shop", c)
            keys = ("throughput", "p50", "p99", "non_2xx", "others_cores")
            result[f"shop_C{c}"] = {k: record[k] for k in keys}
            sent += record["requests"]
        result["misses_per_request"] = (database.buffer_pool_misses(self.port) - misses) / sent
        return result

    def growth(self) -> None:
        """identify at options.contacts vs growth_contacts stored contacts, probes alternating."""
        o = self.options
        tenants = {"small": Tenant("growth_small"), "large": Tenant("growth_large")}
        out: dict[str, Any] = {"preload": {}, "probes": {"small": [], "large": []}}
        for size, tenant in tenants.items():
            contacts = o.contacts if size == "small" else o.growth_contacts
            out["preload"][size] = self.preload(tenant, contacts)
            self.start_service(tenant, 0, o.configs[0])
            self.warm_up(tenant)
        for rep in range(o.runs):
            for size, tenant in tenants.items():
                result = self.probe(tenant)
                out["probes"][size].append(result)
                log(
                    f"  growth {rep + 1}/{o.runs} {size}: "
                    + ", ".join(f"{k} p50 {v:.2f} ms" for k, v in result["sequential"].items())
                    + f", shop C=1 p50 {result['shop_C1']['p50']:.2f} ms"
                )
        for size, tenant in tenants.items():
            out[f"tables_mib_{size}"] = database.table_sizes_mib(self.port, tenant.database)
            out[f"rows_{size}"] = database.count_contacts(self.port, tenant.database)[0]
        self.results["growth"] = out
        for size, tenant in tenants.items():
            self.invariants(tenant, f"growth, {size} table")
            for server in tenant.services:
                server.stop()

    def profile(self) -> None:
        """py-spy on every worker of the first service during an extra shop run at top concurrency."""
        spy = REPO / ".venv" / "bin" / "py-spy"
        if not spy.exists():
            log("py-spy is not installed (pip install -r bench/requirements.txt): no profile")
            return
        server = self.main.services[0]
        outputs, spies = [], []
        for pid in server.worker_pids():
            output = self.raw / f"py-spy-{pid}.txt"
            outputs.append(output)
            command = [str(spy), "record", "--pid", str(pid), "--duration", str(int(self.options.duration))]
            # Only samples holding the GIL: CPU spent in Python, not threads waiting on
            # MariaDB. Non-blocking: the workers are not paused for each sample.
            command += ["--rate", "500", "--format", "raw", "--output", str(output), "--gil", "--nonblocking"]
            spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        try:
            self.service_run(self.main, "profile", server, "shop", max(self.options.concurrency))
        finally:
            for process in spies:
                try:
                    process.wait(timeout=self.options.duration + 30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.results["profile"] = report.summarize_profiles([p for p in outputs if p.exists()])

    def invariants(self, tenant: Tenant, label: str) -> None:
        """Both judges on the tenant's final Contact table (see bench/invariants.py)."""
        rows = database.fetch_rows(self.port, tenant.database)
        verdict = judge(rows, tenant.applied)
        verdict["label"] = label
        verdict["where"] = {
            kind: [tenant.where_sent(pair) for pair in pairs]
            for kind, pairs in verdict.pop("examples").items()
        }
        verdict["non_2xx_total"] = tenant.non_2xx
        self.results.setdefault("invariants", []).append(verdict)
        log(
            f"  invariants on {len(rows):,} rows: tests/harness/checker.py {verdict['project']}, "
            f"linkage {verdict['linkage'] or 'clean'}"
        )

    def peak_memory(self) -> None:
        self.results["peak_rss_mib"] = {
            "service": [round(peak_rss_mib(pid), 1) for s in self.main.services for pid in s.worker_pids()],
            "trivial": [round(peak_rss_mib(pid), 1) for s in self.trivials for pid in s.worker_pids()],
            "mariadbd": round(peak_rss_mib(self.mariadb_pid), 1),
        }

    # -- the whole run ---------------------------------------------------------

    def run(self) -> dict[str, Any]:
        o = self.options
        with self.phase("start mariadbd"):
            self.start_database()
        with self.phase(f"preload {o.contacts:,} contacts"):
            self.results["preload"] = self.preload(self.main, o.contacts)
            database.copy_database(self.port, DATABASE, CEILING_DATABASE)
        with self.phase("start gunicorn"):
            self.start_servers()
        with self.phase("warm-up"):
            self.warm_up(self.main)
            self.warm_up_trivial()
        with self.phase("load: ceilings and service"):
            self.repetitions()
        with self.phase("merge latency"):
            self.merge_latency()
        if o.profile:
            with self.phase("profile (py-spy)"):
                self.profile()
        with self.phase("invariants"):
            self.invariants(self.main, "after the load")
        self.peak_memory()
        if o.growth:
            with self.phase(f"growth ({o.contacts:,} vs {o.growth_contacts:,} contacts)"):
                self.growth()
        return self.results
