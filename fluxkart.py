"""FluxKart Identity: links a shop's orders to one customer by email and phone.

Routes
    GET  /                 status
    GET  /health/live      liveness: the process answers
    GET  /health/ready     readiness: the database answers (503 when it does not)
    POST /identify         {"email", "phoneNumber"} -> the consolidated customer
    GET  /customers        read-only lookup by ?email= and/or ?phoneNumber=
    GET  /contacts         contact rows, ?limit= ?after= ?email= ?phoneNumber=
    GET  /contacts/<id>    one contact row
    GET  /metrics          Prometheus metrics;  GET /openapi.json  this API's description

Commands (flask --app fluxkart <command>)
    init-db                create the schema if missing

Environment (or a .env file)
    MYSQL_HOST, MYSQL_PORT, MYSQL_USER, MYSQL_PASSWORD, MYSQL_DATABASE
                           any of them set selects MySQL/MariaDB (127.0.0.1:3306,
                           root, database "Fluxkart" for the ones not given);
                           none set selects SQLite
    FLUXKART_SQLITE_PATH   the embedded database file (default fluxkart.db)
    FLUXKART_API_TOKEN     when set, every route but / and /health/* requires
                           "Authorization: Bearer <token>"
    FLUXKART_PHONE_REGION  e.g. IN: store numbers valid there in E.164 form
    FLUXKART_WSREP_SYNC_WAIT  causal reads on a Galera node (default 1; 0 only
                           to measure what they cost)

The contract is docs/api.md (with openapi.json); the design is in README.md.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import random
import re
import sqlite3
import sys
import threading
import time
import unicodedata
import uuid
import weakref
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
import phonenumbers
import prometheus_client
import prometheus_client.multiprocess as prometheus_multiprocess
import pymysql
import pymysql.cursors
from dotenv import load_dotenv
from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    has_request_context,
    jsonify,
    request,
    url_for,
)
from flask.cli import with_appcontext
from werkzeug.exceptions import HTTPException, MethodNotAllowed

log = logging.getLogger("fluxkart")
access_log = logging.getLogger("fluxkart.access")

Row = dict[str, Any]
T = TypeVar("T")

# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------

MYSQL_SETTINGS = ("MYSQL_HOST", "MYSQL_PORT", "MYSQL_USER", "MYSQL_PASSWORD", "MYSQL_DATABASE")
SETTINGS = (
    *MYSQL_SETTINGS,
    "FLUXKART_SQLITE_PATH",
    "FLUXKART_API_TOKEN",
    "FLUXKART_PHONE_REGION",
    "FLUXKART_WSREP_SYNC_WAIT",
    "FLUXKART_DB_POOL_SIZE",
)

# Every default in one place. An empty value (in the environment, .env or the
# overrides) means "not set": the default applies.
DEFAULTS: dict[str, Any] = {
    "MYSQL_HOST": "127.0.0.1",
    "MYSQL_PORT": "3306",
    "MYSQL_USER": "root",
    "MYSQL_PASSWORD": "",
    "MYSQL_DATABASE": "Fluxkart",
    "FLUXKART_SQLITE_PATH": "fluxkart.db",
    "FLUXKART_API_TOKEN": "",
    "FLUXKART_PHONE_REGION": "",
    # Galera's causal reads: every read waits until this node has applied
    # every write the cluster committed before it (SPEC, "Concurrency").
    "FLUXKART_WSREP_SYNC_WAIT": "1",
    # A request body is two short strings; anything near this limit is abuse.
    "MAX_CONTENT_LENGTH": 64 * 1024,
    # Database connections per worker process; requests in flight beyond this
    # wait for one (docs/performance.md). Far below MariaDB's default
    # max_connections (151) for a few workers.
    "FLUXKART_DB_POOL_SIZE": "10",
}


class ConfigurationError(Exception):
    """A setting the service cannot start with; the message names the setting and the fix."""


def load_settings(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults, then the environment (and .env), then the caller's overrides.

    Returns the settings with FLUXKART_DIALECT ("mysql" when any MYSQL_* is
    given, else "sqlite") and the phone region checked and upper-cased.
    Raises ConfigurationError for a region the phonenumbers library does not know.
    """
    load_dotenv()  # never overrides a variable the environment already sets
    chosen = {name: os.environ[name] for name in SETTINGS if name in os.environ}
    chosen.update(overrides or {})
    settings = dict(DEFAULTS)
    settings.update({name: value for name, value in chosen.items() if value != ""})
    settings["FLUXKART_DIALECT"] = "mysql" if any(chosen.get(name) for name in MYSQL_SETTINGS) else "sqlite"
    settings["FLUXKART_PHONE_REGION"] = check_region(settings["FLUXKART_PHONE_REGION"])
    return settings


def check_region(region: str) -> str:
    """The region code upper-cased ("in" -> "IN"), "" for none; ConfigurationError when unknown (SPEC)."""
    code = region.strip().upper()
    if code and code not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigurationError(
            f"FLUXKART_PHONE_REGION={region!r} is not a region code the phonenumbers library knows; "
            "use a two-letter code such as IN, US or GB, or leave it unset"
        )
    return code


# --------------------------------------------------------------------------
# SQL loading: named statements from sql/*.sql
# --------------------------------------------------------------------------

SQL_DIR = Path(__file__).with_name("sql")
NAME_LINE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
PYMYSQL_PARAM = re.compile(r"%\((\w+)\)s")


