"""What identify sends to MySQL per request kind: statements (the server's `Questions` counter)
and round trips (queries PyMySQL sends), against the budget of issue 24 ("Short transactions,
lean requests"): every statement sent while a transaction holds row locks stretches the wait
of every request for that customer.

Counted on the session's MariaDB through real HTTP, one request at a time, each kind five
times: the fewest counts (a worker's periodic re-read of the blocked values or ServiceState
only ever adds one). The controls take the two savings out by name (the customer's rows read
before the transaction, the statements sent together) and must count more.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pymysql
import pytest

from tests.harness.servers import Api

pytestmark = pytest.mark.parametrize("backend", ["mysql"], indirect=True)

# (statements, round trips) at most, per kind; a repeat order stays one read.
BUDGET = {
    "repeat": (1, 1),
    "new customer": (7, 4),
    "new email for a known customer": (9, 5),
    "new phone for a known customer": (9, 5),
    "merge of two one-row customers": (10, 5),
}

numbers = itertools.count(1)


def fresh() -> tuple[str, str]:
    n = next(numbers)
    return f"s{n}@statements.test", f"55590{n:05d}"


def kinds(api: Api) -> dict[str, Callable[[], dict[str, Any]]]:
    """Each kind as a function that prepares its customers, then returns the request to count."""

    def repeat() -> dict[str, Any]:
        email, phone = fresh()
        api.identify(email, phone)
        return {"email": email, "phoneNumber": phone}

    def new_customer() -> dict[str, Any]:
        email, phone = fresh()
        return {"email": email, "phoneNumber": phone}

    def new_email() -> dict[str, Any]:
        email, phone = fresh()
        api.identify(email, phone)
        return {"email": "new-" + email, "phoneNumber": phone}

    def new_phone() -> dict[str, Any]:
        email, phone = fresh()
        api.identify(email, phone)
        return {"email": email, "phoneNumber": "9" + phone}

    def merge() -> dict[str, Any]:
        (email_a, phone_a), (email_b, phone_b) = fresh(), fresh()
        api.identify(email_a, phone_a)
        api.identify(email_b, phone_b)
        return {"email": email_a, "phoneNumber": phone_b}

    return {
        "repeat": repeat,
        "new customer": new_customer,
        "new email for a known customer": new_email,
        "new phone for a known customer": new_phone,
        "merge of two one-row customers": merge,
    }


class RoundTrips:
    """Counts the queries the service's PyMySQL connections send (one per round trip)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.count = 0
        self.ignored: set[int] = set()  # the test's own connection
        original = pymysql.connections.Connection.query
        lock = threading.Lock()

        def query(conn: Any, sql: Any, unbuffered: bool = False) -> Any:
            if id(conn) not in self.ignored:
                with lock:
                    self.count += 1
            return original(conn, sql, unbuffered)

        monkeypatch.setattr(pymysql.connections.Connection, "query", query)


@pytest.fixture
def counted(
    api: Api, mysql_server: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], tuple[int, int]]]:
    """count(kind) -> the fewest (statements, round trips) of five requests of that kind."""
    trips = RoundTrips(monkeypatch)
    admin = mysql_server.connect()
    trips.ignored.add(id(admin))

    def questions() -> int:
        with admin.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
            return int(cur.fetchone()[1])

    own = min(-questions() + questions() for _ in range(5))  # the status query's own count
    api.identify("warm@statements.test", "5550000000")  # the worker's connection and caches

    def count(kind: str) -> tuple[int, int]:
        prepare = kinds(api)[kind]
        seen = []
        for _ in range(5):
            body = prepare()
            before, trips_before = questions(), trips.count
            response = api.post("/identify", json=body)
            assert response.status_code == 200, response.text
            seen.append((questions() - before - own, trips.count - trips_before))
        return min(s for s, _ in seen), min(t for _, t in seen)

    yield count
    admin.close()


@pytest.mark.parametrize("kind", list(BUDGET))
def test_identify_stays_within_its_statement_budget(
    counted: Callable[[str], tuple[int, int]], kind: str
) -> None:
    statements, round_trips = counted(kind)
    print(f"\n[statements] {kind}: {statements} statements, {round_trips} round trips")
    assert statements <= BUDGET[kind][0], f"{kind}: {statements} statements; budget {BUDGET[kind]}"
    assert round_trips <= BUDGET[kind][1], f"{kind}: {round_trips} round trips; budget {BUDGET[kind]}"


def test_control_without_the_read_before_the_transaction_sends_more(
    counted: Callable[[str], tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the rows the read before the transaction found, the lock walks the customer again."""
    monkeypatch.setattr("fluxkart.seen_customers", lambda rows, protection: [])
    statements, _ = counted("new email for a known customer")
    assert statements > BUDGET["new email for a known customer"][0], statements


def test_control_without_statements_sent_together_makes_more_round_trips(
    counted: Callable[[str], tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every statement its own round trip (as on a Galera node): the same statements, more trips."""
    monkeypatch.setattr("identity.database.Database.batches", property(lambda db: False))
    statements, round_trips = counted("new email for a known customer")
    assert statements <= BUDGET["new email for a known customer"][0]
    assert round_trips > BUDGET["new email for a known customer"][1], round_trips
