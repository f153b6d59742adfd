"""Faults while the service writes: the database goes away and comes back; a worker is killed.

The service runs under gunicorn as in production (2 gthread workers of 4
threads). Client threads keep WRITING through every fault: each sends a cycle
of requests with fresh identifiers, so every request changes the table:

- create: a new email and a new phone (a new customer);
- link: a known customer's email with a new phone (a secondary row);
- merge: the email of the client's oldest unmerged customer with the phone of
  its second oldest (two customers become one), so customers created before a
  fault are merged after it.

Each answer is checked against openapi.json and classified (created, linked,
merged) from its contents. Around each fault the test asserts:

- writes of all three kinds were answered in the second before the fault (the
  test waits for that, then strikes: takes its lock, then kills) and again after
  recovery, including a merge of two customers created before the fault;
- one identify transaction is open on the victim when it dies: the test holds a
  row lock from its own SQL connection so that a request blocks inside its
  transaction (MySQL: in its FOR UPDATE, after its first writes), checks that it
  waits (information_schema.INNODB_TRX), then strikes. The request must get a
  503 when the database dies (never a 500: a dropped connection mid-transaction
  is the database's failure, not ours), or no answer at all when its own worker
  is killed, and none of it may be stored afterwards;
- no answer other than 200 or 503 (a dropped connection only for requests in
  flight on a killed worker), every 503 with Retry-After and the JSON error;
- every write acknowledged with a 200 is in the table after the fault, and the
  answers' rows exist;
- after every request that got no 200 is sent again until it does (as a client
  honouring Retry-After would), the final table is what some sequential order of
  all the requests produces (tests/harness/checker.py) and every answer names its
  customer's rows.

(a) database stop (SIGTERM) or crash (kill -9 of the test's own mariadbd), down
    for a few seconds, then started again on the same data and port; /health/live
    stays 200 and /health/ready is 503 while it is down.
(b) kill -9 of the gunicorn worker serving the held request, twice; on SQLite the
    test holds the database's write lock (BEGIN IMMEDIATE), so the victim is
    mid-request, waiting to begin its transaction.

Everything is bounded in time; gunicorn and mariadbd are always stopped.
Run with -s to see the figures (counts by outcome, 503s, recovery time).
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.harness.checker import check_answers, check_invariants
from tests.harness.database import lock_customer, lock_waiters, read_contacts, run_sql
from tests.harness.gunicorn import Gunicorn
from tests.harness.mariadb import MariaDBServer
from tests.harness.openapi_check import check_answer
from tests.harness.required import require_mariadb

pytestmark = pytest.mark.fault

CLIENT_TIMEOUT = (3, 20)  # connect, read (s): a hang is anything longer
RECOVERY_LIMIT_S = 20  # bound on waiting for writes of every kind after the fault
PRECONDITION_LIMIT_S = 20  # bound on waiting for writes of every kind before the fault
DOWN_FOR_S = 4  # how long the database stays down
KINDS = ("created", "linked", "merged")
run_numbers = itertools.count(1)  # traffic runs in this process: part of every identifier
held_numbers = itertools.count(1)

Pair = tuple[str | None, str | None]


@pytest.fixture
def own_mariadb(tmp_path: Path) -> Iterator[MariaDBServer]:
    """A mariadbd this test may stop, kill and start; always stopped at the end."""
    require_mariadb("the fault tests")
    base = tmp_path / "mariadb"
    base.mkdir()
    server = MariaDBServer(base)
    try:
        server.start()
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------
# Traffic: client threads that keep writing, every exchange recorded
# --------------------------------------------------------------------------


@dataclass
class Customer:
    """A customer one client created (and maybe grew by merges), as its answers showed it."""

    primary_id: int
    email: str
    phone: str
    acknowledged: float  # when the answer that created it arrived


@dataclass
class Exchange:
    pair: Pair
    intent: str  # "create", "link" or "merge"
    started: float
    finished: float = 0.0
    status: int | None = None  # None: no answer (connection error or client timeout)
    error: str = ""
    retry_after: str | None = None
    code: str | None = None  # the error code, or "not-json"
    contact: dict[str, Any] | None = None
    contract: str = ""  # how the answer disagrees with openapi.json ("" when it agrees)
    outcome: str = ""  # "created", "linked", "merged" when the answer shows that write
    merged_from: float = 0.0  # for a merge: when the later of its two customers was created


def send_identify(
    session: requests.Session, url: str, pair: Pair, intent: str = "", close: bool = False
) -> Exchange:
    """POST /identify once; the answer is checked against openapi.json and recorded, never raised."""
    exchange = Exchange(pair, intent, time.monotonic())
    headers = {"Connection": "close"} if close else {}
    try:
        response = session.post(
            url + "/identify",
            json={"email": pair[0], "phoneNumber": pair[1]},
            headers=headers,
            timeout=CLIENT_TIMEOUT,
        )
    except requests.RequestException as exc:
        exchange.finished, exchange.error = time.monotonic(), type(exc).__name__
        return exchange
    exchange.finished, exchange.status = time.monotonic(), response.status_code
    exchange.retry_after = response.headers.get("Retry-After")
    try:
        check_answer(response)
    except AssertionError as exc:
        exchange.contract = str(exc)
    try:
        body = response.json()
    except ValueError:
        exchange.code = "not-json"
        return exchange
    if response.status_code == 200:
        exchange.contact = body["contact"]
    else:
        exchange.code = body.get("error", {}).get("code", "not-an-error-body")
    return exchange


class Writer:
    """One client's cycle of create, link, create, merge requests, all with fresh identifiers."""

    def __init__(self, tag: str, digits: str, seed: int):
        self.tag, self.digits = tag, digits
        self.rng = random.Random(seed)
        self.numbers = itertools.count(1)
        self.customers: list[Customer] = []  # distinct customers, oldest first
        self.steps = itertools.cycle(["create", "link", "create", "merge"])

    def fresh(self) -> tuple[str, str]:
        n = next(self.numbers)
        # Long phone numbers: no chance match with anything else in a log.
        return f"{self.tag}-{n}@fault.test", f"{self.digits}{n:07d}"

    def send(self, session: requests.Session, url: str, close: bool) -> Exchange:
        intent = next(self.steps)
        if intent == "merge" and len(self.customers) >= 2:
            # The two customers this client has not merged for longest; the one created first survives.
            pair = [self.customers.pop(0), self.customers.pop(0)]
            older, newer = sorted(pair, key=lambda customer: customer.acknowledged)
            exchange = send_identify(session, url, (older.email, newer.phone), intent, close)
            contact = exchange.contact or {}
            if contact.get("primaryContactId") == older.primary_id and newer.primary_id in contact.get(
                "secondaryContactIds", []
            ):
                exchange.outcome, exchange.merged_from = "merged", newer.acknowledged
            if exchange.status == 200:
                self.customers.append(older)  # one customer now, known by the older one's identifiers
            else:
                self.customers[:0] = [older, newer]  # not merged (rolled back): try again later
            return exchange
        if intent == "link" and self.customers:
            customer = self.rng.choice(self.customers)
            _, phone = self.fresh()
            exchange = send_identify(session, url, (customer.email, phone), intent, close)
            contact = exchange.contact or {}
            if (
                contact.get("primaryContactId") == customer.primary_id
                and phone in contact.get("phoneNumbers", [])
                and contact.get("secondaryContactIds")
            ):
                exchange.outcome = "linked"
            return exchange
        email, phone = self.fresh()
        exchange = send_identify(session, url, (email, phone), "create", close)
        contact = exchange.contact or {}
        if contact.get("emails") == [email] and not contact.get("secondaryContactIds"):
            exchange.outcome = "created"
            self.customers.append(Customer(contact["primaryContactId"], email, phone, exchange.finished))
        return exchange