def parse_queries(text: str) -> dict[str, str]:
    """Split a file of `-- name: x` blocks into {name: statement}."""
    parts = NAME_LINE.split(text)
    queries = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        queries[name] = "\n".join(lines).strip()
    return queries


def load_queries(dialect: str) -> dict[str, str]:
    """Portable statements plus the dialect's own, in the dialect's parameter style."""
    queries = parse_queries((SQL_DIR / "contacts.sql").read_text())
    queries.update(parse_queries((SQL_DIR / dialect / "queries.sql").read_text()))
    if dialect == "sqlite":
        # sqlite3 binds :name; it has no row locks (BEGIN IMMEDIATE is the lock).
        queries = {
            name: PYMYSQL_PARAM.sub(r":\1", sql).replace("\nFOR UPDATE", "") for name, sql in queries.items()
        }
    return queries


def check_dialects_agree() -> None:
    """Fail fast when one dialect lacks a statement the other has."""
    mysql = set(parse_queries((SQL_DIR / "mysql" / "queries.sql").read_text()))
    sqlite = set(parse_queries((SQL_DIR / "sqlite" / "queries.sql").read_text()))
    if mysql != sqlite:
        raise RuntimeError(f"sql/mysql and sql/sqlite name different statements: {mysql ^ sqlite}")


def schema_statements(dialect: str) -> list[str]:
    """The dialect's schema file as separate statements, comments removed."""
    text = (SQL_DIR / dialect / "schema.sql").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [statement.strip() for statement in code.split(";") if statement.strip()]


# --------------------------------------------------------------------------
# Observability: metrics, JSON logs, request ids (used by every section below)
# --------------------------------------------------------------------------

