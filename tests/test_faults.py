"""Faults under load: the database goes away and comes back; a worker is killed.

The service runs under gunicorn as in production (2 gthread workers of 4
threads), and a few client threads send identify requests over a small
alphabet of emails and phones (so requests create, link and merge customers
all the time) while the test breaks something:

(a) database restart: the test owns a throwaway mariadbd, stops it in the
    middle of the traffic, keeps sending for a few seconds, starts it again on
    the same data directory and port, and keeps sending. While the database is
    down every identify answer is 503 with Retry-After and the JSON error (never
    a 500, never a hang past the client timeout), /health/ready is 503 and
    /health/live is 200; afterwards the service recovers by itself, and the
    recovery time is measured.

(b) kill -9 of one gunicorn worker in the middle of the traffic: the master
    starts a new one, the service keeps answering, no 5xx.

In both, every request that did not get a 200 is sent again afterwards until
it does (as a client honouring Retry-After would), and the final Contact table
must be what some sequential order of all the requests produces
(tests/checker.py): one primary per customer, the oldest, every secondary
pointing straight at it, every identifier stored, nothing half applied.

Everything is bounded in time; gunicorn and mariadbd are always stopped.
Run with -s to see the figures (503 counts, recovery time).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from fluxkart import SETTINGS
from tests.checker import check_answers, check_invariants
from tests.conftest import read_contacts, require_mariadb
from tests.mariadb import MariaDBServer, free_port
from tests.processes import stop_process

pytestmark = pytest.mark.fault

ROOT = Path(__file__).resolve().parent.parent
# As the Procfile runs it, plus --no-control-socket: gunicorn 27 otherwise opens
# ~/.gunicorn/gunicorn.ctl, one path shared by every instance on the host.
COMMAND = [
    str(Path(sys.executable).with_name("gunicorn")),
    "-c",
    "gunicorn.conf.py",
    "--no-control-socket",
    "fluxkart:create_app()",
]
CLIENT_TIMEOUT = (3, 20)  # connect, read (s): a hang is anything longer
RECOVERY_LIMIT_S = 15  # the service must answer 200 again this soon after the database is back
DOWN_FOR_S = 5  # how long the database stays down

Pair = tuple[str | None, str | None]


# --------------------------------------------------------------------------
# gunicorn as a subprocess
# --------------------------------------------------------------------------


class Gunicorn:
    """`gunicorn -c gunicorn.conf.py 'fluxkart:create_app()'` on a free port of 127.0.0.1."""

    def __init__(self, settings: dict[str, Any], workdir: Path, workers: int = 2, threads: int = 4):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"gunicorn-{self.port}.log"
        self.metrics_dir = workdir / f"metrics-{self.port}"
        self.metrics_dir.mkdir(parents=True)
        self.env = {
            k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PROMETHEUS_MULTIPROC_DIR")
        }
        self.env.update({name: "" for name in SETTINGS})  # nothing leaks in from the developer's shell
        self.env.update({name: str(settings.get(name) or "") for name in SETTINGS})
        self.env.update(
            PORT=str(self.port),
            HOST="127.0.0.1",
            WEB_CONCURRENCY=str(workers),
            GUNICORN_THREADS=str(threads),
            GUNICORN_WORKER_CLASS="gthread",
            LOG_LEVEL="info",
            PYTHONUNBUFFERED="1",
            # Our own folder (gunicorn.conf.py keeps one it is given): the test reads which workers counted.
            PROMETHEUS_MULTIPROC_DIR=str(self.metrics_dir),
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30, ready_path: str = "/health/live") -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                COMMAND, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited ({self.process.returncode}):\n{self.logs()[-3000:]}")
            try:
                if requests.get(self.url + ready_path, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not answer within {timeout}s:\n{self.logs()[-3000:]}")

    def workers(self) -> list[int]:
        """The pids of the master's live worker processes."""
        if self.process is None:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == self.process.pid and fields[0] != "Z":  # ppid, state
                pids.append(int(entry.name))
        return sorted(pids)

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL to the whole process group if it lingers."""
        process, self.process = self.process, None
        stop_process(process)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Any]:
    """gunicorn_for(settings) starts one; every one started is stopped at the end."""
    started: list[Gunicorn] = []

    def start(
        settings: dict[str, Any], workers: int = 2, threads: int = 4, ready_path: str = "/health/live"
    ) -> Any:
        server = Gunicorn(settings, tmp_path, workers, threads)
        started.append(server)  # registered first, so a half-started one is stopped too
        server.start(ready_path=ready_path)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def own_mariadb(tmp_path: Path) -> Iterator[MariaDBServer]:
    """A mariadbd this test may stop and start; always stopped at the end."""
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
# Traffic: client threads sending identify requests, every exchange recorded
# --------------------------------------------------------------------------


@dataclass
class Exchange:
    pair: Pair
    started: float
    finished: float
    status: int | None  # None: no answer (connection error or client timeout)
    error: str = ""
    retry_after: str | None = None
    code: str | None = None  # the error code, or "not-json"
    contact: dict[str, Any] | None = None


def request_pair(rng: random.Random) -> Pair:
    """Over 16 emails and 16 phones, mostly both: customers are created, linked and merged constantly."""
    kind = rng.random()
    email = f"c{rng.randrange(16)}@fault.test" if kind > 0.15 else None
    phone = f"9198765430{rng.randrange(16):02d}" if kind < 0.85 else None  # long: no chance match in a log
    return email, phone


def send_identify(session: requests.Session, url: str, pair: Pair, close: bool) -> Exchange:
    started = time.monotonic()
    headers = {"Connection": "close"} if close else {}
    try:
        response = session.post(
            url + "/identify",
            json={"email": pair[0], "phoneNumber": pair[1]},
            headers=headers,
            timeout=CLIENT_TIMEOUT,
        )
    except requests.RequestException as exc:
        return Exchange(pair, started, time.monotonic(), None, error=type(exc).__name__)
    exchange = Exchange(pair, started, time.monotonic(), response.status_code)
    exchange.retry_after = response.headers.get("Retry-After")
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


@dataclass
class Traffic:
    """`clients` threads sending identify requests until stopped; every exchange is kept."""

    url: str
    clients: int = 4
    seed: int = 1
    close: bool = False  # a new connection per request (spreads requests over the workers)
    pause: float = 0.01  # between one client's requests
    exchanges: list[Exchange] = field(default_factory=list)
    probes: list[tuple[float, float, str, int | None]] = field(default_factory=list)  # sent, answered
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
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
        rng = random.Random(self.seed * 1000 + number)
        with requests.Session() as session:
            while not self.stopping.is_set():
                exchange = send_identify(session, self.url, request_pair(rng), self.close)
                with self.lock:
                    self.exchanges.append(exchange)
                time.sleep(self.pause)

    def prober(self) -> None:
        """/health/live and /health/ready, as a load balancer would poll them."""
        while not self.stopping.is_set():
            for path in ("/health/live", "/health/ready"):
                sent = time.monotonic()
                try:
                    status: int | None = requests.get(self.url + path, timeout=CLIENT_TIMEOUT).status_code
                except requests.RequestException:
                    status = None
                with self.lock:
                    self.probes.append((sent, time.monotonic(), path, status))
            time.sleep(0.2)

    def since(self, moment: float) -> list[Exchange]:
        with self.lock:
            return [e for e in self.exchanges if e.started >= moment]

    def wait_for_200(self, after: float, limit: float) -> float | None:
        """When the first identify sent after `after` got a 200 (None if none within `limit` seconds)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            done = [e.finished for e in self.since(after) if e.status == 200]
            if done:
                return min(done)
            time.sleep(0.05)
        return None


