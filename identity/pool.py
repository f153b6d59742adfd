"""The app's database connections: each worker's pool, lent to one request at a time, and
`get_db()`, the one way a view or a command gets its `Database` (flaskr's db.py)."""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app, g, has_request_context

from identity.database import Database
from identity.errors import DatabaseUnavailable
from identity.sql import check_dialects_agree, load_queries, schema_statements

# How long a request waits for a free connection before it is answered 503:
# every connection busy that long means the database is the bottleneck.
POOL_WAIT_S = 5


class Admission:
    """At most `size` holders at once, the others served in order of arrival: a released slot
    goes to the longest waiter, never to a request that arrived later (a plain semaphore lets
    a newcomer take it while the woken waiter is still on its way, and a request can then
    wait behind any number of later ones: the tail of the latency)."""

    def __init__(self, size: int):
        self.free = size
        self.waiting: deque[threading.Event] = deque()
        self.lock = threading.Lock()

    def acquire(self, timeout: float) -> bool:
        """Take a slot; False after `timeout` seconds without one."""
        with self.lock:
            if self.free and not self.waiting:
                self.free -= 1
                return True
            turn = threading.Event()
            self.waiting.append(turn)
        if turn.wait(timeout):
            return True
        with self.lock:
            if turn in self.waiting:  # still queued: give up the place
                self.waiting.remove(turn)
                return False
        return True  # handed a slot just as the wait ended

    def release(self) -> None:
        """Give the slot to the longest waiter, or back to the pool."""
        with self.lock:
            if self.waiting:
                self.waiting.popleft().set()
            else:
                self.free += 1


class DatabasePool:
    """A worker's open connections, each lent to one request (thread or greenlet) at a time.
    Its size is also how many requests a worker runs at once: the others wait their turn in
    order of arrival (Admission), holding no connection and no lock.

    A connection outlives the request that used it, so its TCP and auth handshake is
    paid once, not per request nor per client connection (the gevent worker runs a
    greenlet per client connection), and a worker never holds more than `size`
    connections however many clients are connected. PyMySQL is not thread-safe:
    a connection is only ever used by the request that borrowed it.
    """

    def __init__(self, make: Callable[[], Database], size: int):
        self.make = make
        self.idle: list[Database] = []
        self.lock = threading.Lock()
        self.slots = Admission(size)

    def acquire(self) -> Database:
        """A free Database (its connection opens at its first statement);
        DatabaseUnavailable after POOL_WAIT_S without one."""
        if not self.slots.acquire(timeout=POOL_WAIT_S):
            raise DatabaseUnavailable("every database connection of this worker stayed busy")
        with self.lock:
            return self.idle.pop() if self.idle else self.make()

    def close(self) -> None:
        """Close every idle connection (those lent out are closed by their borrowers' errors)."""
        with self.lock:
            idle, self.idle = self.idle, []
        for db in idle:
            db.close()

    def release(self, db: Database) -> None:
        """Give a Database back (a broken connection was already dropped by Database)."""
        with self.lock:
            self.idle.append(db)
        self.slots.release()


@dataclass
class AppState:
    """What the app holds besides its config: the dialect's statements and schema, the
    worker's pool, each command thread's own Database, the blueprints that check their
    own sign-in instead of the API's bearer token, and the merge protection last read."""

    queries: dict[str, str]
    schema: list[str]
    pool: DatabasePool
    local: threading.local = field(default_factory=threading.local)
    own_sign_in: set[str] = field(default_factory=set)
    # (monotonic time read, Protection): identity/protection_in_force.py's cache of the list in force.
    protection: tuple[float, Any] | None = None


def app_state(app: Flask | None = None) -> AppState:
    """The AppState of `app` (default: the current app); set up by init_app."""
    state: AppState = (app or current_app).extensions["fluxkart"]
    return state


def init_app(app: Flask) -> None:
    """Give `app` its statements, schema and pool (settings already in app.config), and
    return each request's connection to the pool when the request ends."""
    check_dialects_agree()
    dialect = app.config["FLUXKART_DIALECT"]
    config, queries, schema = app.config, load_queries(dialect), schema_statements(dialect)
    # The pool's factory holds the config, not the app: the app can then be collected.
    pool = DatabasePool(lambda: Database(config, queries, schema), int(config["FLUXKART_DB_POOL_SIZE"]))
    app.extensions["fluxkart"] = AppState(queries, schema, pool)
    # Close the pooled connections when the app goes away (tests build one app per test).
    weakref.finalize(app, pool.close)
    app.teardown_request(release_db)


def get_db() -> Database:
    """The current request's Database, borrowed from the worker's pool until the request
    ends; outside a request (CLI commands), this thread's own, created on first use.
    Raises DatabaseUnavailable when every pooled connection stays busy (POOL_WAIT_S)."""
    state = app_state()
    if has_request_context():
        if "db" not in g:
            g.db = state.pool.acquire()
        db: Database = g.db
        return db
    if getattr(state.local, "db", None) is None:
        state.local.db = new_database()
    return state.local.db  # type: ignore[no-any-return]


def new_database(queries: dict[str, str] | None = None, **options: Any) -> Database:
    """A Database of the current app that nobody else uses (not connected yet): the app's
    statements plus `queries`, with Database's `options` (create_schema, serving, ...)."""
    state = app_state()
    return Database(current_app.config, {**state.queries, **(queries or {})}, state.schema, **options)


def release_db(_exc: BaseException | None = None) -> None:
    """Teardown of every request: return its connection to the pool."""
    db = g.pop("db", None)
    if db is not None:
        app_state().pool.release(db)