# Under gunicorn, gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at a shared
# folder, so every worker's counts reach /metrics whichever worker serves it.
HTTP_REQUESTS = prometheus_client.Counter(
    "fluxkart_http_requests", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_LATENCY = prometheus_client.Histogram(
    "fluxkart_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
IDENTIFY_OUTCOMES = prometheus_client.Counter(
    "fluxkart_identify_outcomes", "identify results: created, linked, merged, unchanged", ["outcome"]
)
TRANSACTION_RETRIES = prometheus_client.Counter(
    "fluxkart_transaction_retries",
    "transactions started over, by reason and unit of work",
    ["reason", "unit"],
)
REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the current request's id when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if has_request_context() and "request_id" in g:
            entry["request_id"] = g.request_id
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging() -> None:
    """Send the service's logs to stdout as JSON lines (once per process)."""
    logger = logging.getLogger("fluxkart")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
        logger.propagate = False


def start_request() -> None:
    """Take the caller's X-Request-ID when it is sane, else make one."""
    given = request.headers.get("X-Request-ID", "")
    g.request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    g.started = time.perf_counter()


def finish_request(response: Response) -> Response:
    """Echo the request id, count the request, and write its access log line.

    The query string and body are never logged, nor the path of a request that
    matched no route: they can carry customers' emails and phone numbers.
    """
    elapsed = time.perf_counter() - g.get("started", time.perf_counter())
    route = request.url_rule.rule if request.url_rule else "unmatched"
    response.headers["X-Request-ID"] = g.get("request_id", "")
    HTTP_REQUESTS.labels(request.method, route, response.status_code).inc()
    HTTP_LATENCY.labels(request.method, route).observe(elapsed)
    fields = {
        "method": request.method,
        "route": route,
        "path": request.path if path_is_known() else None,
        "status": response.status_code,
        "duration_ms": round(elapsed * 1000, 2),
    }
    if "identify_outcome" in g:
        IDENTIFY_OUTCOMES.labels(g.identify_outcome).inc()
        fields["outcome"] = g.identify_outcome
    if access_log.isEnabledFor(logging.INFO):
        # makeRecord + handle: Logger.info would also walk the stack for a
        # caller we never print, on every request.
        access_log.handle(
            access_log.makeRecord(
                access_log.name, logging.INFO, "", 0, "request", (), None, extra={"fields": fields}
            )
        )
    return response


def path_is_known() -> bool:
    """True when the path is one of our routes (maybe with another method), so it holds no identifier."""
    return request.url_rule is not None or isinstance(request.routing_exception, MethodNotAllowed)


def metrics_page() -> Response:
    """Prometheus text format, summed over every gunicorn worker when multiprocess."""
    registry: Any = prometheus_client.REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = prometheus_client.CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return Response(
        prometheus_client.generate_latest(registry), content_type=prometheus_client.CONTENT_TYPE_LATEST
    )


# --------------------------------------------------------------------------
# Database: one connection per thread, the same face for both drivers
# --------------------------------------------------------------------------


class DatabaseUnavailable(Exception):
    """The database cannot be reached or stayed busy through every retry (HTTP 503)."""


class DatabaseMisconfigured(Exception):
    """A database setting or state the service cannot work with; retrying will not help.

    The message names the setting and the fix; it is logged, shown by readiness,
    and the client is told it is a server configuration problem (HTTP 500).
    """


class RetryTransaction(Exception):
    """The unit of work must start over: a lock conflict or a concurrent merge."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason  # a metric label: a few fixed words, no data


# MySQL errors after which the whole transaction is tried again: deadlock (the
# server rolled it back, or a Galera certification failure), lock-wait timeout
# (only the statement was rolled back; we roll back the rest), and a Galera
# node that is not ready yet.
MYSQL_RETRY_CODES = {1205: "lock_wait_timeout", 1213: "deadlock", 1047: "node_not_ready"}
# Client-side errors that mean an open connection broke (server restarted,
# network): worth one fresh connection. Failing to connect at all (2003) is not
# retried: the server is down, and the client gets a 503 at once.
MYSQL_CONNECTION_CODES = {2006, 2013, 2014, 2055}
# Errors no retry can fix, with what the operator should do.
MYSQL_SETTING_ERRORS = {
    1665: "the server's binlog_format is STATEMENT, which refuses writes at READ COMMITTED: "
    "set binlog_format=ROW (or MIXED) on the server, or grant the service's user BINLOG ADMIN "
    "so it can set ROW for its own sessions",
    1142: "the database user lacks a privilege the service needs (SELECT, INSERT, UPDATE, DELETE "
    "on the database; CREATE and ALTER for init-db and migrate)",
    1044: "the database user has no access to the database: grant it (see README, Production)",
    1045: "the database refused the user name or password (MYSQL_USER, MYSQL_PASSWORD)",
}
# Refusals of CREATE to a user without the privilege: table, database access denied.
MYSQL_NO_CREATE_CODES = {1142, 1044}
# Statements that wait on a lock give up after this long; the transaction is then retried.
LOCK_WAIT_TIMEOUT_S = 5
# A query that has not answered in this long means the server is in trouble.
MYSQL_READ_TIMEOUT_S = 10


def adapt_datetime(value: datetime) -> str:
    """Store timestamps as fixed-width UTC text, which SQLite sorts correctly."""
    return value.isoformat(sep=" ", timespec="microseconds")


def convert_datetime(value: bytes) -> datetime:
    """Parse a DATETIME column back into a naive UTC datetime."""
    return datetime.fromisoformat(value.decode())


sqlite3.register_adapter(datetime, adapt_datetime)
sqlite3.register_converter("DATETIME", convert_datetime)


def connect_mysql(settings: dict[str, Any]) -> Any:
    """A PyMySQL connection set up for the service: utf8mb4, autocommit, UTC,
    READ COMMITTED, a short lock wait, causal reads on Galera. Creates the
    database when it is missing."""
    params: dict[str, Any] = dict(
        host=settings["MYSQL_HOST"],
        port=int(settings["MYSQL_PORT"]),
        user=settings["MYSQL_USER"],
        password=settings["MYSQL_PASSWORD"],
        charset="utf8mb4",
        autocommit=True,
        connect_timeout=5,
        read_timeout=MYSQL_READ_TIMEOUT_S,
        write_timeout=MYSQL_READ_TIMEOUT_S,
        cursorclass=pymysql.cursors.DictCursor,
    )
    database = settings["MYSQL_DATABASE"]
    try:
        conn = pymysql.connect(database=database, **params)
    except pymysql.err.OperationalError as exc:
        if exc.args[0] != 1049:  # unknown database: create it below
            raise
        conn = pymysql.connect(**params)
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{database}`")  # noqa: S608 (a setting, not input)
        conn.select_db(database)
    with conn.cursor() as cur:
        # Our own isolation level: the lock protocol relies on READ COMMITTED
        # reads seeing every committed row, whatever the server default is.
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        cur.execute("SET time_zone = '+00:00', innodb_lock_wait_timeout = %s", (LOCK_WAIT_TIMEOUT_S,))
        cur.execute("SELECT @@log_bin AS log_bin, @@binlog_format AS binlog_format")
        server = cur.fetchone()
        if server["log_bin"] and server["binlog_format"] == "STATEMENT":
            # READ COMMITTED writes cannot be logged as statements; ROW can be set per
            # session by a user with BINLOG ADMIN. Without it, the 1665 that follows
            # on the first write is reported as a setting to fix.
            try:
                cur.execute("SET SESSION binlog_format = 'ROW'")
            except pymysql.err.MySQLError:
                pass
        cur.execute("SHOW VARIABLES LIKE 'wsrep_on'")
        wsrep = cur.fetchone()
        if wsrep and wsrep["Value"] == "ON":
            cur.execute("SET SESSION wsrep_sync_wait = %s", (int(settings["FLUXKART_WSREP_SYNC_WAIT"]),))
    return conn


def connect_sqlite(settings: dict[str, Any]) -> sqlite3.Connection:
    """An sqlite3 connection: we issue BEGIN/COMMIT ourselves, WAL, rows as dicts."""
    conn = sqlite3.connect(
        settings["FLUXKART_SQLITE_PATH"],
        timeout=LOCK_WAIT_TIMEOUT_S,  # how long BEGIN IMMEDIATE waits for another writer
        isolation_level=None,
        detect_types=sqlite3.PARSE_DECLTYPES,
        # The pool lends a connection to one thread at a time, not always the one that opened it.
        check_same_thread=False,
    )
    conn.row_factory = lambda cursor, row: {
        col[0]: value for col, value in zip(cursor.description, row, strict=True)
    }
    conn.execute("PRAGMA journal_mode = WAL")  # readers never wait for the writer
    conn.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; safe with WAL
    return conn


# The only difference between the drivers the rest of the module sees: how to
# connect. How to begin a write transaction is a named statement of each dialect.
CONNECT = {"mysql": connect_mysql, "sqlite": connect_sqlite}


class Database:
    """One thread's connection to MySQL or SQLite, opened lazily, dropped on failure.

    Every statement is a named one from sql/ (`queries`), run with a dict of
    parameters. Driver errors come out as RetryTransaction (start the unit of
    work over), DatabaseUnavailable (503) or DatabaseMisconfigured.
    """

    def __init__(self, settings: dict[str, Any], queries: dict[str, str], schema: list[str]):
        self.settings = settings
        self.queries = queries
        self.schema = schema
        self.dialect: str = settings["FLUXKART_DIALECT"]
        self.conn: Any = None
        self.in_transaction = False

    def connect(self) -> Any:
        """The open connection, opening it (and creating the schema if missing) when there is none."""
        if self.conn is None:
            try:
                self.conn = CONNECT[self.dialect](self.settings)
                self.ensure_schema()
            except Exception as exc:
                raise self.translate(exc) from exc
        return self.conn

    def ensure_schema(self) -> None:
        """Create the tables if missing (idempotent, so safe on every new connection).

        A MySQL user without CREATE is refused even when the tables exist: then
        an operator ran init-db with more rights, and we go on without it.
        """
        cur = self.conn.cursor()
        for statement in self.schema:
            try:
                cur.execute(statement)
            except pymysql.err.MySQLError as exc:
                if exc.args[0] not in MYSQL_NO_CREATE_CODES:
                    raise
                log.warning("no CREATE privilege; expecting the schema to exist (flask init-db)")
                return

    def close(self) -> None:
        """Drop the connection; the next call opens a new one."""
        conn, self.conn = self.conn, None
        self.in_transaction = False
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken: nothing to release
                pass

    def execute(self, name: str, params: dict[str, Any]) -> Any:
        """Run a named statement with its parameters; returns the driver's cursor."""
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.execute(self.queries[name], params)
            return cur
        except Exception as exc:
            raise self.translate(exc) from exc

    def all(self, name: str, **params: Any) -> list[Row]:
        """Every row of a named query, as dicts."""
        return list(self.execute(name, params).fetchall())

    def one(self, name: str, **params: Any) -> Row | None:
        """The first row of a named query, or None."""
        row: Row | None = self.execute(name, params).fetchone()
        return row

    def run(self, name: str, **params: Any) -> int:
        """Run a named write; returns the new row's id for an INSERT."""
        return int(self.execute(name, params).lastrowid or 0)

    def begin(self) -> None:
        """Start a write transaction (`begin_write`: SQLite takes its write lock now, not at first write)."""
        self.execute("begin_write", {})
        self.in_transaction = True

    def commit(self) -> None:
        """Commit the open transaction; errors (a Galera conflict can come here) are translated."""
        self.execute("commit", {})
        self.in_transaction = False

    def rollback(self) -> None:
        """Roll back the open transaction, if any; a broken connection is simply dropped."""
        if self.conn is None or not self.in_transaction:
            return
        self.in_transaction = False
        try:
            self.conn.cursor().execute(self.queries["rollback"])
        except Exception:
            self.close()

    def translate(self, exc: Exception) -> Exception:
        """Map a driver error to RetryTransaction, DatabaseUnavailable, DatabaseMisconfigured, or itself."""
        if isinstance(exc, pymysql.err.MySQLError):
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
            if code in MYSQL_RETRY_CODES:
                return RetryTransaction(MYSQL_RETRY_CODES[code])
            if code in MYSQL_CONNECTION_CODES or isinstance(exc, pymysql.err.InterfaceError):
                self.close()
                return RetryTransaction("connection_lost")
            self.close()
            if code in MYSQL_SETTING_ERRORS:
                return DatabaseMisconfigured(f"MySQL error {code}: {MYSQL_SETTING_ERRORS[code]}")
            if isinstance(exc, pymysql.err.OperationalError):
                return DatabaseUnavailable(f"MySQL error {code}")
        if isinstance(exc, sqlite3.OperationalError):
            if "locked" in str(exc) or "busy" in str(exc):
                return RetryTransaction("database_locked")
            self.close()
            return DatabaseUnavailable("SQLite error")
        if isinstance(exc, OSError):
            self.close()
            return DatabaseUnavailable(type(exc).__name__)
        return exc


def get_db() -> Database:
    """The current request's Database, borrowed from the worker's pool until the request
    ends; outside a request (CLI commands), this thread's own, created on first use.
    Raises DatabaseUnavailable when every pooled connection stays busy (POOL_WAIT_S)."""
    ext = current_app.extensions["fluxkart"]
    if has_request_context():
        if "db" not in g:
            g.db = ext["pool"].acquire()
        db: Database = g.db
        return db
    state: threading.local = ext["local"]
    if getattr(state, "db", None) is None:
        state.db = Database(current_app.config, ext["queries"], ext["schema"])
    return state.db  # type: ignore[no-any-return]


# --------------------------------------------------------------------------
# Connection pool: a worker's connections, lent to one request at a time
# --------------------------------------------------------------------------

# How long a request waits for a free connection before it is answered 503:
# every connection busy that long means the database is the bottleneck.
POOL_WAIT_S = 5


class DatabasePool:
    """A worker's open connections, each lent to one request (thread or greenlet) at a time.

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
        self.slots = threading.BoundedSemaphore(size)

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


def release_db(_exc: BaseException | None = None) -> None:
    """Teardown of every request: return its connection to the pool."""
    db = g.pop("db", None)
    if db is not None:
        current_app.extensions["fluxkart"]["pool"].release(db)


# --------------------------------------------------------------------------
# Transactions: the whole unit of work is retried, never one statement
# --------------------------------------------------------------------------

# How often a unit of work is tried before the client gets a 503 ...
MAX_ATTEMPTS = 12
# ... and for how long at most, whatever the attempt count: a client (and a
# load balancer) would rather have a prompt 503 than a request that hangs.
RETRY_BUDGET_S = 10


def in_transaction(db: Database, work: Callable[[Database], T], unit: str) -> T:
    """Run work(db) in one transaction, retrying the whole of it on lock conflicts.

    `unit` names the unit of work (identify, repair, ...) in the retry log line
    and metric. A deadlock has already rolled everything back and a lock-wait
    timeout rolled back one statement, so we roll back the rest and start over
    from the first read. `work` must have no side effects outside the database.
    Raises DatabaseUnavailable when MAX_ATTEMPTS or RETRY_BUDGET_S run out.
    """
    deadline = time.monotonic() + RETRY_BUDGET_S
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            db.begin()
            result = work(db)
            db.commit()
            return result
        except RetryTransaction as exc:
            db.rollback()
            if attempt == MAX_ATTEMPTS or time.monotonic() > deadline:
                raise DatabaseUnavailable(f"gave up after {attempt} attempts: {exc}") from exc
            log.warning("retrying %s transaction (attempt %d): %s", unit, attempt, exc.reason)
            TRANSACTION_RETRIES.labels(exc.reason, unit).inc()
            # Jittered exponential backoff, capped: lets the winner commit first.
            time.sleep(random.uniform(0, min(0.2, 0.002 * 2**attempt)))
        except BaseException:
            db.rollback()
            raise
    raise AssertionError("unreachable")


def reconnect_once(work: Callable[[Database], T]) -> T:
    """Run work against this thread's database, reconnecting once if the connection was stale.

    A kept connection the server has closed (restart, idle timeout) fails on
    first use; one fresh connection is tried before answering 503.
    """
    db = get_db()
    try:
        return work(db)
    except RetryTransaction:
        db.close()
        try:
            return work(db)
        except RetryTransaction as exc:
            raise DatabaseUnavailable(str(exc)) from exc


# --------------------------------------------------------------------------
# Domain: normalization, identify, answers
# --------------------------------------------------------------------------


class ApiError(Exception):
    """An error the client caused or can act on, answered as JSON."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


PHONE_PUNCTUATION = frozenset("-.()")
MAX_EMAIL_LENGTH = 254
MAX_PHONE_DIGITS = 20
# Ids above this cannot be stored (BIGINT's range); such a lookup is a plain 404.
MAX_CONTACT_ID = 2**63 - 1


# Exactly Unicode's categories Cc (controls) and Cs (surrogates): one regex scan
# instead of a unicodedata lookup per character (on identify's hot path).
UNCLEAN_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def is_clean_text(value: str) -> bool:
    """No control characters and nothing the database could not store (lone surrogates)."""
    return UNCLEAN_TEXT.search(value) is None


def normalize_email(value: Any, field: str = "email") -> str | None:
    """The canonical email (trimmed, NFC, lower-cased), None when absent; 400 when invalid."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, "invalid_email", f"{field} must be a string or null")
    email = value.strip()
    if not email:
        return None
    # NFC again after lower-casing: a few Greek capitals lower to a decomposed form.
    email = unicodedata.normalize("NFC", unicodedata.normalize("NFC", email).lower())
    local, at, domain = email.partition("@")
    if (
        not at
        or not local
        or not domain
        or "@" in domain
        or any(ch.isspace() for ch in email)
        or not is_clean_text(email)
    ):
        raise ApiError(400, "invalid_email", f"{field} must look like name@domain, without spaces")
    if len(email) > MAX_EMAIL_LENGTH:
        raise ApiError(400, "invalid_email", f"{field} must be at most {MAX_EMAIL_LENGTH} characters")
    return email


def normalize_phone(value: Any, region: str = "", field: str = "phoneNumber") -> str | None:
    """The canonical phone number, None when absent; 400 when invalid.

    Digits with an optional leading +, formatting (spaces - . ( )) dropped; in
    E.164 form when a region is configured and the number is valid there
    (SPEC, "Normalization of identifiers"). Raises ApiError(400) when invalid.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ApiError(400, "invalid_phone_number", f"{field} must be a string, a whole number or null")
    if isinstance(value, int):
        if value < 0:
            raise ApiError(400, "invalid_phone_number", f"{field} must not be negative")
        value = str(value)
    phone: str = value.strip()
    if not phone:
        return None
    # Formatting: any Unicode space separator (U+00A0 from spreadsheets, U+202F ...) and - . ( ).
    phone = "".join(ch for ch in phone if ch not in PHONE_PUNCTUATION and unicodedata.category(ch) != "Zs")
    digits = phone[1:] if phone.startswith("+") else phone
    if not digits or not all("0" <= ch <= "9" for ch in digits):
        raise ApiError(
            400,
            "invalid_phone_number",
            f"{field} may hold only digits, a leading +, spaces, '-', '.', '(' and ')'",
        )
    if len(digits) > MAX_PHONE_DIGITS:
        raise ApiError(400, "invalid_phone_number", f"{field} must have 1 to {MAX_PHONE_DIGITS} digits")
    if region:
        try:
            parsed = phonenumbers.parse(phone, region)
        except phonenumbers.NumberParseException:
            return phone
        if phonenumbers.is_valid_number(parsed):
            return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))
    return phone