def settle(url: str, exchanges: list[Exchange], limit: float = 60) -> list[Exchange]:
    """Send every request that got no 200 again until it does; returns the 200 exchanges of the retries."""
    pending = [e.pair for e in exchanges if e.status != 200]
    done: list[Exchange] = []
    deadline = time.monotonic() + limit
    with requests.Session() as session:
        while pending and time.monotonic() < deadline:
            exchange = send_identify(session, url, pending[0], close=False)
            if exchange.status == 200:
                done.append(exchange)
                pending.pop(0)
            else:
                time.sleep(0.2)
    assert not pending, f"{len(pending)} requests still failing {limit}s after the fault ended"
    return done


def judge_table(settings: dict[str, Any], exchanges: list[Exchange], retried: list[Exchange]) -> int:
    """The final Contact table against every request sent; returns its row count."""
    rows = read_contacts(settings)
    sent = [e.pair for e in exchanges]
    answered = [(e.pair, e.contact) for e in [*exchanges, *retried] if e.status == 200 and e.contact]
    violations = check_invariants(rows, sent) + check_answers(rows, answered)
    assert not violations, "\n".join(violations[:20])
    return len(rows)


def slowest(exchanges: list[Exchange], since: float, count: int = 3) -> list[tuple[float, float, int | None]]:
    ranked = sorted(exchanges, key=lambda e: e.finished - e.started, reverse=True)[:count]
    return [(round(e.started - since, 2), round(e.finished - e.started, 2), e.status) for e in ranked]


