"""identify on a real three-node Galera cluster, writes to every node (SPEC, "Concurrency").

A cluster of three mariadbd nodes (tests/harness/galera.py) with one gunicorn instance of the
service on each node, as a multi-primary deployment runs it. Row locks are local to a
node on Galera; only overlapping writes conflict, at commit (certification) or at any
statement (brute-force abort), surfacing as deadlock errors the service retries.

- Workloads that can fail (an earlier measurement found that splitting one hot stream
  over the nodes never failed, even without the locking):
  - "same-everywhere": barrier rounds where each distinct request is sent to all three
    nodes at the same moment, over tiny alphabets, twice per alphabet;
  - "merge-heavy": a stream over a few hundred customers where ~30% of the requests
    bridge two customers, round-robin over the nodes.
  Each runs multi-writer (each instance writes to its own node) and single-writer (all
  three instances on node 1, as behind a proxy with one active backend), and must leave
  0 invariant violations (tests/harness/checker.py), no 5xx, every answer as openapi.json
  describes it, every node's Contact and ContactIdentifier tables identical; the
  retries each cost are printed. The clients are tests/harness/bursts.py's. The copy of
  the service without its locking (tests/harness/unlocked.py) must fail on them:
  `pytest -m unlocked tests/cluster/test_galera.py`.
- The identifier limit (SPEC, "Merge protection"): rounds that each seed a customer near the
  limit, then grow it from every client at once through different identifiers, spread over
  the three nodes, never take a customer past it (its growth lock, CustomerLock, makes two
  nodes' growths of one customer conflict). Control (-m unlocked): the service with that
  lock's write taken out (tests/harness/patched.py, without_growth_locks) passes the limit.
- Read-your-writes: a write answered by node 1, then at once a lookup and an identify on
  node 2, thousands of times: 0 stale answers with the service's causal reads
  (wsrep_sync_wait=1). With FLUXKART_WSREP_SYNC_WAIT=0 the same check finds stale answers
  (-m unlocked): the check can fail.
- A node lost under load: node 3 is SIGKILLed mid-stream; its instance answers 503 and
  fails readiness, the others keep answering 200; the node rejoins by IST and its instance
  recovers by itself; nothing acknowledged is lost.

Figures (requests, retries by reason, stale answers, latencies) are printed: run with -s.

    .venv/bin/pytest -s tests/cluster/test_galera.py
    .venv/bin/pytest -s -m unlocked tests/cluster/test_galera.py
"""

from __future__ import annotations

import itertools
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.harness.bursts import (
    REQUEST_TIMEOUT,
    WITHOUT_LIMIT,
    Burst,
    Exchange,
    Pair,
    Round,
    limit_rounds,
    post_identify,
    run_burst,
)
from tests.harness.checker import check_answers, check_invariants, violation_kinds
from tests.harness.galera import GaleraCluster
from tests.harness.gunicorn import Gunicorn
from tests.harness.processes import SERVICE_DIR
from tests.harness.unlocked import build_unlocked_copy

pytestmark = pytest.mark.galera

# Per instance: 2 gthread workers x 4 threads; three instances on a 2-core machine
# that also runs the three nodes. 12 clients keep every instance busy.
WORKERS = (2, 4, "gthread")
CLIENTS = 12
RUN_LIMIT_S = 180  # wall-clock bound on one workload; the test fails if it is reached
RETRY_LINE = "retrying identify transaction"

SAME_EVERYWHERE_ALPHABETS = 30  # x 2 waves x 12 requests = 720 requests
MERGE_HEAVY_CUSTOMERS = 300
MERGE_HEAVY_REQUESTS = 1200
BRIDGE_SHARE = 0.3
RYW_ITERATIONS = 1000  # each: 2 writes on node 1, 2 reads on node 2 (2,000 checked reads)
RYW_CLIENTS = 4
LOST = 2  # the node killed under load: node 3
NODE_LOSS_MAX_REQUESTS = 6000  # the load stops earlier, once the lost node's instance has recovered

Item = tuple[int, Pair]  # (node index, request)


# --------------------------------------------------------------------------
# The databases and the service instances (the cluster: conftest's `galera`)
# --------------------------------------------------------------------------