def utcnow() -> datetime:
    """Now in UTC, naive, microsecond precision: what DATETIME(6) stores."""
    return datetime.now(UTC).replace(tzinfo=None)


def oldest_first(rows: Iterable[Row]) -> list[Row]:
    """Rows by (createdAt, id): "oldest" never means id alone."""
    return sorted(rows, key=lambda row: (row["createdAt"], row["id"]))


def primaries_of(rows: Iterable[Row]) -> list[Row]:
    """The rows marked primary, in the given order."""
    return [row for row in rows if row["linkPrecedence"] == "primary"]


def is_settled(rows: list[Row], email: str | None, phone: str | None) -> bool:
    """True when the request would change nothing: one customer that has every identifier.

    `rows` is one customer's rows (select_customer). Each identifier belongs to
    at most one customer, so if this one has them all, no other customer does.
    """
    return (
        len(primaries_of(rows)) == 1
        and (email is None or any(row["email"] == email for row in rows))
        and (phone is None or any(row["phoneNumber"] == phone for row in rows))
    )


def customer_answer(rows: list[Row]) -> dict[str, Any]:
    """The identify answer for one customer's rows (any order)."""
    rows = oldest_first(rows)
    primary = primaries_of(rows)[0]
    others = [row for row in rows if row is not primary]
    ordered = [primary, *others]
    return {
        "contact": {
            "primaryContactId": primary["id"],
            # The original Bitespeed specification's spelling, kept for its clients.
            "primaryContatctId": primary["id"],
            "emails": list(dict.fromkeys(r["email"] for r in ordered if r["email"] is not None)),
            "phoneNumbers": list(
                dict.fromkeys(r["phoneNumber"] for r in ordered if r["phoneNumber"] is not None)
            ),
            "secondaryContactIds": [row["id"] for row in others],
        }
    }