def seconds(moment: float | None, since: float) -> str:
    return "never" if moment is None else f"{moment - since:.2f}s"


def outcome_counts(exchanges: list[Exchange]) -> Counter[str]:
    return Counter(str(e.status) if e.status is not None else e.error for e in exchanges)


def assert_no_identifiers_in(logs: str, exchanges: list[Exchange]) -> None:
    """The service's log never carries an email or a phone number in clear."""
    for email, phone in {e.pair for e in exchanges}:
        for identifier in (email, phone):
            at = logs.find(identifier) if identifier else -1
            assert at < 0, f"{identifier} in the log: {logs[max(0, at - 300) : at + 100]!r}"


# --------------------------------------------------------------------------
# (a) the database stops and starts again
# --------------------------------------------------------------------------


def crash(server: MariaDBServer) -> None:
    """kill -9 of the test's own mariadbd: no shutdown, transactions cut mid-way (InnoDB recovers them)."""
    assert server.process is not None
    server.process.kill()
    server.process.wait(10)
    server.process = None


@pytest.mark.parametrize("how", ["stop", "crash"])
def test_database_restart_under_load(
    own_mariadb: MariaDBServer, gunicorn: Any, tmp_path: Path, how: str
) -> None:
    """The database stops (SIGTERM, or kill -9) under load and starts again on the same data and port."""
    settings = {"FLUXKART_SQLITE_PATH": str(tmp_path / "unused.db"), **own_mariadb.settings("fluxkart_fault")}
    service = gunicorn(settings, ready_path="/health/ready")
    with Traffic(service.url, clients=4, seed=7) as traffic:
        time.sleep(2)  # warm: every worker thread has its connection
        stop_began = time.monotonic()
        own_mariadb.stop() if how == "stop" else crash(own_mariadb)
        down = time.monotonic()  # from here the server is gone
        time.sleep(DOWN_FOR_S)
        start_began = time.monotonic()
        own_mariadb.start()
        up = time.monotonic()
        first_200 = traffic.wait_for_200(after=up, limit=RECOVERY_LIMIT_S)
        first_ready = None
        deadline = time.monotonic() + RECOVERY_LIMIT_S
        while first_ready is None and time.monotonic() < deadline:
            ready = [
                t for _, t, path, status in list(traffic.probes) if path == "/health/ready" and status == 200
            ]
            first_ready = next((t for t in ready if t >= up), None)
            time.sleep(0.05)
        time.sleep(2)  # and keep going a little
    exchanges = list(traffic.exchanges)
    probes = list(traffic.probes)

    # Sent and answered while the database was down; sent while it was down (answered whenever).
    while_down = [e for e in exchanges if e.started >= down and e.finished <= start_began]
    sent_down = [e for e in exchanges if down <= e.started < start_began]
    during_stop = [e for e in exchanges if stop_began <= e.started < down]
    after = [e for e in exchanges if up <= e.started]
    unavailable = [e for e in exchanges if e.status == 503]
    counts = outcome_counts(exchanges)
    print(
        f"\n[fault: database {how}] {len(exchanges)} identify requests: {dict(counts)}; "
        f"503s: {len(unavailable)} ({len(while_down)} sent and answered while the database was down, "
        f"{len(during_stop)} during its shutdown); shutdown took {down - stop_began:.2f}s, "
        f"start {up - start_began:.2f}s; first identify 200 {seconds(first_200, up)} and first ready 200 "
        f"{seconds(first_ready, up)} after the database answered again; "
        f"slowest answers (sent at s after the stop, took s, status): {slowest(exchanges, stop_began)}"
    )

    # While down: 503 with Retry-After and the JSON error; never a 500 or a hang.
    assert {e.status for e in while_down} <= {503}, Counter(e.status for e in while_down)
    assert any(e.status == 503 for e in sent_down), [
        (round(e.started - down, 2), round(e.finished - e.started, 2), e.status) for e in sent_down[:40]
    ]
    assert set(counts) <= {"200", "503"}, counts  # no 500, no timeout, no dropped connection
    for exchange in unavailable:
        assert exchange.code == "database_unavailable", exchange
        assert exchange.retry_after is not None and exchange.retry_after.isdigit(), exchange
    assert max(e.finished - e.started for e in exchanges) < CLIENT_TIMEOUT[1]
    # Health: live throughout, ready only when the database answers.
    assert all(status == 200 for _, _, path, status in probes if path == "/health/live"), probes
    ready = [(sent, answered, status) for sent, answered, path, status in probes if path == "/health/ready"]
    assert all(status == 503 for sent, answered, status in ready if sent >= down and answered <= start_began)
    assert any(status == 503 for sent, _, status in ready if down <= sent < start_began), ready
    # Recovery by itself, within the limit.
    assert first_200 is not None, f"no 200 within {RECOVERY_LIMIT_S}s after the database came back"
    assert first_ready is not None
    assert any(e.status == 200 for e in after)

    retried = settle(service.url, exchanges)
    rows = judge_table(settings, exchanges, retried)
    print(f"[fault: database {how}] {len(retried)} requests re-sent until 200; {rows} rows pass the checker")
    logs = service.logs()
    assert "Traceback" not in logs, logs[-3000:]
    assert_no_identifiers_in(logs, exchanges)


