"""Promises about failures and waiting that only show when something goes wrong.

- An unexpected exception is a JSON 500 that names no internals, and is logged
  with its request id (SPEC "Errors": never a stack trace). The route that
  raises is registered on the test's own app object; the service has none.
- When a lock stays held past the retry budget, identify answers 503 with
  Retry-After and writes nothing (SPEC "Concurrency": retries are bounded, then
  503). The test holds the customer's lock from its own SQL connection: on
  MySQL the primary's row (SELECT ... FOR UPDATE), on SQLite the database's write
  lock (BEGIN IMMEDIATE). It takes the service's whole retry budget (about 10 s:
  two lock waits of 5 s); the app has no setting to shorten it.
- Requests for unrelated customers never wait for each other (SPEC
  "Concurrency"): with one customer's primary locked and a request for it
  waiting, a request for another customer is answered while the first still
  waits. MySQL only: SQLite has one write lock for the whole database, so its
  writes take turns (docs/testing.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.harness.database import lock_customer, lock_waiters, run_sql
from tests.harness.servers import Api, LiveServer

CLIENT_TIMEOUT_S = 60  # far above the service's retry budget: the service must answer first


class Records(logging.Handler):
    """Collects the log records of the service's loggers."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def service_log(app: Any) -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("fluxkart")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def test_an_unexpected_error_is_a_json_500_without_internals(app: Any, service_log: Records) -> None:
    """A view that raises: 500, the SPEC's error shape, no exception text or trace, logged with its id."""
    secret = "pymysql.err at /var/lib/secret-host:3306 SELECT * FROM Contact"

    def explode() -> Any:
        raise RuntimeError(secret)

    app.add_url_rule("/test-only-explode", "test_only_explode", explode)
    server = LiveServer(app)
    try:
        # Plain requests: this route is the test's, not the API's, so openapi.json does not list it.
        response = requests.get(
            server.url + "/test-only-explode", headers={"X-Request-ID": "boom-1"}, timeout=10
        )
    finally:
        server.close()
    assert response.status_code == 500
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {
        "error": {"code": "internal_error", "message": "internal error; it has been logged"}
    }
    assert "secret" not in response.text and "Traceback" not in response.text
    # The service makes the request id; the client's is kept beside it (SPEC, "History and erasure").
    assert response.headers["X-Client-Request-ID"] == "boom-1" != response.headers["X-Request-ID"]
    errors = [r for r in service_log.records if r.levelno >= logging.ERROR and r.exc_info]
    assert len(errors) == 1, service_log.records
    assert errors[0].exc_info is not None and secret in str(errors[0].exc_info[1])


class HeldLock:
    """The test's own connection holding a customer's lock until release()."""

    def __init__(self, settings: dict[str, Any], primary_id: int):
        self.mysql = bool(settings.get("MYSQL_HOST"))
        self.conn: Any = lock_customer(settings, primary_id)

    def waiters(self) -> int:
        """How many transactions wait for a lock this connection holds (MySQL)."""
        return lock_waiters(self.conn)

    def wait_for_a_waiter(self, limit: float = 10) -> None:
        deadline = time.monotonic() + limit
        while self.waiters() == 0:
            assert time.monotonic() < deadline, "no request came to wait for the held lock"
            # InnoDB refreshes its information_schema snapshot only when unread for 0.1 s.
            time.sleep(0.15)

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


def stored_phones(settings: dict[str, Any]) -> set[str]:
    return {row["phoneNumber"] for row in run_sql(settings, "SELECT phoneNumber FROM Contact")}


def test_a_lock_held_past_the_retry_budget_is_a_503(api: Api, settings: dict[str, Any]) -> None:
    """The customer's lock held longer than the service retries: 503 with Retry-After, nothing written."""
    primary = api.identify("held@x.org", "1000")["primaryContactId"]
    lock = HeldLock(settings, primary)
    try:
        response = api.post(
            "/identify", json={"email": "held@x.org", "phoneNumber": "1001"}, timeout=CLIENT_TIMEOUT_S
        )
        if lock.mysql:
            assert lock.waiters() == 0  # it gave up: nothing of it waits any more
    finally:
        lock.release()
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "database_unavailable"
    assert response.headers["Retry-After"].isdigit()
    assert "1001" not in stored_phones(settings)
    # Once the lock is gone, the same request goes through.
    assert "1001" in api.identify("held@x.org", "1001")["phoneNumbers"]


# MySQL only: SQLite has one write lock for the whole database, so its writes take turns by design.
@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
@pytest.mark.parametrize("others", [0, 300])
def test_unrelated_customers_do_not_wait(api: Api, settings: dict[str, Any], others: int) -> None:
    """One customer's primary locked and a request for it waiting: another customer is answered meanwhile."""
    waiting_for = api.identify("locked@x.org", "2000")["primaryContactId"]
    other = api.identify("free@x.org", "3000")["primaryContactId"]
    # Other customers: none, or a few hundred (the optimizer may read a tiny table by a full
    # scan, and a locking read then waits for every locked row it passes; the protocol
    # before lock_contacts did exactly that on a table of three rows).
    if others:
        run_sql(
            settings,
            "INSERT INTO Contact (email, phoneNumber, linkPrecedence, createdAt, updatedAt)"
            " VALUES (%s, %s, 'primary', %s, %s)",
            [
                (f"other{n}@x.org", f"5{n:05d}", "2024-01-01 00:00:00", "2024-01-01 00:00:00")
                for n in range(others)
            ],
            many=True,
        )
        run_sql(settings, "ANALYZE TABLE Contact")
    lock = HeldLock(settings, waiting_for)
    blocked: dict[str, Any] = {}

    def send_blocked() -> None:
        client = Api(api.base_url)  # its own session: requests sessions are not shared across threads
        try:
            blocked["response"] = client.post(
                "/identify", json={"email": "locked@x.org", "phoneNumber": "2001"}, timeout=CLIENT_TIMEOUT_S
            )
        finally:
            client.session.close()

    thread = threading.Thread(target=send_blocked, daemon=True)
    try:
        thread.start()
        lock.wait_for_a_waiter()
        # A new phone for the other customer: a write (a transaction), not a read-only answer.
        answer = api.identify("free@x.org", "3001")
        # Still no answer for the locked customer (we hold its lock until release below).
        still_waiting = thread.is_alive() and "response" not in blocked
    finally:
        lock.release()
        thread.join(CLIENT_TIMEOUT_S)
    assert answer["primaryContactId"] == other and answer["phoneNumbers"] == ["3000", "3001"]
    assert still_waiting, "the other customer was answered only after the locked one gave up or got through"
    # The waiting request went through once the lock was released.
    assert blocked["response"].status_code == 200, blocked["response"].text
    assert "2001" in blocked["response"].json()["contact"]["phoneNumbers"]