def identify(db: Database, email: str | None, phone: str | None) -> tuple[dict[str, Any], str]:
    """Link this order's identifiers to their customer; returns (answer, outcome).

    A repeat customer whose identifiers are all known is answered from one
    consistent read, with no transaction and no lock. Anything else runs the
    locked merge in `apply_identify`.
    """
    rows = db.all("select_customer", email=email, phone=phone)
    if is_settled(rows, email, phone):
        return customer_answer(rows), "unchanged"
    return in_transaction(db, lambda db: apply_identify(db, email, phone), "identify")


def apply_identify(db: Database, email: str | None, phone: str | None) -> tuple[dict[str, Any], str]:
    """The SPEC's identify rules, inside one transaction.

    Lock protocol (README, "Concurrency"): 1. write the request's identifier
    rows, email first; 2. lock the primaries of the customers they belong
    to and start over if one was demoted meanwhile; 3. read those customers,
    whose rows cannot change while we hold their primaries; 4. write.
    """
    db.run("touch_identifiers", email=email, phone=phone)

    primaries = db.all("lock_primaries", email=email, phone=phone)
    if any(row["linkPrecedence"] != "primary" or row["deletedAt"] is not None for row in primaries):
        raise RetryTransaction("customer_moved")  # merged into another while we waited

    now = utcnow()
    if not primaries:
        return customer_answer([insert_contact(db, email, phone, None, now)]), "created"

    rows = [row for p in primaries for row in db.all("select_customer_by_primary", primary_id=p["id"])]
    survivor, *demoted = oldest_first(primaries)
    for primary in demoted:
        db.run("touch_customer_identifiers", primary_id=primary["id"])
        db.run("relink_customer", primary_id=survivor["id"], demoted_id=primary["id"], updated_at=now)
    for row in rows:
        if row["id"] != survivor["id"]:
            row["linkPrecedence"], row["linkedId"] = "secondary", survivor["id"]
    outcome = "merged" if demoted else "unchanged"

    if (email is not None and all(row["email"] != email for row in rows)) or (
        phone is not None and all(row["phoneNumber"] != phone for row in rows)
    ):
        # Never older than its primary, even if this host's clock is behind the one that made it.
        created_at = max(now, survivor["createdAt"] + timedelta(microseconds=1))
        rows.append(insert_contact(db, email, phone, survivor["id"], created_at))
        outcome = "merged" if demoted else "linked"
    return customer_answer(rows), outcome