@dataclass
class Traffic:
    """`clients` writer threads until stopped, and a prober polling the health endpoints."""

    url: str
    clients: int = 4
    seed: int = 1
    close: bool = False  # a new connection per request (spreads requests over the workers)
    pause: float = 0.005  # between one client's requests
    exchanges: list[Exchange] = field(default_factory=list)
    probes: list[tuple[float, float, str, int | None, str]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.run = next(run_numbers)
        self.threads = [
            threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(self.clients)
        ]
        self.threads.append(threading.Thread(target=self.prober, daemon=True))

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(CLIENT_TIMEOUT[0] + CLIENT_TIMEOUT[1] + 5)

    def client(self, number: int) -> None:
        tag = f"p{os.getpid()}r{self.run}c{number}"
        digits = f"9{os.getpid() % 10000:04d}{self.run % 100:02d}{number:02d}"
        writer = Writer(tag, digits, self.seed * 1000 + number)
        with requests.Session() as session:
            while not self.stopping.is_set():
                exchange = writer.send(session, self.url, self.close)
                with self.lock:
                    self.exchanges.append(exchange)
                # After a 503 wait, as a client honouring Retry-After would (a little less, to keep testing).
                time.sleep(0.25 if exchange.status == 503 else self.pause)

    def prober(self) -> None:
        """/health/live and /health/ready, as a load balancer would poll them (answers checked too)."""
        while not self.stopping.is_set():
            for path in ("/health/live", "/health/ready"):
                sent = time.monotonic()
                contract = ""
                try:
                    response = requests.get(self.url + path, timeout=CLIENT_TIMEOUT)
                    status: int | None = response.status_code
                    try:
                        check_answer(response)
                    except AssertionError as exc:
                        contract = str(exc)
                except requests.RequestException:
                    status = None
                with self.lock:
                    self.probes.append((sent, time.monotonic(), path, status, contract))
            time.sleep(0.2)

    def snapshot(self) -> list[Exchange]:
        with self.lock:
            return list(self.exchanges)

    def kinds_between(self, start: float, end: float) -> set[str]:
        """The write outcomes answered (200) between two moments."""
        return {e.outcome for e in self.snapshot() if e.outcome and start <= e.finished <= end}

    def wait_writing(self, limit: float = PRECONDITION_LIMIT_S) -> None:
        """Return once writes of every kind were answered within the last second (bounded)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            now = time.monotonic()
            if self.kinds_between(now - 1, now) >= set(KINDS):
                return
            time.sleep(0.05)
        raise AssertionError(f"traffic is not writing every kind: {outcome_counts(self.snapshot())}")

    def wait_recovered(self, since: float, limit: float = RECOVERY_LIMIT_S) -> float:
        """When writes of every kind, and a merge of customers made before `since`, were answered again."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            after = [e for e in self.snapshot() if e.started >= since and e.status == 200]
            kinds = {e.outcome for e in after}
            old_merges = [e for e in after if e.outcome == "merged" and e.merged_from < since]
            if kinds >= set(KINDS) and old_merges:
                return max(min(e.finished for e in after if e.outcome == kind) for kind in KINDS)
            time.sleep(0.05)
        raise AssertionError(
            f"no writes of every kind within {limit}s after the fault: "
            f"{outcome_counts([e for e in self.snapshot() if e.started >= since])}"
        )


def outcome_counts(exchanges: list[Exchange]) -> Counter[str]:
    """e.g. {"200 created": 40, "200 merged": 20, "503": 12, "ConnectionError": 1}."""
    return Counter(
        (f"{e.status} {e.outcome}".strip() if e.status is not None else e.error) for e in exchanges
    )


def settle(url: str, exchanges: list[Exchange], limit: float = 60) -> list[Exchange]:
    """Send every request that got no 200 again until it does; returns the 200 exchanges of the retries."""
    pending = [e.pair for e in exchanges if e.status != 200]
    done: list[Exchange] = []
    deadline = time.monotonic() + limit
    with requests.Session() as session:
        while pending and time.monotonic() < deadline:
            exchange = send_identify(session, url, pending[0])
            assert not exchange.contract, exchange.contract
            if exchange.status == 200:
                done.append(exchange)
                pending.pop(0)
            else:
                time.sleep(0.2)
    assert not pending, f"{len(pending)} requests still failing {limit}s after the fault ended"
    return done


def assert_acknowledged_writes_kept(settings: dict[str, Any], exchanges: list[Exchange]) -> None:
    """Every identifier a 200 answered for is stored, and every row an answer named exists."""
    rows = read_contacts(settings)
    live = [row for row in rows if row["deletedAt"] is None]
    ids = {row["id"] for row in live}
    emails = {row["email"] for row in live}
    phones = {row["phoneNumber"] for row in live}
    for e in exchanges:
        if e.status != 200 or e.contact is None:
            continue
        assert e.pair[0] in emails and e.pair[1] in phones, f"acknowledged {e.pair} is not stored"
        named = {e.contact["primaryContactId"], *e.contact["secondaryContactIds"]}
        assert named <= ids, f"the answer to {e.pair} named rows {sorted(named - ids)} that are gone"


def judge_table(settings: dict[str, Any], exchanges: list[Exchange], retried: list[Exchange]) -> int:
    """The final Contact table against every request sent and settled; returns its row count.

    `exchanges` holds every request sent (whatever its answer) and `retried` the
    200s that settled the failed ones, so every request was applied.
    """
    rows = read_contacts(settings)
    sent = [e.pair for e in exchanges]
    answered = [(e.pair, e.contact) for e in [*exchanges, *retried] if e.status == 200 and e.contact]
    violations = check_invariants(rows, sent) + check_answers(rows, answered)
    assert not violations, "\n".join(violations[:20])
    return len(rows)


def assert_answers_as_documented(traffic: Traffic) -> None:
    """Every identify answer and health probe matched openapi.json."""
    wrong = [e.contract for e in traffic.exchanges if e.contract]
    wrong += [contract for *_, contract in traffic.probes if contract]
    assert not wrong, "\n".join(wrong[:5])


def assert_no_identifiers_in(logs: str, exchanges: list[Exchange]) -> None:
    """The service's log never carries an email or a phone number in clear."""
    for email, phone in {e.pair for e in exchanges}:
        for identifier in (email, phone):
            at = logs.find(identifier) if identifier else -1
            assert at < 0, f"{identifier} in the log: {logs[max(0, at - 300) : at + 100]!r}"


# --------------------------------------------------------------------------
# The victim: a request held inside its transaction by a lock the test holds
# --------------------------------------------------------------------------


class HeldRequest:
    """An identify that the test keeps waiting inside the service, then watches die.

    A customer (email, phone) is created first. Then the test's own connection
    locks it: on MySQL the primary's Contact row (SELECT ... FOR UPDATE), so the
    request blocks in its transaction at the lock on its customer's primary, after
    its first writes; on SQLite the database's write lock (BEGIN IMMEDIATE), so it
    waits to begin. The request brings a new phone: if any of it were stored, the
    row would show.
    """

    def __init__(self, url: str, settings: dict[str, Any], tag: str):
        self.url, self.settings = url, settings
        number = f"8{os.getpid() % 10000:04d}{next(held_numbers):03d}"
        self.email, self.phone, self.new_phone = f"held-{tag}@fault.test", number + "0", number + "1"
        with requests.Session() as session:
            self.created = send_identify(session, url, (self.email, self.phone))
        assert self.created.status == 200 and self.created.contact, self.created
        self.primary_id = self.created.contact["primaryContactId"]
        self.lock_conn: Any = None
        self.answer: dict[str, Any] = {}
        self.thread = threading.Thread(target=self.send, daemon=True)
        self.local_port = 0
        self.connected = threading.Event()

    def hold(self) -> None:
        """Take the lock, send the request, and return once it waits (bounded)."""
        self.lock_conn = lock_customer(self.settings, self.primary_id)
        self.thread.start()
        assert self.connected.wait(5), "the held request did not connect"
        if self.settings.get("MYSQL_HOST"):
            self.wait_for_lock_wait()

    def wait_for_lock_wait(self, limit: float = 10) -> None:
        """Until a transaction waits for the lock we hold (the request, inside identify's transaction)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if lock_waiters(self.lock_conn):
                return
            time.sleep(0.15)  # InnoDB refreshes its information_schema snapshot only when unread for 0.1 s
        raise AssertionError("the held request never waited inside a transaction")

    def send(self) -> None:
        """The request itself, on its own connection (its local port tells which worker took it)."""
        conn = http.client.HTTPConnection("127.0.0.1", int(self.url.rsplit(":", 1)[1]), timeout=30)
        try:
            conn.connect()
            self.local_port = conn.sock.getsockname()[1]
            self.connected.set()
            body = json.dumps({"email": self.email, "phoneNumber": self.new_phone})
            conn.request("POST", "/identify", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            self.answer = {
                "status": response.status,
                "retry_after": response.getheader("Retry-After"),
                "body": response.read().decode(errors="replace"),
            }
        except (OSError, http.client.HTTPException) as exc:
            self.answer = {"status": None, "error": type(exc).__name__}
        finally:
            conn.close()

    def release(self) -> dict[str, Any]:
        """Drop the lock (the lock's connection may be dead already) and return the request's answer."""
        try:
            self.lock_conn.rollback()
            self.lock_conn.close()
        except Exception:  # noqa: BLE001 (the database it held the lock on may have died)
            pass
        self.thread.join(CLIENT_TIMEOUT[1] + 10)
        assert not self.thread.is_alive(), "the held request never finished"
        return self.answer

    def assert_nothing_stored(self) -> None:
        """The dead request left nothing: no row carries its new phone."""
        rows = run_sql(self.settings, "SELECT id FROM Contact WHERE phoneNumber = %s", (self.new_phone,))
        assert rows == [], f"the killed transaction left rows {rows}"

    def worker(self, service: Gunicorn, limit: float = 5) -> int:
        """The pid of the gunicorn worker that accepted the request's connection (from /proc)."""
        wanted = f"0100007F:{service.port:04X} 0100007F:{self.local_port:04X}"
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            inodes = {
                fields[9]
                for fields in (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
                if f"{fields[1]} {fields[2]}" == wanted
            }
            for pid in service.worker_pids():
                try:
                    links = {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
                except OSError:
                    continue
                if any(f"socket:[{inode}]" in links for inode in inodes):
                    return pid
            time.sleep(0.02)  # still in the listen backlog: no worker accepted it yet
        raise AssertionError(f"no worker of {service.pid} accepted the held request ({wanted})")


# --------------------------------------------------------------------------
# (a) the database stops or crashes, and starts again
# --------------------------------------------------------------------------


def crash(server: MariaDBServer) -> None:
    """kill -9 of the test's own mariadbd: no shutdown, transactions cut mid-way (InnoDB recovers them)."""
    assert server.process is not None
    server.process.kill()
    server.process.wait(10)
    server.process = None


@pytest.mark.parametrize("how", ["stop", "crash"])
def test_database_dies_under_writes(
    own_mariadb: MariaDBServer, gunicorn: Callable[..., Gunicorn], tmp_path: Path, how: str
) -> None:
    """The database stops (SIGTERM) or crashes (kill -9) mid-transaction and comes back on the same data."""
    conn = own_mariadb.connect()
    with conn.cursor() as cur:  # the service never creates a database (SPEC, "Start-up")
        cur.execute("CREATE DATABASE `fluxkart_fault`")
    conn.close()
    settings = {"FLUXKART_SQLITE_PATH": str(tmp_path / "unused.db"), **own_mariadb.settings("fluxkart_fault")}
    service = gunicorn(settings, ready_path="/health/ready")
    held = HeldRequest(service.url, settings, f"db-{how}")
    with Traffic(service.url, clients=4, seed=7) as traffic:
        traffic.wait_writing()
        struck = time.monotonic()  # the fault starts with the held lock
        writes_before = traffic.kinds_between(struck - 1, struck)
        held.hold()
        own_mariadb.stop() if how == "stop" else crash(own_mariadb)
        down = time.monotonic()  # from here the server is gone
        victim = held.release()
        time.sleep(DOWN_FOR_S)
        start_began = time.monotonic()
        own_mariadb.start()
        up = time.monotonic()
        recovered = traffic.wait_recovered(since=up)
        time.sleep(1)  # and keep going a little
    exchanges = traffic.snapshot()
    probes = list(traffic.probes)
    counts = outcome_counts(exchanges)
    while_down = [e for e in exchanges if e.started >= down and e.finished <= start_began]
    print(
        f"\n[fault: database {how}] {len(exchanges)} identify requests: {dict(counts)}; "
        f"held request answered {victim.get('status')}; shutdown took {down - struck:.2f}s, "
        f"start {up - start_began:.2f}s; writes of every kind again {recovered - up:.2f}s after it answered"
    )

    # Writing right up to the fault; the victim died inside its transaction and got a 503.
    assert writes_before >= set(KINDS), writes_before
    assert victim["status"] == 503, victim
    assert json.loads(victim["body"])["error"]["code"] == "database_unavailable", victim
    assert victim["retry_after"] and victim["retry_after"].isdigit(), victim
    # Only 200 and 503 (with Retry-After and the JSON error): no 500, no timeout, no dropped connection.
    assert {e.status for e in exchanges} <= {200, 503}, counts
    for exchange in exchanges:
        if exchange.status == 503:
            assert exchange.code == "database_unavailable", exchange
            assert exchange.retry_after is not None and exchange.retry_after.isdigit(), exchange
    assert {e.status for e in while_down} <= {503}, Counter(e.status for e in while_down)
    assert_answers_as_documented(traffic)
    # Health: live throughout, ready 503 while the database is down.
    assert all(status == 200 for _, _, path, status, _ in probes if path == "/health/live"), probes
    ready = [(sent, done, status) for sent, done, path, status, _ in probes if path == "/health/ready"]
    assert all(status == 503 for sent, done, status in ready if sent >= down and done <= start_began)
    assert any(status == 503 for sent, _, status in ready if down <= sent < start_began), ready

    # Nothing of the cut transaction, everything acknowledged, then the whole history explained.
    held.assert_nothing_stored()
    assert_acknowledged_writes_kept(settings, exchanges)
    retried = settle(service.url, exchanges)
    rows = judge_table(settings, [held.created, *exchanges], retried)
    print(f"[fault: database {how}] {len(retried)} requests re-sent until 200; {rows} rows pass the checker")
    logs = service.logs()
    assert "Traceback" not in logs, logs[-3000:]
    assert_no_identifiers_in(logs, exchanges)


# --------------------------------------------------------------------------
# (b) kill -9 of the worker serving a request
# --------------------------------------------------------------------------


def wait_for_workers(service: Gunicorn, count: int, gone: int | None = None, limit: float = 20) -> list[int]:
    """The worker pids once there are `count` of them (and `gone` is not among them)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        workers = service.worker_pids()
        if len(workers) == count and gone not in workers:
            return workers
        time.sleep(0.05)
    raise AssertionError(f"gunicorn has workers {service.worker_pids()}, not {count} without {gone}")


KILLS = 2


def test_worker_killed_mid_request(
    settings: dict[str, Any], gunicorn: Callable[..., Gunicorn], backend: str
) -> None:
    """kill -9 of the worker holding a request, KILLS times: replaced, answering, nothing half applied."""
    service = gunicorn(settings, ready_path="/health/ready")
    wait_for_workers(service, 2)  # the second one may still be booting
    kills: list[tuple[int, float, float]] = []  # victim, killed at, replaced at
    victims: list[dict[str, Any]] = []
    helds: list[HeldRequest] = []
    with Traffic(service.url, clients=4, seed=11, close=True) as traffic:
        for number in range(KILLS):
            held = HeldRequest(service.url, settings, f"kill-{backend}-{number}")
            helds.append(held)
            traffic.wait_writing()
            struck = time.monotonic()  # the fault starts with the held lock (on SQLite it stops every write)
            assert traffic.kinds_between(struck - 1, struck) >= set(KINDS)
            held.hold()
            victim = held.worker(service)
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)  # a worker of the gunicorn this test started
            victims.append(held.release())
            wait_for_workers(service, 2, gone=victim)
            kills.append((victim, killed, time.monotonic()))
        recovered = traffic.wait_recovered(since=kills[-1][2])
        time.sleep(1)
    exchanges = traffic.snapshot()
    counts = outcome_counts(exchanges)
    lost = [e for e in exchanges if e.status is None]
    print(
        f"\n[fault: kill -9 worker, {backend}] {len(exchanges)} identify requests: {dict(counts)}; "
        f"{KILLS} kills, replacement worker up after "
        + ", ".join(f"{replaced - killed:.2f}s" for _, killed, replaced in kills)
        + f"; {len(lost)} other requests lost with the killed workers; writes of every kind again "
        f"{recovered - kills[-1][2]:.2f}s after the last replacement"
    )
    # The held request was on the killed worker: it got no answer at all.
    assert all(victim["status"] is None for victim in victims), victims
    # Only requests in flight on a killed worker may go unanswered; nothing answers 5xx.
    assert {e.status for e in exchanges} <= {200, None}, counts
    for exchange in lost:
        assert any(exchange.started <= killed <= exchange.finished for _, killed, _ in kills), exchange
    assert_answers_as_documented(traffic)
    for sent, done, path, status, _ in traffic.probes:  # a probe on the victim worker is lost too
        assert status == 200 or (status is None and any(sent <= k <= done for _, k, _ in kills)), path

    for held in helds:
        held.assert_nothing_stored()
    assert_acknowledged_writes_kept(settings, exchanges)
    retried = settle(service.url, exchanges)
    rows = judge_table(settings, [*(held.created for held in helds), *exchanges], retried)
    print(f"[fault: kill -9 worker, {backend}] {rows} rows pass the checker")
    assert "Traceback" not in service.logs(), service.logs()[-3000:]