database_numbers = itertools.count(1)


def fresh_database(cluster: GaleraCluster) -> str:
    """A new, empty database (created on node 1, replicated to all)."""
    name = f"fluxkart_galera_{next(database_numbers)}"
    cluster.create_database(name)
    return name


Serve = Callable[[Path, list[dict[str, str]]], list[Gunicorn]]


@pytest.fixture
def serve(gunicorn: Any) -> Serve:
    """Start one gunicorn instance of app_dir per settings (one per node), ready on its database."""

    def start(app_dir: Path, node_settings: list[dict[str, str]]) -> list[Gunicorn]:
        return [
            gunicorn(settings, *WORKERS, app_dir=app_dir, ready_path="/health/ready")
            for settings in node_settings
        ]

    return start


Tables = tuple[list[dict[str, Any]], list[dict[str, Any]]]  # (Contact rows, ContactIdentifier rows)


def node_tables(cluster: GaleraCluster, database: str) -> list[Tables]:
    """(Contact rows, ContactIdentifier rows) as each node holds them, node 1 first."""
    tables = []
    for node in cluster.nodes:
        with node.causal_connection(database) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT id, phoneNumber, email, linkedId, linkPrecedence, createdAt, updatedAt, deletedAt "
                "FROM Contact ORDER BY id"
            )
            contacts = list(cur.fetchall())
            cur.execute("SELECT kind, value, version FROM ContactIdentifier ORDER BY kind, value")
            tables.append((contacts, list(cur.fetchall())))
    return tables


def differing_nodes(tables: list[Tables]) -> list[str]:
    """Which nodes' tables differ from node 1's, e.g. ["node 3 Contact"]."""
    first = tables[0]
    return [
        f"node {number} {name}"
        for number, held in enumerate(tables[1:], start=2)
        for name, mine, theirs in (("Contact", held[0], first[0]), ("ContactIdentifier", held[1], first[1]))
        if mine != theirs
    ]


# --------------------------------------------------------------------------
# Workloads: deterministic plans, sent by tests/harness/bursts.py's client threads
# --------------------------------------------------------------------------