def insert_contact(
    db: Database, email: str | None, phone: str | None, linked_id: int | None, created_at: datetime
) -> Row:
    """Insert a primary (no linked_id) or a secondary row; returns it as select_customer would."""
    precedence = "primary" if linked_id is None else "secondary"
    new_id = db.run(
        "insert_contact",
        email=email,
        phone=phone,
        linked_id=linked_id,
        link_precedence=precedence,
        created_at=created_at,
    )
    return {
        "id": new_id,
        "email": email,
        "phoneNumber": phone,
        "linkedId": linked_id,
        "linkPrecedence": precedence,
        "createdAt": created_at,
    }


def lookup_customer(db: Database, email: str | None, phone: str | None) -> list[Row]:
    """The live rows of the customer owning this email and/or phone, writing nothing (SPEC, "Reads").

    Raises ApiError 404 when no customer has either identifier, 409 when the
    two belong to different customers (identify would merge them; a read-only
    lookup must not pretend it did) or when the stored rows have no primary.
    """
    rows = db.all("select_customers", email=email, phone=phone)
    if not rows:
        raise ApiError(404, "not_found", "no customer has this email or phone number")
    primaries = primaries_of(rows)
    if not primaries:
        # Only data written behind the service's back (a secondary whose primary
        # is missing or itself a secondary) reads like this.
        raise ApiError(
            409,
            "inconsistent_customer",
            "this customer's stored rows have no primary; they were not written by this service",
        )
    if len(primaries) > 1:
        ids = ", ".join(str(row["id"]) for row in oldest_first(primaries))
        raise ApiError(
            409,
            "several_customers",
            f"the email and phone number belong to different customers ({ids}); look them up one at a time",
        )
    return rows