# --------------------------------------------------------------------------
# (b) kill -9 of a worker
# --------------------------------------------------------------------------


def wait_for_workers(service: Gunicorn, count: int, gone: int | None = None, limit: float = 15) -> list[int]:
    """The worker pids once there are `count` of them (and `gone` is not among them)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        workers = service.workers()
        if len(workers) == count and gone not in workers:
            return workers
        time.sleep(0.05)
    raise AssertionError(f"gunicorn has workers {service.workers()}, not {count} without {gone}")


KILLS = 3


def test_worker_killed_under_load(settings: dict[str, Any], gunicorn: Any, backend: str) -> None:
    """kill -9 of a busy worker, KILLS times: the master replaces it, the service keeps answering."""
    service = gunicorn(settings, ready_path="/health/ready")
    workers = wait_for_workers(service, 2)  # the second one may still be booting
    kills: list[tuple[int, float, float]] = []  # victim, killed at, replaced at
    with Traffic(service.url, clients=6, seed=11, close=True, pause=0) as traffic:
        for _ in range(KILLS):
            time.sleep(1.5)
            victim = workers[0]
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)  # a worker of the gunicorn this test started
            workers = wait_for_workers(service, 2, gone=victim)
            kills.append((victim, killed, time.monotonic()))
        time.sleep(2)
    exchanges = list(traffic.exchanges)
    counts = outcome_counts(exchanges)
    lost = [e for e in exchanges if e.status is None]
    print(
        f"\n[fault: kill -9 worker, {backend}] {len(exchanges)} identify requests: {dict(counts)}; "
        f"{KILLS} kills, replacement worker up after "
        + ", ".join(f"{replaced - killed:.2f}s" for _, killed, replaced in kills)
        + f"; {len(lost)} requests lost with the killed workers"
    )
    # Only requests in flight on a killed worker may go unanswered; nothing answers 5xx.
    assert all(e.status in (200, None) for e in exchanges), counts  # None: the connection broke
    assert len(lost) <= KILLS * traffic.clients, lost
    for exchange in lost:
        assert any(exchange.started <= killed <= exchange.finished for _, killed, _ in kills), exchange
    for _, killed, _ in kills:  # answering again right after each kill
        assert any(e.status == 200 and e.started > killed for e in exchanges)
    # The killed workers had been serving traffic (their metrics files exist).
    counted = {path.stem.rsplit("_", 1)[-1] for path in service.metrics_dir.glob("counter_*.db")}
    assert {str(victim) for victim, _, _ in kills} <= counted, (kills, counted)

    retried = settle(service.url, exchanges)
    rows = judge_table(settings, exchanges, retried)
    print(f"[fault: kill -9 worker, {backend}] {rows} rows pass the checker")
    assert "Traceback" not in service.logs(), service.logs()[-3000:]