def plan_same_everywhere(seed: int, alphabets: int = SAME_EVERYWHERE_ALPHABETS) -> list[Round[Item]]:
    """Each distinct request sent to all three nodes at once; two waves per alphabet.

    4 distinct requests over 3 emails x 3 phones per wave, so the three copies of a
    request race each other on three nodes, and the second wave links and merges the
    customers the first created.
    """
    rng = random.Random(seed)
    rounds: list[Round[Item]] = []
    for number in range(alphabets):
        emails = [f"e{i}@s{number}.test" for i in range(3)]
        phones = [f"8{number:05d}{i:02d}" for i in range(3)]
        for _ in range(2):
            distinct: list[Pair] = []
            for _ in range(CLIENTS // 3):
                kind = rng.random()
                email = rng.choice(emails) if kind > 0.15 else None
                phone = rng.choice(phones) if kind < 0.85 else None
                distinct.append((email, phone))
            rounds.append(Round([(node, pair) for pair in distinct for node in range(3)], barrier=True))
    return rounds


def merge_heavy_requests(
    rng: random.Random, customers: int = MERGE_HEAVY_CUSTOMERS, bridge_share: float = BRIDGE_SHARE
) -> Iterator[Pair]:
    """Endless orders over `customers` customers; `bridge_share` of them join two customers.

    Customer c owns mc{c}@m.test and 7{c:05d}00; other orders repeat a customer's
    identifiers, bring a new phone or email for it, or carry only one identifier.
    """
    extra = itertools.count(1)
    while True:
        kind, c = rng.random(), rng.randrange(customers)
        email, phone = f"mc{c}@m.test", f"7{c:05d}00"
        if kind < bridge_share:
            other = rng.randrange(customers)
            yield email, f"7{other:05d}00"
        elif kind < 0.55:
            yield email, phone
        elif kind < 0.75:
            yield email, f"6{next(extra):07d}"
        elif kind < 0.85:
            yield f"mc{c}.{next(extra)}@m.test", phone
        else:
            yield (email, None) if kind < 0.93 else (None, phone)


def plan_merge_heavy(seed: int, size: int = MERGE_HEAVY_REQUESTS) -> list[Round[Item]]:
    """One shared-queue round of merge-heavy orders, request i to node i % 3."""
    pairs = itertools.islice(merge_heavy_requests(random.Random(seed)), size)
    return [Round([(i % 3, pair) for i, pair in enumerate(pairs)], barrier=False)]


WORKLOADS = {"same-everywhere": plan_same_everywhere, "merge-heavy": plan_merge_heavy}
# Multi-writer: each instance writes to its own node. Single-writer: all three write to
# node 1 (what a proxy with one active backend does); the other nodes only replicate.
TOPOLOGIES = ("multi-writer", "single-writer")


def run_rounds(urls: list[str], rounds: list[Round[Item]]) -> Burst:
    """Send the plan from CLIENTS clients within RUN_LIMIT_S, item (node, pair) to urls[node]."""

    def send(session: requests.Session, item: Item) -> Exchange:
        node, pair = item
        return post_identify(session, urls[node], pair, node)

    return run_burst(rounds, send, CLIENTS, RUN_LIMIT_S)


# --------------------------------------------------------------------------
# Judging a run: the checker, the nodes' tables, the instances' retries
# --------------------------------------------------------------------------


def is_unexpected_log_line(line: str) -> bool:
    """A traceback or an unhandled error (a 500); "database unavailable" (503) lines are expected."""
    return "Traceback" in line or "unhandled error" in line


@dataclass
class Verdict:
    label: str
    run: Burst
    violations: list[str]
    differing: list[str]
    rows: int
    retries: int
    retry_reasons: dict[str, float]
    outcomes: dict[str, float]
    log_errors: list[str]

    def summary(self) -> str:
        run = self.run
        kinds = dict(violation_kinds(self.violations)) or "none"
        return (
            f"{self.label}: {len(run.exchanges)}/{run.planned} requests in {run.seconds:.1f}s "
            f"({len(run.exchanges) / max(run.seconds, 1e-9):.0f}/s); statuses {dict(run.statuses())}; "
            f"5xx {run.five_xx()}; retries {self.retries} {self.retry_reasons or ''}; "
            f"outcomes {self.outcomes or '?'}; {self.rows} rows; violations {kinds}; "
            f"tables differ: {self.differing or 'no'}"
        )


def sum_metric(instances: list[Gunicorn], name: str) -> dict[str, float]:
    totals: Counter[str] = Counter()
    for server in instances:
        totals.update(server.metric(name))
    return dict(totals)


def judge(
    label: str, cluster: GaleraCluster, database: str, instances: list[Gunicorn], run: Burst
) -> Verdict:
    """Stop the instances, then compare the nodes' tables and check node 1's against the requests."""
    retry_reasons = sum_metric(instances, "fluxkart_transaction_retries")
    outcomes = sum_metric(instances, "fluxkart_identify_outcomes")
    for server in instances:
        server.stop()
    tables = node_tables(cluster, database)
    rows = tables[0][0]
    answered = run.answered()
    violations = check_invariants(rows, [x.request for x in answered])
    violations += check_answers(rows, [(x.request, x.contact) for x in answered if x.contact is not None])
    logs = [server.logs() for server in instances]
    log_errors = [line for log in logs for line in log.splitlines() if is_unexpected_log_line(line)]
    verdict = Verdict(
        label,
        run,
        violations,
        differing_nodes(tables),
        len(rows),
        sum(log.count(RETRY_LINE) for log in logs),
        retry_reasons,
        outcomes,
        log_errors,
    )
    print(verdict.summary())
    return verdict


def run_workload(
    workload: str,
    app_dir: Path,
    cluster: GaleraCluster,
    serve: Serve,
    label: str,
    topology: str = "multi-writer",
) -> Verdict:
    """Serve app_dir on the cluster (multi- or single-writer), run the workload, judge it."""
    database = fresh_database(cluster)
    settings = [{**s, **WITHOUT_LIMIT} for s in cluster.settings(database)]
    if topology == "single-writer":
        settings = [settings[0]] * len(settings)
    instances = serve(app_dir, settings)
    run = run_rounds([server.url for server in instances], WORKLOADS[workload](sum(map(ord, workload))))
    return judge(label, cluster, database, instances, run)


# --------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------


@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_identify_stays_correct_on_a_galera_cluster(
    topology: str, workload: str, galera: GaleraCluster, serve: Serve
) -> None:
    """0 invariant violations, no 5xx, identical tables on all nodes; conflicts only as retries."""
    verdict = run_workload(workload, SERVICE_DIR, galera, serve, f"{topology} {workload}", topology)
    run = verdict.run
    failed = [x for x in run.exchanges if x.status != 200]
    assert not run.timed_out, f"the run did not finish within {RUN_LIMIT_S}s: {verdict.summary()}"
    assert len(run.exchanges) == run.planned, verdict.summary()
    assert run.five_xx() == 0, verdict.summary()
    assert not failed, f"{len(failed)} requests failed, e.g. {failed[:3]}"
    contract = [x.contract for x in run.exchanges if x.contract]
    assert not contract, "answers that openapi.json does not describe:\n" + "\n".join(contract[:5])
    assert not verdict.log_errors, "\n".join(verdict.log_errors[:20])
    assert not verdict.violations, f"{verdict.summary()}\n" + "\n".join(verdict.violations[:40])
    assert not verdict.differing, verdict.summary()
    # Not vacuous: customers were merged while other nodes linked to them.
    assert verdict.outcomes.get("merged", 0) > 0, verdict.summary()


@pytest.mark.unlocked
def test_the_workloads_catch_races_without_the_locking(
    galera: GaleraCluster, serve: Serve, tmp_path: Path
) -> None:
    """The copy without FOR UPDATE and identifier rows fails on at least one workload."""
    app_dir = build_unlocked_copy(tmp_path / "unlocked")
    failures = {}
    for workload in WORKLOADS:
        verdict = run_workload(workload, app_dir, galera, serve, f"unlocked {workload}")
        print("\n".join(["e.g.", *verdict.violations[:: max(1, len(verdict.violations) // 8)]]))
        assert not verdict.run.timed_out, verdict.summary()
        failures[workload] = len(verdict.violations) + verdict.run.five_xx() + len(verdict.differing)
    print(f"failures without the locking, by workload: {failures}")
    assert any(failures.values()), f"no workload caught the unlocked copy: {failures}"


# --------------------------------------------------------------------------
# The identifier limit across nodes
# --------------------------------------------------------------------------

LIMIT = 10
LIMIT_ROUNDS = 30


def limit_run(
    cluster: GaleraCluster, gunicorn: Any, app: str, label: str
) -> tuple[Burst, list[str], dict[str, float]]:
    """LIMIT_ROUNDS customers seeded near the limit and grown from CLIENTS clients at once,
    client i's requests to node i % 3, against `app` on each node; (run, violations, retries)."""
    database = fresh_database(cluster)
    node_settings = [
        {**s, "FLUXKART_MAX_CUSTOMER_IDENTIFIERS": str(LIMIT)} for s in cluster.settings(database)
    ]
    instances = [gunicorn(s, *WORKERS, ready_path="/health/ready", app=app) for s in node_settings]
    urls = [server.url for server in instances]
    rounds = [
        Round([(i % 3, pair) for i, pair in enumerate(r.requests)], r.barrier)
        for number in range(LIMIT_ROUNDS)
        for r in limit_rounds(number, CLIENTS, LIMIT)
    ]
    run = run_rounds(urls, rounds)
    retries = sum_metric(instances, "fluxkart_transaction_retries")
    for server in instances:
        server.stop()
    rows = node_tables(cluster, database)[0][0]
    answered = run.answered()
    violations = check_invariants(rows, [x.sent() for x in answered], limit=LIMIT)
    violations += check_answers(rows, [(x.sent(), x.contact) for x in answered if x.contact is not None])
    refused = sum(1 for x in answered if x.ignored)
    print(
        f"\n{label}: {len(run.exchanges)}/{run.planned} requests in {run.seconds:.1f}s; statuses "
        f"{dict(run.statuses())}; refused by the limit {refused}; retries {retries}; "
        f"violations {dict(violation_kinds(violations)) or 'none'}"
    )
    return run, violations, retries


def test_the_limit_holds_across_nodes(galera: GaleraCluster, gunicorn: Any) -> None:
    """No customer past the limit, every refusal needed, no 5xx; conflicts only as retries."""
    run, violations, _ = limit_run(galera, gunicorn, "fluxkart:create_app()", "limit across nodes")
    assert not run.timed_out and len(run.exchanges) == run.planned
    assert set(run.statuses()) == {200}, dict(run.statuses())
    assert not [x.contract for x in run.exchanges if x.contract]
    assert not violations, "\n".join(violations[:30])
    assert sum(1 for x in run.answered() if x.ignored) >= LIMIT_ROUNDS * (CLIENTS - 2)


@pytest.mark.unlocked
def test_without_the_growth_lock_the_limit_breaks_across_nodes(galera: GaleraCluster, gunicorn: Any) -> None:
    """The control: with identity.merge.touch_customer_locks taken out, growths of one customer
    on different nodes do not conflict (their row locks are node-local), and customers end past
    the limit."""
    app = "tests.harness.patched:without_growth_locks()"
    run, violations, _ = limit_run(galera, gunicorn, app, "limit without the growth lock")
    assert not run.timed_out
    assert violation_kinds(violations)["past-limit"] > 0, dict(violation_kinds(violations))


# --------------------------------------------------------------------------
# Read-your-writes across nodes
# --------------------------------------------------------------------------


@dataclass
class Freshness:
    """Reads on node 2 right after writes answered by node 1: how many missed the write."""

    reads: int = 0
    stale_lookups: int = 0  # GET /customers: 404, or without the phone number just written
    stale_identifies: int = 0  # POST /identify (email only): without the phone number just linked
    failures: list[str] = field(default_factory=list)  # any answer but 200
    seconds: dict[str, list[float]] = field(default_factory=dict)  # latencies by request kind

    def stale(self) -> int:
        return self.stale_lookups + self.stale_identifies

    def timing(self, kind: str, seconds: float) -> None:
        self.seconds.setdefault(kind, []).append(seconds)

    def summary(self, label: str) -> str:
        medians = {kind: f"{statistics.median(s) * 1000:.1f} ms" for kind, s in sorted(self.seconds.items())}
        return (
            f"{label}: {self.reads} reads on node 2 after writes on node 1; stale: {self.stale()} "
            f"(lookups {self.stale_lookups}, identifies {self.stale_identifies}); "
            f"failures {len(self.failures)}; p50 {medians}"
        )


def write_then_read_elsewhere(writer: str, reader: str, tag: str, iterations: int) -> Freshness:
    """`iterations` times, from RYW_CLIENTS threads: write on `writer`, then read at once on `reader`.

    1. writer: identify (email, phone 1), a new customer;
    2. reader: GET /customers?email= must answer it, with phone 1;
    3. writer: identify (email, phone 2), which links phone 2;
    4. reader: identify (email) alone, answered by the lock-free fast path when the
       reader thinks nothing changes: it must list phone 2.
    """
    result = Freshness()
    lock = threading.Lock()
    numbers = iter(range(iterations))

    def client() -> None:
        with requests.Session() as session:

            def call(kind: str, method: str, url: str, **kwargs: Any) -> requests.Response | None:
                started = time.perf_counter()
                try:
                    response = session.request(method, url, timeout=REQUEST_TIMEOUT, **kwargs)
                except requests.RequestException as exc:
                    with lock:
                        result.failures.append(f"{kind}: {type(exc).__name__}")
                    return None
                with lock:
                    result.timing(kind, time.perf_counter() - started)
                    if response.status_code not in (200, 404):
                        result.failures.append(f"{kind}: {response.status_code} {response.text[:200]}")
                return response

            with lock:
                number = next(numbers, None)
            while number is not None:
                email, phone1, phone2 = f"ryw{number}@{tag}.test", f"5{number:06d}1", f"5{number:06d}2"
                written = call(
                    "identify on node 1",
                    "POST",
                    writer + "/identify",
                    json={"email": email, "phoneNumber": phone1},
                )
                if written is not None and written.status_code == 200:
                    read = call("lookup on node 2", "GET", reader + "/customers", params={"email": email})
                    if read is not None:
                        with lock:
                            result.reads += 1
                            if read.status_code == 404 or (
                                read.status_code == 200
                                and phone1 not in read.json()["contact"]["phoneNumbers"]
                            ):
                                result.stale_lookups += 1
                written = call(
                    "identify on node 1",
                    "POST",
                    writer + "/identify",
                    json={"email": email, "phoneNumber": phone2},
                )
                if written is not None and written.status_code == 200:
                    read = call("identify on node 2", "POST", reader + "/identify", json={"email": email})
                    if read is not None and read.status_code == 200:
                        with lock:
                            result.reads += 1
                            if phone2 not in read.json()["contact"]["phoneNumbers"]:
                                result.stale_identifies += 1
                with lock:
                    number = next(numbers, None)

    threads = [threading.Thread(target=client, name=f"ryw-{i}") for i in range(RYW_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(RUN_LIMIT_S)
    assert not any(thread.is_alive() for thread in threads), (
        f"read-your-writes did not finish in {RUN_LIMIT_S}s"
    )
    return result


def freshness(cluster: GaleraCluster, serve: Serve, sync_wait: str) -> Freshness:
    """Instances on nodes 1 and 2 with FLUXKART_WSREP_SYNC_WAIT=sync_wait; run the check."""
    database = fresh_database(cluster)
    settings = [{**s, "FLUXKART_WSREP_SYNC_WAIT": sync_wait} for s in cluster.settings(database)[:2]]
    writer, reader = serve(SERVICE_DIR, settings)
    result = write_then_read_elsewhere(writer.url, reader.url, f"w{sync_wait}", RYW_ITERATIONS)
    print(result.summary(f"wsrep_sync_wait={sync_wait}"))
    return result


def test_reads_on_another_node_see_acknowledged_writes(galera: GaleraCluster, serve: Serve) -> None:
    """Causal reads (the service's default on Galera): 0 stale answers in thousands of reads."""
    result = freshness(galera, serve, "1")
    assert not result.failures, result.failures[:10]
    assert result.reads == 2 * RYW_ITERATIONS, result.summary("causal reads")
    assert result.stale() == 0, result.summary("causal reads")


@pytest.mark.unlocked
def test_without_causal_reads_answers_go_stale(galera: GaleraCluster, serve: Serve) -> None:
    """FLUXKART_WSREP_SYNC_WAIT=0: the same check finds stale answers, so it can fail."""
    result = freshness(galera, serve, "0")
    assert not result.failures, result.failures[:10]
    assert result.stale() > 0, result.summary("no causal reads")


# --------------------------------------------------------------------------
# A node lost under load
# --------------------------------------------------------------------------


def readiness(server: Gunicorn) -> int | None:
    """GET /health/ready's status, None when the instance does not answer."""
    try:
        return requests.get(server.url + "/health/ready", timeout=REQUEST_TIMEOUT).status_code
    except requests.RequestException:
        return None


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until `condition` holds; returns the seconds it took; fails the test after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.1)
    return time.monotonic() - started


def test_a_node_lost_under_load(galera: GaleraCluster, serve: Serve) -> None:
    """SIGKILL node 3 mid-stream: 503s (never 500) from its instance only, rejoin by IST, nothing lost."""
    database = fresh_database(galera)
    instances = serve(SERVICE_DIR, [{**s, **WITHOUT_LIMIT} for s in galera.settings(database)])
    urls = [server.url for server in instances]
    lost, lost_instance = galera.nodes[LOST], instances[LOST]
    pairs = merge_heavy_requests(random.Random(13))
    exchanges: list[Exchange] = []
    lock, stop = threading.Lock(), threading.Event()
    numbers = itertools.count()
    deadline = time.monotonic() + RUN_LIMIT_S

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set() and time.monotonic() < deadline:
                with lock:
                    number = next(numbers)
                    if number >= NODE_LOSS_MAX_REQUESTS:
                        return
                    pair = next(pairs)
                exchange = post_identify(session, urls[number % 3], pair, number % 3)
                with lock:
                    exchanges.append(exchange)
                if exchange.status == 503:
                    time.sleep(0.05)  # a client backs off on 503 (Retry-After)

    def answered() -> int:
        with lock:
            return len(exchanges)

    def recovered_answers(since: float) -> int:
        with lock:
            return sum(1 for x in exchanges if x.node == LOST and x.status == 200 and x.sent_at > since)

    threads = [threading.Thread(target=client, name=f"load-{i}") for i in range(CLIENTS)]
    load_started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: answered() >= 300, 90, "300 requests answered before the kill")
        killed_at = time.monotonic()
        lost.kill()
        wait_for(lambda: readiness(lost_instance) == 503, 15, "the lost node's instance fails readiness")
        others_ready = [readiness(server) for server in instances if server is not lost_instance]
        during = answered()
        wait_for(lambda: answered() >= during + 300, 90, "300 more requests answered while the node is down")
        log_before = len(lost.log())
        restarted_at = time.monotonic()
        galera.start_node(lost)
        galera.wait_synced(timeout=120)
        rejoin_s = time.monotonic() - restarted_at
        recover_s = wait_for(lambda: readiness(lost_instance) == 200, 60, "the instance recovers by itself")
        recovered_at = time.monotonic()
        wait_for(lambda: recovered_answers(recovered_at) >= 30, 60, "the recovered instance answers identify")
    finally:
        stop.set()
        for thread in threads:
            thread.join(REQUEST_TIMEOUT[1] + 5)
    load_s = time.monotonic() - load_started
    rejoin_log = lost.log()[log_before:]

    # Clients retry what got a 503, now that every node is back.
    with requests.Session() as session:
        retried = [
            post_identify(session, urls[x.node], x.request, x.node) for x in exchanges if x.status == 503
        ]
    run = Burst(planned=len(exchanges) + len(retried), exchanges=exchanges + retried, seconds=load_s)
    down = [x for x in exchanges if x.node == LOST and killed_at <= x.sent_at < restarted_at]
    rejoining = [x for x in exchanges if x.node == LOST and restarted_at <= x.sent_at < recovered_at]
    after = [x for x in exchanges if x.node == LOST and x.sent_at >= recovered_at]
    others = [x for x in exchanges if x.node != LOST]
    stalled = max((x.seconds for x in others if killed_at - 1 <= x.sent_at < restarted_at), default=0.0)
    print(
        f"\nnode loss: {len(exchanges)} requests in {load_s:.1f}s; lost node's instance: "
        f"{Counter(x.status for x in down)} while down, {Counter(x.status for x in rejoining)} while "
        f"rejoining, {Counter(x.status for x in after)} after; others: {Counter(x.status for x in others)}, "
        f"slowest answer around the kill {stalled:.2f}s; readiness of the others while down: {others_ready}; "
        f"rejoined in {rejoin_s:.1f}s ({'IST' if 'rsync IST completed on joiner' in rejoin_log else 'SST'}), "
        f"instance ready {recover_s:.1f}s later; {len(retried)} 503'd requests retried: "
        f"{Counter(x.status for x in retried)}"
    )
    verdict = judge("node loss", galera, database, instances, run)

    assert all(x.status in (200, 503) for x in exchanges), Counter(x.status for x in exchanges)
    assert all(x.status == 200 for x in others), (
        f"other nodes' instances: {Counter(x.status for x in others)}"
    )
    assert others_ready == [200, 200], others_ready
    assert down and all(x.status == 503 for x in down), Counter(x.status for x in down)
    assert all(x.status in (200, 503) for x in rejoining), Counter(x.status for x in rejoining)
    assert all(x.status == 200 for x in after), Counter(x.status for x in after)
    assert "rsync IST completed on joiner" in rejoin_log, "the node did not rejoin by IST"
    assert all(x.status == 200 for x in retried), Counter(x.status for x in retried)
    assert not verdict.log_errors, "\n".join(verdict.log_errors[:20])
    assert not verdict.violations, f"{verdict.summary()}\n" + "\n".join(verdict.violations[:40])
    assert not verdict.differing, verdict.summary()