def list_contact_rows(
    db: Database, after: int, limit: int, email: str | None, phone: str | None
) -> list[Row]:
    """Up to `limit` live contact rows with id > after, by id; a None identifier filters nothing."""
    return db.all("select_contacts", after=after, limit=limit, email=email, phone=phone)


def contact_by_id(db: Database, contact_id: int) -> Row | None:
    """The live contact row with this id, or None (ids beyond the column's range included)."""
    if contact_id > MAX_CONTACT_ID:
        return None
    return db.one("select_contact_by_id", id=contact_id)


def check_ready(db: Database) -> None:
    """Raise unless the database answers a query (readiness, SPEC "Reads")."""
    db.one("select_one")


def contact_to_json(row: Row) -> dict[str, Any]:
    """A Contact row as JSON: all columns, timestamps ISO 8601 UTC."""

    def stamp(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat(timespec="microseconds") + "Z"

    return {
        "id": row["id"],
        "phoneNumber": row["phoneNumber"],
        "email": row["email"],
        "linkedId": row["linkedId"],
        "linkPrecedence": row["linkPrecedence"],
        "createdAt": stamp(row["createdAt"]),
        "updatedAt": stamp(row["updatedAt"]),
        "deletedAt": stamp(row["deletedAt"]),
    }


# --------------------------------------------------------------------------
# Errors: one JSON shape for every failure
# --------------------------------------------------------------------------

HTTP_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """The SPEC's error body `{"error": {"code", "message"}}` with this status and headers."""
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.code, exc.message, exc.headers)


def http_error(exc: HTTPException) -> Response:
    """werkzeug's status and headers (Allow on 405), with our JSON body."""
    response = exc.get_response()
    status = exc.code or 500
    message = exc.description or exc.name
    if status == 413:
        message = f"request body is larger than {current_app.config['MAX_CONTENT_LENGTH']} bytes"
    body = error_response(status, HTTP_ERROR_CODES.get(status, "http_error"), message)
    for name, value in response.headers.items():
        if name.lower() not in ("content-type", "content-length"):
            body.headers[name] = value
    return body


def database_unavailable(exc: DatabaseUnavailable) -> Response:
    log.error("database unavailable: %s", exc)
    message = "the database is unavailable or busy; retry shortly"
    return error_response(503, "database_unavailable", message, {"Retry-After": "1"})


def database_misconfigured(exc: DatabaseMisconfigured) -> Response:
    """Not a 503: retrying cannot help until an operator changes a setting (SPEC, "Errors")."""
    log.error("database misconfigured: %s", exc)
    return error_response(
        500,
        "server_misconfigured",
        "the service's database is misconfigured; the operator must fix a setting (see /health/ready)",
    )


def unexpected(exc: Exception) -> Response:
    log.exception("unhandled error")
    return error_response(500, "internal_error", "internal error; it has been logged")


def register_error_handlers(app: Flask) -> None:
    """One app-wide handler per kind of failure."""
    app.register_error_handler(ApiError, api_error)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(DatabaseUnavailable, database_unavailable)
    app.register_error_handler(DatabaseMisconfigured, database_misconfigured)
    app.register_error_handler(Exception, unexpected)


# --------------------------------------------------------------------------
# Routes: parse, call the domain, answer JSON
# --------------------------------------------------------------------------

api = Blueprint("api", __name__)

PUBLIC_ENDPOINTS = {"api.status", "api.live", "api.ready"}
OPENAPI_PATH = Path(__file__).with_name("openapi.json")
MAX_PAGE = 1000
DEFAULT_PAGE = 100


def require_token() -> None:
    """401 unless the bearer token is sent, when FLUXKART_API_TOKEN is set (SPEC, "Access")."""
    token: str = current_app.config["FLUXKART_API_TOKEN"]
    if not token or request.endpoint in PUBLIC_ENDPOINTS:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(
            401,
            "unauthorized",
            "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
            {"WWW-Authenticate": 'Bearer realm="fluxkart"'},
        )


def json_body() -> dict[str, Any]:
    """The request body as a JSON object, whatever the Content-Type says; 400 otherwise."""
    # Read to the end: a chunked body (no Content-Length) over MAX_CONTENT_LENGTH
    # is refused (413) only when we try to read past the limit, not before.
    chunks = []
    while chunk := request.stream.read(16384):
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", "request body must be valid UTF-8 JSON") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "request body must be a JSON object")
    return body


def query_identifiers() -> tuple[str | None, str | None]:
    """?email= and ?phoneNumber=, normalized like identify's input."""
    region = current_app.config["FLUXKART_PHONE_REGION"]
    email = normalize_email(request.args.get("email"))
    phone = normalize_phone(request.args.get("phoneNumber"), region)
    return email, phone


def query_int(name: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter within [low, high]; 400 otherwise."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise ApiError(400, "invalid_parameter", f"{name} must be a whole number from {low} to {high}")
    return int(raw)


@api.get("/")
def status() -> Response:
    """Who is answering, and where to start."""
    return jsonify(status="ok", message="FluxKart Identity is running: POST /identify")


@api.get("/health/live")
def live() -> Response:
    """Liveness: the process answers. Never touches the database."""
    return jsonify(status="ok")


@api.get("/health/ready")
def ready() -> Response:
    """Readiness: 200 when the database answers and its schema is usable; else 503 with the reason."""
    db = get_db()
    try:
        check_ready(db)
    except (RetryTransaction, DatabaseUnavailable) as exc:
        db.close()
        raise DatabaseUnavailable(str(exc)) from exc
    except DatabaseMisconfigured as exc:
        log.error("not ready: %s", exc)
        return error_response(503, "server_misconfigured", str(exc), {"Retry-After": "10"})
    return jsonify(status="ok", database=db.dialect)


@api.post("/identify")
def identify_contact() -> Response:
    """Link an order's email and/or phone to its customer and answer the customer (SPEC, "POST /identify")."""
    body = json_body()
    email = normalize_email(body.get("email"))
    phone = normalize_phone(body.get("phoneNumber"), current_app.config["FLUXKART_PHONE_REGION"])
    if email is None and phone is None:
        raise ApiError(400, "missing_identifier", "send an email, a phoneNumber, or both")
    answer, g.identify_outcome = reconnect_once(lambda db: identify(db, email, phone))
    return jsonify(answer)


@api.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics: requests and latency by route and status, identify outcomes, retries."""
    return metrics_page()


@api.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3 description of this API."""
    return Response(OPENAPI_PATH.read_bytes(), content_type="application/json")


@api.get("/customers")
def find_customer() -> Response:
    """Support staff's read-only lookup: the identify answer, writing nothing (SPEC, "Reads")."""
    email, phone = query_identifiers()
    if email is None and phone is None:
        raise ApiError(400, "missing_identifier", "give ?email= and/or ?phoneNumber=")
    return jsonify(customer_answer(reconnect_once(lambda db: lookup_customer(db, email, phone))))


@api.get("/contacts")
def list_contacts() -> Response:
    """Contact rows by id, paginated (?limit, ?after) and filtered (?email, ?phoneNumber)."""
    limit = query_int("limit", DEFAULT_PAGE, 1, MAX_PAGE)
    after = query_int("after", 0, 0, MAX_CONTACT_ID)
    email, phone = query_identifiers()
    rows = reconnect_once(lambda db: list_contact_rows(db, after, limit + 1, email, phone))
    page = rows[:limit]
    response = jsonify([contact_to_json(row) for row in page])
    if len(rows) > limit:
        args = {k: v for k, v in request.args.items() if k != "after"}
        next_url = url_for("api.list_contacts", **{**args, "limit": limit, "after": page[-1]["id"]})
        response.headers["Link"] = f'<{next_url}>; rel="next"'
    return response


@api.get("/contacts/<int:contact_id>")
def get_contact(contact_id: int) -> Response:
    """One live contact row, or 404."""
    row = reconnect_once(lambda db: contact_by_id(db, contact_id))
    if row is None:
        raise ApiError(404, "not_found", f"no contact with id {contact_id}")
    return jsonify(contact_to_json(row))


# --------------------------------------------------------------------------
# Commands: flask --app fluxkart <command>
# --------------------------------------------------------------------------


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the database and tables if they do not exist (never drops anything)."""
    db = get_db()
    db.connect()
    click.echo(f"schema ready on {db.dialect}")


# --------------------------------------------------------------------------
# The app factory
# --------------------------------------------------------------------------


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    """Build the app from the settings (defaults < environment/.env < overrides).

    No connection is opened here: the first request opens one per thread.
    Raises ConfigurationError for a setting the service cannot run with.
    """
    settings = load_settings(overrides)
    configure_logging()
    app = Flask(__name__, static_folder=None)
    app.config.update(settings)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    check_dialects_agree()
    dialect = settings["FLUXKART_DIALECT"]
    app.extensions["fluxkart"] = {
        "queries": load_queries(dialect),
        "schema": schema_statements(dialect),
        "local": threading.local(),
    }
    ext = app.extensions["fluxkart"]
    config, queries, schema = app.config, ext["queries"], ext["schema"]  # not the app: see finalize
    pool = ext["pool"] = DatabasePool(
        lambda: Database(config, queries, schema), int(settings["FLUXKART_DB_POOL_SIZE"])
    )
    # Close the pooled connections when the app goes away (tests build one app per test).
    weakref.finalize(app, pool.close)
    app.teardown_request(release_db)
    app.before_request(start_request)
    app.before_request(require_token)
    app.after_request(finish_request)
    register_error_handlers(app)
    app.register_blueprint(api)
    app.cli.add_command(init_db_command)
    return app
