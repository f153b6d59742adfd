"""FluxKart Identity: links a shop's orders to one customer by email and phone.

Routes
    GET  /                 status
    GET  /health/live      liveness: the process answers
    GET  /health/ready     readiness: the database answers (503 when it does not)
    POST /identify         {"email", "phoneNumber"} -> the consolidated customer
    GET  /customers        read-only lookup by ?email= and/or ?phoneNumber=
    GET  /contacts         contact rows, ?limit= ?after= ?email= ?phoneNumber=
    GET  /contacts/<id>    one contact row
    GET  /customers/<id>/history   a customer's history (ids only), oldest first
    DELETE /customers      erase a customer: ?email= ?phoneNumber= ?dryRun=true
    GET  /metrics          Prometheus metrics;  GET /openapi.json  this API's description
    /console               support staff's HTML pages (docs/console.md): sign-in with the
                           API token, search, masked customer, link graph, history, erasure

Commands (flask --app fluxkart <command>)
    init-db                create the schema if missing
    migrate [--dry-run]    bring an existing Contact table to this schema
    repair [--dry-run]     normalize stored identifiers, make every customer follow the rules
    import FILE|-          historical orders (CSV or JSON Lines), as if sent to /identify

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
    FLUXKART_SECRET_KEY    signs the console's session cookie (the console is off
                           without it and without FLUXKART_API_TOKEN)
    FLUXKART_DB_POOL_SIZE  database connections per worker process (default 10)

The contract is docs/api.md (with openapi.json); the design is in README.md.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hmac
import io
import itertools
import json
import logging
import math
import multiprocessing
import os
import random
import re
import resource
import secrets
import signal
import sqlite3
import sys
import threading
import time
import unicodedata
import uuid
import weakref
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import IO, Any, TypeVar

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
    flash,
    g,
    has_request_context,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.cli import with_appcontext
from flask.sessions import SecureCookieSessionInterface
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.wrappers import Response as WerkzeugResponse

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
    "FLUXKART_SECRET_KEY",
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
    # Signs the console's session cookie; the console is off without it.
    "FLUXKART_SECRET_KEY": "",
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
FORCE_INDEX = re.compile(r"FORCE INDEX \((\w+)\)")


def parse_queries(text: str) -> dict[str, str]:
    """Split a file of `-- name: x` blocks into {name: statement}."""
    parts = NAME_LINE.split(text)
    queries = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        queries[name] = "\n".join(lines).strip()
    return queries


# The service's statements: the portable ones, then the dialect's own.
SERVICE_SQL = ("contacts.sql", "{dialect}/queries.sql")
# The migrate command's: the fills both dialects share, then the dialect's inspection and DDL.
MIGRATE_SQL = ("migrate.sql", "{dialect}/migrate.sql")


def load_queries(dialect: str, files: tuple[str, ...] = SERVICE_SQL) -> dict[str, str]:
    """The statements of `files` (later files win), in the dialect's parameter style."""
    queries: dict[str, str] = {}
    for name in files:
        queries.update(parse_queries((SQL_DIR / name.format(dialect=dialect)).read_text()))
    if dialect == "sqlite":
        # sqlite3 binds :name; it has no row locks (BEGIN IMMEDIATE is the lock), and
        # names the index a SELECT must use with INDEXED BY.
        queries = {
            name: FORCE_INDEX.sub(
                r"INDEXED BY \1", PYMYSQL_PARAM.sub(r":\1", sql).replace("\nFOR UPDATE", "")
            )
            for name, sql in queries.items()
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
    fields.update(g.get("log_fields", {}))  # a view's own figures (erasure counts), never identifiers
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


def connect_mysql(
    settings: dict[str, Any], read_timeout: float | None = MYSQL_READ_TIMEOUT_S, create: bool = True
) -> Any:
    """A PyMySQL connection set up for the service: utf8mb4, autocommit, UTC,
    READ COMMITTED, a short lock wait, causal reads on Galera. Creates the
    database when it is missing, unless `create` is False (`migrate --dry-run`
    changes nothing), then raises its error 1049."""
    params: dict[str, Any] = dict(
        host=settings["MYSQL_HOST"],
        port=int(settings["MYSQL_PORT"]),
        user=settings["MYSQL_USER"],
        password=settings["MYSQL_PASSWORD"],
        charset="utf8mb4",
        autocommit=True,
        connect_timeout=5,
        read_timeout=read_timeout,
        write_timeout=MYSQL_READ_TIMEOUT_S,
        cursorclass=pymysql.cursors.DictCursor,
    )
    database = settings["MYSQL_DATABASE"]
    try:
        conn = pymysql.connect(database=database, **params)
    except pymysql.err.OperationalError as exc:
        if exc.args[0] != 1049 or not create:  # unknown database: create it below
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
        # MariaDB rewrites an IN list of 1000 values or more as a join with a table of the
        # values (the import's lists hold thousands); kept as lists, they are index range
        # lookups, about a tenth faster for the import here. MySQL has no such rewrite,
        # and no such variable (error 1193).
        with contextlib.suppress(pymysql.err.OperationalError):
            cur.execute("SET SESSION in_predicate_conversion_threshold = 0")
        cur.execute("SELECT @@log_bin AS log_bin, @@binlog_format AS binlog_format")
        server = cur.fetchone()
        if server["log_bin"] and server["binlog_format"] == "STATEMENT":
            # READ COMMITTED writes cannot be logged as statements (error 1665 on the
            # first write); ROW can be set per session by a user with BINLOG ADMIN.
            # Without it no write can succeed: say so now, so readiness fails too.
            try:
                cur.execute("SET SESSION binlog_format = 'ROW'")
            except pymysql.err.MySQLError as exc:
                conn.close()
                raise DatabaseMisconfigured(f"MySQL error 1665: {MYSQL_SETTING_ERRORS[1665]}") from exc
        cur.execute("SHOW VARIABLES LIKE 'wsrep_on'")
        wsrep = cur.fetchone()
        if wsrep and wsrep["Value"] == "ON":
            cur.execute("SET SESSION wsrep_sync_wait = %s", (int(settings["FLUXKART_WSREP_SYNC_WAIT"]),))
    return conn


def connect_sqlite(
    settings: dict[str, Any], read_timeout: float | None = None, create: bool = True
) -> sqlite3.Connection:
    """An sqlite3 connection: we issue BEGIN/COMMIT ourselves, WAL, rows as dicts.

    (`read_timeout` is MySQL's; an SQLite statement runs in this process.) With
    `create` False, a missing file raises DatabaseMisconfigured instead of being made.
    """
    path = settings["FLUXKART_SQLITE_PATH"]
    if not create and not Path(path).exists():
        raise DatabaseMisconfigured(f"there is no SQLite database at {path} (FLUXKART_SQLITE_PATH)")
    conn = sqlite3.connect(
        path,
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


def database_location(settings: dict[str, Any]) -> str:
    """Where the service and its commands read and write: "MySQL host:port/database" or
    "SQLite /absolute/path" (a command says it first: a mistyped name is a new database)."""
    if settings["FLUXKART_DIALECT"] == "mysql":
        return f"MySQL {settings['MYSQL_HOST']}:{settings['MYSQL_PORT']}/{settings['MYSQL_DATABASE']}"
    return f"SQLite {Path(settings['FLUXKART_SQLITE_PATH']).resolve()}"


# The schema version this code writes and needs (ServiceState 'schema').
SCHEMA_VERSION = "2"
# List parameters (for `IN`): the Python types bound as a list of values.
LIST_TYPES = (list, tuple, set, frozenset)
# An SQLite placeholder (sqlite3 binds no lists: one placeholder per item).
SQLITE_NAMED = re.compile(r":(\w+)")


def expand_lists(sql: str, params: dict[str, Any], dialect: str) -> tuple[str, dict[str, Any]]:
    """Bind list parameters for `IN`: `x IN %(ids)s` with ids=[1, 2] reads `x IN (1, 2)`;
    an empty list reads `(NULL)`, which matches nothing.

    Values stay bound parameters, escaped one by one by the driver: PyMySQL binds a
    tuple as a parenthesized list (half the work of a placeholder per item for the
    import's lists of thousands); sqlite3 gets `:ids_0, :ids_1` instead.
    """
    lists = {name: list(value) or [None] for name, value in params.items() if isinstance(value, LIST_TYPES)}
    if not lists:
        return sql, params
    params = {name: value for name, value in params.items() if name not in lists}
    if dialect == "mysql":
        return sql, params | {name: tuple(items) for name, items in lists.items()}

    def expanded(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in lists:
            return match.group()
        return "(" + ", ".join(f":{name}_{i}" for i in range(len(lists[name]))) + ")"

    for name, items in lists.items():
        params.update((f"{name}_{i}", item) for i, item in enumerate(items))
    return SQLITE_NAMED.sub(expanded, sql), params


class Database:
    """One thread's connection to MySQL or SQLite, opened lazily, dropped on failure.

    Every statement is a named one from sql/ (`queries`), run with a dict of
    parameters (a list value is expanded for `IN`). Driver errors come out as
    RetryTransaction (start the unit of work over), DatabaseUnavailable (503)
    or DatabaseMisconfigured. `serving` is False for the commands that adopt a
    table the service did not create (migrate): they skip the schema check.
    """

    def __init__(self, settings: dict[str, Any], queries: dict[str, str], schema: list[str]):
        self.settings = settings
        self.queries = queries
        self.schema = schema
        self.dialect: str = settings["FLUXKART_DIALECT"]
        self.conn: Any = None
        self.in_transaction = False
        self.serving = True
        self.state: dict[str, str] = {}  # ServiceState as read at connect
        self.state_read_at = 0.0
        # migration_database() turns these off: migrate inspects the tables
        # before creating any, and its ALTERs run far longer than a request.
        self.create_schema = True
        self.create_database = True
        self.read_timeout: float | None = MYSQL_READ_TIMEOUT_S

    def connect(self) -> Any:
        """The open connection, opening it (and creating the schema if missing) when there is none."""
        if self.conn is None:
            try:
                self.conn = CONNECT[self.dialect](self.settings, self.read_timeout, self.create_database)
                if self.create_schema:
                    self.ensure_schema()
            except Exception as exc:
                error = self.translate(exc)
                # Never keep a connection whose schema check failed: the next request
                # would find it open, skip the check and serve a table we refuse.
                self.close()
                raise error from exc
        return self.conn

    def ensure_schema(self) -> None:
        """Create the tables if missing (idempotent, so safe on every new connection).

        When the service creates Contact itself it first records, in ServiceState,
        that the table has its schema and is consistent (empty). A Contact table
        found without that record was written by something else: raise
        DatabaseMisconfigured telling the operator to run `migrate` (SPEC,
        "Commands"), unless this connection serves a command that adopts it.
        A MySQL user without CREATE is refused even when the tables exist: then
        an operator ran init-db with more rights, and we go on without it.
        """
        cur = self.conn.cursor()
        cur.execute(self.queries["select_contact_table_exists"])
        existed = cur.fetchone()["n"] > 0
        try:
            cur.execute(self.schema[0])  # ServiceState, first in the file
            if not existed:
                facts = {"schema": SCHEMA_VERSION, "consistent": "1"}
                facts["phone_region"] = self.settings["FLUXKART_PHONE_REGION"]
                for name, value in facts.items():
                    cur.execute(self.queries["upsert_service_state"], {"key": name, "value": value})
            for statement in self.schema[1:]:
                cur.execute(statement)
        except pymysql.err.MySQLError as exc:
            if exc.args[0] not in MYSQL_NO_CREATE_CODES:
                raise
            log.warning("no CREATE privilege; expecting the schema to exist (flask init-db)")
        self.read_state()
        if self.serving and self.state.get("schema") != SCHEMA_VERSION:
            raise DatabaseMisconfigured(
                "the Contact table was not created by this service (or by an older version): "
                "run `flask --app fluxkart migrate`, then `repair` (docs/switching.md)"
            )

    def read_state(self) -> dict[str, str]:
        """ServiceState as a dict (re-read now), e.g. {"schema": "2", "consistent": "1"}."""
        self.state = {row["name"]: row["value"] for row in self.all("select_service_state")}
        self.state_read_at = time.monotonic()
        return self.state

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
        sql = self.queries[name]
        sql, params = expand_lists(sql, params, self.dialect)
        try:
            cur = conn.cursor()
            cur.execute(sql, params)
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

    def run_many(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Run a named INSERT ... VALUES once per parameter set: one multi-row statement on MySQL
        (PyMySQL's executemany rewrites it), in-process calls on SQLite."""
        if not rows:
            return
        try:
            self.connect().cursor().executemany(self.queries[name], rows)
        except Exception as exc:
            raise self.translate(exc) from exc

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
        state.db = new_database()
    return state.db  # type: ignore[no-any-return]


def new_database() -> Database:
    """A Database of the current app that nobody else uses (not connected yet)."""
    ext = current_app.extensions["fluxkart"]
    return Database(current_app.config, ext["queries"], ext["schema"])


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
    """Rows by (createdAt, id): "oldest" never means id alone (SPEC, "Data")."""
    return sorted(rows, key=lambda row: (row["createdAt"], row["id"]))


def primaries_of(rows: Iterable[Row]) -> list[Row]:
    """The rows marked primary, in the given order."""
    return [row for row in rows if row["linkPrecedence"] == "primary"]


def is_settled(rows: list[Row], email: str | None, phone: str | None) -> bool:
    """True when the request would change nothing: one customer that has every identifier.

    `rows` is one customer's rows (select_customer), each with the largest
    customer id any matching row points to: all matches must lead to this one
    customer. Each identifier belongs to at most one customer, so if this one
    has them all, no other customer does.
    Only trusted on a table known to be consistent (see `trusts_fast_path`).
    """
    primaries = primaries_of(rows)
    return (
        len(primaries) == 1
        and all(row["lastCustomerId"] == primaries[0]["id"] for row in rows)
        and (email is None or any(row["email"] == email for row in rows))
        and (phone is None or any(row["phoneNumber"] == phone for row in rows))
    )


def customer_answer(rows: list[Row]) -> dict[str, Any]:
    """The identify answer for one customer's live rows, in any order (SPEC, "POST /identify" 4).

    The oldest row is the primary: identify makes it so, and the read-only
    lookup answers data it has not repaired yet as identify would leave it.
    """
    ordered = oldest_first(rows)
    primary = ordered[0]
    return {
        "contact": {
            "primaryContactId": primary["id"],
            # The original Bitespeed specification's spelling, kept for its clients.
            "primaryContatctId": primary["id"],
            "emails": list(dict.fromkeys(r["email"] for r in ordered if r["email"] is not None)),
            "phoneNumbers": list(
                dict.fromkeys(r["phoneNumber"] for r in ordered if r["phoneNumber"] is not None)
            ),
            "secondaryContactIds": [row["id"] for row in ordered[1:]],
        }
    }


# How often a thread reads ServiceState again: a `repair` that starts marks the
# table not consistent, one that finishes marks it consistent.
CONSISTENCY_RECHECK_S = 5


def trusts_fast_path(db: Database) -> bool:
    """True when every customer in the table is known to satisfy the rules (ServiceState).

    Only then can a repeat order be answered from one lock-free read: on data the
    service did not write (not yet repaired), a customer read by its primary may
    be only part of the connected component.
    """
    if time.monotonic() - db.state_read_at > CONSISTENCY_RECHECK_S:
        db.read_state()
    return db.state.get("consistent") == "1"


def identify(db: Database, email: str | None, phone: str | None) -> tuple[dict[str, Any], str]:
    """Link this order's canonical identifiers to their customer (SPEC, "POST /identify").

    Returns (answer, outcome), outcome one of created, linked, merged, repaired,
    unchanged. A repeat customer whose identifiers are all known is answered
    from one consistent read, with no transaction and no lock. Anything else
    runs the locked merge in `apply_identify`. Raises DatabaseUnavailable when
    retries run out.
    """
    db.connect()
    if trusts_fast_path(db):
        rows = db.all("select_customer", email=email, phone=phone)
        if is_settled(rows, email, phone):
            return customer_answer(rows), "unchanged"
    return in_transaction(db, lambda db: apply_identify(db, email, phone), "identify")


def apply_identify(db: Database, email: str | None, phone: str | None) -> tuple[dict[str, Any], str]:
    """The SPEC's identify rules inside one transaction, healing whatever the customer looks like.

    Lock protocol (README, "Concurrency"): 1. write the request's identifier
    rows (ContactIdentifier), email first; 2. lock every live row of the
    customers they belong to, in id order (`lock_customer`); 3. decide in
    memory (`plan_identify`); 4. write (`write_plan`).
    """
    db.run("touch_identifiers", email=email, phone=phone)
    rows = lock_customer(db, {email} if email else set(), {phone} if phone else set())
    now = utcnow()
    plan = plan_identify(rows, email, phone, now)
    write_plan(db, plan)
    record_plan_events(db, rows, plan, now)
    return customer_answer(plan.rows), plan.outcome


# A customer that keeps growing while we lock it is being merged into by
# concurrent requests: after this many rounds, start the transaction over.
MAX_LOCK_ROUNDS = 8


def connected_rows(
    db: Database,
    emails: set[str],
    phones: set[str],
    known: dict[int, Row] | None = None,
    ids: Iterable[int] = (),
) -> dict[int, Row]:
    """Every live row connected to these identifiers, to the `known` rows or to the rows `ids`, by id.

    Follows shared emails, shared phone numbers and links, one statement per
    step (`select_connected`), until a step finds nothing new: the union of
    the customers of the SPEC (a connected component of live rows). Reads
    without locking.
    """
    rows: dict[int, Row] = dict(known or {})
    new = list(rows.values())
    emails = set(emails) | {row["email"] for row in new if row["email"] is not None}
    phones = set(phones) | {row["phoneNumber"] for row in new if row["phoneNumber"] is not None}
    searched_emails: set[str] = set()
    searched_phones: set[str] = set()
    parents = set(ids)
    while True:
        parents |= {row["linkedId"] for row in new if row["linkedId"] is not None} - rows.keys()
        children = {row["id"] for row in new}
        if not (emails or phones or parents or children):
            return rows
        found = db.all(
            "select_connected",
            emails=sorted(emails),
            phones=sorted(phones),
            parents=sorted(parents),
            children=sorted(children),
            known=sorted(rows),  # found before: only what is new comes back
        )
        searched_emails |= emails
        searched_phones |= phones
        new = [row for row in found if row["id"] not in rows]
        rows.update((row["id"], row) for row in new)
        emails = {row["email"] for row in new if row["email"] is not None} - searched_emails
        phones = {row["phoneNumber"] for row in new if row["phoneNumber"] is not None} - searched_phones
        parents = set()


def lock_customer(db: Database, emails: set[str], phones: set[str], ids: Iterable[int] = ()) -> list[Row]:
    """Lock and return every live row of the customers owning these identifiers (or rows `ids`).

    Reads the component without locks, locks its rows in id order
    (`lock_contacts`, which answers them as they are once locked), then checks
    that nothing outside the locked set connects to it; if something does (a
    concurrent request linked or merged meanwhile), locks that too. Once all
    rows are locked nobody can link to or merge them until we commit. Raises
    RetryTransaction("customer_moved") when the customer keeps changing.
    """
    locked: dict[int, Row] = {}
    candidates = connected_rows(db, emails, phones, ids=ids)
    for _ in range(MAX_LOCK_ROUNDS):
        wanted = sorted(candidates.keys() - locked.keys())
        if not wanted:
            return list(locked.values())
        locked.update((row["id"], row) for row in db.all("lock_contacts", ids=wanted))
        # One step from the locked rows as they now are: anything new connects to them.
        candidates = connected_rows(db, emails, phones, known=locked)
    raise RetryTransaction("customer_moved")


@dataclass
class IdentifyPlan:
    """What identify will change, decided in memory from the customer's locked rows."""

    rows: list[Row]  # the customer's live rows afterwards, oldest first
    outcome: str  # created, linked, merged, repaired or unchanged
    promoted: Row | None = None  # the oldest row, when it was not marked primary yet
    relinked: list[int] = field(default_factory=list)  # rows re-pointed at the primary
    demoted: list[int] = field(default_factory=list)  # of those, the former primaries
    inserted: Row | None = None  # the new row (its id is set once it is written)


def plan_identify(rows: list[Row], email: str | None, phone: str | None, now: datetime) -> IdentifyPlan:
    """The SPEC's identify rules applied to the live rows of the request's customer(s); pure.

    `rows` is the whole connected component (any shape: several primaries,
    chains, a deleted primary). The oldest row becomes or stays the primary,
    every other row points straight at it, and a secondary carrying the
    request's identifiers is added when the customer lacks one of them.
    Nothing here touches the database: import applies the same function.
    """
    if not rows:
        new = new_contact(email, phone, None, now)
        return IdentifyPlan(rows=[new], outcome="created", inserted=new)
    primary, *others = oldest_first(rows)
    plan = IdentifyPlan(rows=[], outcome="unchanged")
    if primary["linkPrecedence"] != "primary" or primary["linkedId"] is not None:
        primary = plan.promoted = {**primary, "linkPrecedence": "primary", "linkedId": None}
    plan.rows.append(primary)
    for row in others:
        if row["linkPrecedence"] != "secondary" or row["linkedId"] != primary["id"]:
            plan.relinked.append(row["id"])
            if row["linkPrecedence"] == "primary":
                plan.demoted.append(row["id"])
            row = {**row, "linkPrecedence": "secondary", "linkedId": primary["id"]}
        plan.rows.append(row)
    if (email is not None and all(row["email"] != email for row in rows)) or (
        phone is not None and all(row["phoneNumber"] != phone for row in rows)
    ):
        # Never older than its primary, even if this host's clock is behind the one that made it.
        created_at = max(now, primary["createdAt"] + timedelta(microseconds=1))
        plan.inserted = new_contact(email, phone, primary["id"], created_at)
        plan.rows.append(plan.inserted)
    if plan.demoted:
        plan.outcome = "merged"
    elif plan.inserted:
        plan.outcome = "linked"
    elif plan.relinked or plan.promoted:
        plan.outcome = "repaired"
    return plan


def new_contact(email: str | None, phone: str | None, linked_id: int | None, created_at: datetime) -> Row:
    """A row to insert: a primary (no linked_id) or a secondary; its id is set when written."""
    return {
        "id": None,
        "email": email,
        "phoneNumber": phone,
        "linkedId": linked_id,
        "linkPrecedence": "primary" if linked_id is None else "secondary",
        "createdAt": created_at,
    }


def stored_row_params(row: Row) -> dict[str, Any]:
    """store_contact_rows' parameters: an existing row as it is to be stored (repair, import)."""
    return {
        "id": row["id"],
        "phone": row["phoneNumber"],
        "email": row["email"],
        "linked_id": row["linkedId"],
        "link_precedence": row["linkPrecedence"],
        "created_at": row["createdAt"],
        "updated_at": row["updatedAt"],
    }


def write_plan(db: Database, plan: IdentifyPlan) -> None:
    """Apply an IdentifyPlan inside the caller's transaction; sets the inserted row's id.

    Whenever existing rows change, the identifiers of every row whose link
    changes are touched first, so on a multi-primary cluster a concurrent
    request that linked a row to a demoted customer conflicts with this one
    (README, "Concurrency").
    """
    now = utcnow()
    primary_id = plan.rows[0]["id"]
    if plan.promoted or plan.relinked:
        # Only the rows whose link changes: a request that linked to a demoted
        # customer found it through one of these rows and wrote its identifier.
        # Touching the whole customer would also deadlock with every request
        # that is linking a new row to the survivor (identifier, then rows).
        changed = plan.relinked + ([primary_id] if plan.promoted else [])
        db.run("touch_contact_identifiers", ids=changed)
        if plan.promoted:
            db.run("promote_contact", id=primary_id, updated_at=now)
        if plan.relinked:
            db.run("relink_contacts", ids=plan.relinked, primary_id=primary_id, updated_at=now)
    new = plan.inserted
    if new is not None:
        new["id"] = db.run(
            "insert_contact",
            email=new["email"],
            phone=new["phoneNumber"],
            linked_id=new["linkedId"],
            link_precedence=new["linkPrecedence"],
            created_at=new["createdAt"],
        )


def lookup_customer(db: Database, email: str | None, phone: str | None) -> list[Row]:
    """The live rows of the customer owning this email and/or phone, writing nothing (SPEC, "Reads").

    The whole connected component, as identify would see it (data the service
    did not write is answered as identify would repair it). Raises ApiError
    404 when no customer has either identifier, 409 when the two belong to
    different customers (identify would merge them; a read-only lookup must not
    pretend it did).
    """
    by_email = connected_rows(db, {email}, set()) if email is not None else {}
    if phone is None or any(row["phoneNumber"] == phone for row in by_email.values()):
        rows = by_email
    else:
        by_phone = connected_rows(db, set(), {phone})
        if by_email and by_phone:
            ids = ", ".join(
                str(oldest_first(rows)[0]["id"]) for rows in (by_email.values(), by_phone.values())
            )
            raise ApiError(
                409,
                "several_customers",
                f"the email and phone number belong to different customers ({ids}); "
                "look them up one at a time",
            )
        rows = by_email or by_phone
    if not rows:
        raise ApiError(404, "not_found", "no customer has this email or phone number")
    return list(rows.values())


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
# History and erasure (SPEC "History and erasure"; docs/history-and-erasure.md)
# --------------------------------------------------------------------------

HISTORY_READS = prometheus_client.Counter("fluxkart_history_reads", "customer history pages answered")
ERASURES = prometheus_client.Counter(
    "fluxkart_erasures",
    "customer erasures answered (dry_run=true: previews that changed nothing)",
    ["dry_run"],
)
# A DATETIME(6) older than any event: the cursor of a history's first page (MySQL's minimum).
HISTORY_START = datetime(1000, 1, 1)
DELETE_IDENTIFIER = {
    "email": "delete_email_identifier_if_unused",
    "phone": "delete_phone_identifier_if_unused",
}
# How many links a history request follows from the id it was given to its customer.
MAX_HOPS = 64

_command_run = {"id": ""}
_command_run_lock = threading.Lock()


def start_command_run(run_id: str | None = None) -> str:
    """Name the unit of work of a CLI command (repair, import); returns the run id recorded in history."""
    with _command_run_lock:
        _command_run["id"] = run_id or f"run-{uuid.uuid4().hex}"
        return _command_run["id"]


def current_request_id() -> str:
    """The id history records for the current unit of work.

    Inside a request, the request's id (X-Request-ID); elsewhere (a CLI
    command), the process's command run id, made on first use.
    """
    if has_request_context() and "request_id" in g:
        return str(g.request_id)
    with _command_run_lock:
        if not _command_run["id"]:
            _command_run["id"] = f"run-{uuid.uuid4().hex}"
        return _command_run["id"]


@dataclass
class IdentifyChange:
    """What one identify transaction changed, in ids: the input of record_identify_events.

    survivor_id: the customer's primary after the change. created: the
    survivor is a row this request inserted (a new customer). inserted_id: a
    secondary this request inserted. demoted: each demoted primary -> the ids
    of its rows that now point at the survivor (itself first). repaired: each
    former primary (None when there was none, e.g. a missing one) -> the ids of
    the rows a heal re-pointed from it to the survivor.
    """

    survivor_id: int
    created: bool = False
    inserted_id: int | None = None
    demoted: dict[int, list[int]] = field(default_factory=dict)
    repaired: dict[int | None, list[int]] = field(default_factory=dict)


def history_event(
    kind: str,
    customer_id: int,
    contact_ids: Iterable[int],
    at: datetime,
    former_customer_id: int | None = None,
) -> dict[str, Any]:
    """insert_history_event's parameters for one event (kind in EVENT_KINDS). Ids only."""
    return {
        "kind": kind,
        "created_at": at,
        "request_id": current_request_id(),
        "customer_id": customer_id,
        "former_customer_id": former_customer_id,
        "contact_ids": json.dumps(list(contact_ids), separators=(",", ":")),
    }


def record_event(
    db: Database,
    kind: str,
    customer_id: int,
    contact_ids: Iterable[int],
    at: datetime,
    former_customer_id: int | None = None,
) -> None:
    """Append one history event (kind in EVENT_KINDS) in the caller's transaction. Ids only."""
    db.run("insert_history_event", **history_event(kind, customer_id, contact_ids, at, former_customer_id))


def record_identify_events(db: Database, change: IdentifyChange, at: datetime) -> None:
    """Record what an identify changed, in its transaction: created | repaired, merged | linked.

    Called by apply_identify only when it wrote something: a request that
    changes nothing records nothing. `at` is the changed rows' updatedAt.
    """
    survivor = change.survivor_id
    if change.created:
        record_event(db, "created", survivor, [survivor], at)
    for former, moved in change.repaired.items():
        record_event(db, "repaired", survivor, moved, at, former)
    for demoted, moved in change.demoted.items():
        record_event(db, "merged", survivor, moved, at, demoted)
    if change.inserted_id is not None:
        record_event(db, "linked", survivor, [change.inserted_id], at)


def record_plan_events(db: Database, rows: list[Row], plan: IdentifyPlan, at: datetime) -> None:
    """Record what write_plan just wrote (identify, repair), in the same transaction; nothing if unchanged.

    `rows` are the customer's locked rows before the plan. A demoted primary and
    the rows that pointed at it make one `merged` event; every other re-pointed
    (or promoted) row goes into a `repaired` event per row it pointed at before.
    """
    if plan.outcome == "unchanged":
        return
    before = {row["id"]: row for row in rows}
    change = IdentifyChange(plan.rows[0]["id"])
    if plan.outcome == "created":
        change.created = True
    elif plan.inserted is not None:
        change.inserted_id = plan.inserted["id"]
    if plan.promoted is not None:
        change.repaired[before[change.survivor_id]["linkedId"]] = [change.survivor_id]
    change.demoted = {primary_id: [primary_id] for primary_id in plan.demoted}
    for row_id in plan.relinked:  # oldest first
        if row_id in change.demoted:
            continue
        former = before[row_id]["linkedId"]
        if former in change.demoted:
            change.demoted[former].append(row_id)
        else:
            change.repaired.setdefault(former, []).append(row_id)
    record_identify_events(db, change, at)


def record_imported(db: Database, customers: dict[int, list[int]], at: datetime) -> None:
    """For the import command: customer id -> the rows a batch added to or re-pointed in it,
    one `imported` event each, in the batch's transaction (one statement on MySQL)."""
    events = [history_event("imported", customer_id, ids, at) for customer_id, ids in customers.items()]
    db.run_many("insert_history_event", events)


def event_to_json(row: Row) -> dict[str, Any]:
    """A history row as the API answers it: ids, kind, time (ISO 8601 UTC) and request id."""
    event: dict[str, Any] = {
        "id": row["id"],
        "kind": row["kind"],
        "at": row["createdAt"].isoformat(timespec="microseconds") + "Z",
        "requestId": row["requestId"],
        "customerId": row["customerId"],
        "contactIds": json.loads(row["contactIds"]),
    }
    if row["kind"] == "merged":
        event["demotedPrimaryId"] = row["formerCustomerId"]
    elif row["kind"] == "repaired":
        event["formerPrimaryId"] = row["formerCustomerId"]
    return event


def resolve_customer(db: Database, contact_id: int) -> int:
    """The primary id of the customer a contact id now belongs to; ApiError 404/409.

    A live row leads to its primary. A row that is gone or deleted (a demoted
    and later erased or deleted primary) leads, through the history event that
    moved its rows, to the customer that absorbed it.
    """
    current, seen = contact_id, set()
    for _ in range(MAX_HOPS):
        seen.add(current)
        row = db.one("select_contact_link", id=current)
        if row is not None and row["deletedAt"] is None:
            if row["linkPrecedence"] == "primary":
                return current
            following = row["linkedId"]
        else:
            absorbing = db.one("select_absorbing_event", former_customer_id=current)
            following = absorbing["customerId"] if absorbing else None
        if following is None or following in seen:
            break
        current = following
    if current == contact_id:
        raise ApiError(404, "not_found", f"no customer with id {contact_id}")
    raise ApiError(
        409,
        "inconsistent_customer",
        f"contact {contact_id} leads to no primary; its rows were not written by this service",
    )


def customer_history(db: Database, customer_id: int, after: int, limit: int) -> dict[str, Any]:
    """A customer's events, oldest first by (time, id), including those of customers merged into it.

    In: any id of the customer (a demoted primary's id leads to its survivor),
    the id of the last event already read (0: from the start), a page size.
    Out: {"customerId": the survivor's primary id, "events": [...],
    "nextAfter": the cursor of the next page or None}. ApiError 404 for an
    unknown id or a cursor that names no event, 409 for rows with no primary.
    """
    survivor = resolve_customer(db, customer_id)
    after_at = HISTORY_START
    if after:
        cursor = db.one("select_history_event_by_id", id=after)
        if cursor is None:
            raise ApiError(404, "not_found", f"no history event {after}: give an id from a previous page")
        after_at = cursor["createdAt"]
    rows = db.all(
        "select_history_page", customer_id=survivor, after=after, after_at=after_at, limit=limit + 1
    )
    page = rows[:limit]
    return {
        "customerId": survivor,
        "events": [event_to_json(row) for row in page],
        "nextAfter": page[-1]["id"] if len(rows) > limit else None,
    }


class DryRunFinished(Exception):
    """Carries a dry-run erasure's answer out of its transaction, which is then rolled back."""

    def __init__(self, result: dict[str, Any]):
        super().__init__("dry run")
        self.result = result


def erase_customer(db: Database, email: str | None, phone: str | None, dry_run: bool) -> dict[str, Any]:
    """Erase a whole customer with hard DELETEs: rows, identifier rows, history; leave one erasure record.

    In: canonical identifiers (at least one). Out: {"dryRun", "primaryContactId",
    "contactIds", "contacts", "identifiers", "historyEvents"}. With dry_run the
    same transaction runs and is rolled back: the answer is what would be
    erased, and nothing changes. ApiError 404 when no customer has these
    identifiers, 409 when the email and the phone belong to two customers.
    Takes identify's locks (SPEC "Concurrency"): a racing identify for the
    customer commits wholly before (and is erased) or after (a new customer).
    """

    def work(db: Database) -> dict[str, Any]:
        result = apply_erasure(db, email, phone, dry_run)
        if dry_run:
            raise DryRunFinished(result)
        return result

    try:
        return in_transaction(db, work, "erasure")
    except DryRunFinished as finished:
        return finished.result


def identifiers_of(rows: Iterable[Row]) -> set[tuple[str, str]]:
    """The (kind, value) identifiers rows carry: ('email', ...) and ('phone', ...)."""
    found = set()
    for row in rows:
        if row["email"] is not None:
            found.add(("email", row["email"]))
        if row["phoneNumber"] is not None:
            found.add(("phone", row["phoneNumber"]))
    return found


def rows_by_key(db: Database, key: tuple[str, Any]) -> list[Row]:
    """Every row (live or deleted) carrying an identifier, or linked to/from an id: ("link", id)."""
    kind, value = key
    if kind == "email":
        return db.all("select_rows_by_email", email=value)
    if kind == "phone":
        return db.all("select_rows_by_phone", phone=value)
    return db.all("select_rows_by_link", id=value)


def keys_of(row: Row) -> list[tuple[str, Any]]:
    """What connects a row to others: its identifiers, its id, and the id it links to."""
    keys: list[tuple[str, Any]] = [("link", row["id"])]
    if row["linkedId"] is not None:
        keys.append(("link", row["linkedId"]))
    if row["email"] is not None:
        keys.append(("email", row["email"]))
    if row["phoneNumber"] is not None:
        keys.append(("phone", row["phoneNumber"]))
    return keys


def deleted_rows_of(db: Database, live: dict[int, Row]) -> dict[int, Row]:
    """The soft-deleted rows erased with a customer.

    A deleted row is the customer's when a link or a shared identifier
    connects it to the customer's rows, directly or through other deleted
    rows, but never through a link or an identifier that a live row of
    another customer holds (that row's deleted neighbours are its own).
    """
    erased = dict(live)
    queue = [key for row in live.values() for key in keys_of(row)]
    done: set[tuple[str, Any]] = set()
    while queue:
        key = queue.pop()
        if key in done:
            continue
        done.add(key)
        rows = rows_by_key(db, key)
        if any(row["deletedAt"] is None and row["id"] not in live for row in rows):
            continue  # another customer's link or identifier
        for row in rows:
            if row["id"] not in erased:
                erased[row["id"]] = row
                queue.extend(keys_of(row))
    return erased


def customer_to_erase(db: Database, email: str | None, phone: str | None) -> dict[int, Row]:
    """The live rows of the one customer with this email and/or phone; ApiError 404 or 409."""
    by_email = connected_rows(db, {email}, set()) if email is not None else {}
    by_phone = connected_rows(db, set(), {phone}) if phone is not None else {}
    if by_email and by_phone and by_email.keys() != by_phone.keys():
        ids = ", ".join(str(oldest_first(rows.values())[0]["id"]) for rows in (by_email, by_phone))
        raise ApiError(
            409,
            "several_customers",
            f"the email and phone number belong to different customers ({ids}); erase them one at a time",
        )
    customer = by_email or by_phone
    if not customer:
        raise ApiError(404, "not_found", "no customer has this email or phone number")
    return customer


def apply_erasure(db: Database, email: str | None, phone: str | None, dry_run: bool) -> dict[str, Any]:
    """The erasure, inside one transaction (erase_customer runs it and retries it).

    Lock protocol, identify's own: 1. touch the request's identifier rows; 2.
    find the customer and touch every identifier it carries, again until a
    fresh read finds none untouched (then no identify can add to or merge the
    customer: each would first touch one of them); 3. lock the rows FOR UPDATE;
    4. delete history, rows and identifier rows; 5. write the erasure record.
    """
    db.run("touch_identifiers", email=email, phone=phone)
    touched = {(kind, value) for kind, value in (("email", email), ("phone", phone)) if value is not None}
    while True:
        live = customer_to_erase(db, email, phone)
        rows = deleted_rows_of(db, live)
        untouched = identifiers_of(rows.values()) - touched
        if not untouched:
            break
        for kind, value in sorted(untouched):
            db.run("touch_identifier", kind=kind, value=value)
        touched |= untouched
    ids = sorted(rows)
    for contact_id in ids:
        db.one("lock_contact_by_id", id=contact_id)

    # History: events keyed by any of the rows, and by every former customer they name.
    keyed, queue = set(), list(ids)
    while queue:
        customer_id = queue.pop()
        if customer_id in keyed:
            continue
        keyed.add(customer_id)
        queue.extend(
            event["formerCustomerId"]
            for event in db.all("select_history_by_customer", customer_id=customer_id)
            if event["formerCustomerId"] is not None
        )
    history_events = sum(
        db.execute("delete_history_by_customer", {"customer_id": customer_id}).rowcount
        for customer_id in sorted(keyed)
    )
    for contact_id in ids:
        db.run("delete_contact_by_id", id=contact_id)
    identifiers = sum(
        db.execute(DELETE_IDENTIFIER[kind], {"value": value}).rowcount for kind, value in sorted(touched)
    )
    result = {
        "dryRun": dry_run,
        # The oldest live row: the primary, or the one identify would make primary (SPEC).
        "primaryContactId": oldest_first(live.values())[0]["id"],
        "contactIds": ids,
        "contacts": len(ids),
        "identifiers": identifiers,
        "historyEvents": history_events,
    }
    db.run(
        "insert_erasure",
        erased_at=utcnow(),
        request_id=current_request_id(),
        contacts=len(ids),
        identifiers=identifiers,
        history_events=history_events,
    )
    return result


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
    # The console checks its own signed session instead (a form cannot send a header).
    if not token or request.endpoint in PUBLIC_ENDPOINTS or request.blueprint == "console":
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


def query_bool(name: str) -> bool:
    """A true/false query parameter, false when absent; 400 for anything else."""
    raw = request.args.get(name, "false")
    if raw not in ("true", "false"):
        raise ApiError(400, "invalid_parameter", f"{name} must be true or false")
    return raw == "true"


@api.get("/customers/<int:primaryId>/history")
def get_customer_history(primaryId: int) -> Response:
    """GET /customers/<primaryId>/history: the customer's events, oldest first, paginated.

    Any id of the customer works; a demoted primary's id answers its survivor's
    history, named by "customerId" and a Link rel="canonical".
    """
    primary_id = primaryId  # the path's name for it is the API's (camelCase)
    limit = query_int("limit", DEFAULT_PAGE, 1, MAX_PAGE)
    after = query_int("after", 0, 0, MAX_CONTACT_ID)
    if primary_id > MAX_CONTACT_ID:
        raise ApiError(404, "not_found", f"no customer with id {primary_id}")
    history = reconnect_once(lambda db: customer_history(db, primary_id, after, limit))
    HISTORY_READS.inc()
    response = jsonify(history)
    survivor = history["customerId"]
    links = []
    if survivor != primary_id:
        links.append(f'<{url_for("api.get_customer_history", primaryId=survivor)}>; rel="canonical"')
    if history["nextAfter"] is not None:
        next_url = url_for(
            "api.get_customer_history", primaryId=survivor, limit=limit, after=history["nextAfter"]
        )
        links.append(f'<{next_url}>; rel="next"')
    if links:
        response.headers["Link"] = ", ".join(links)
    return response


@api.delete("/customers")
def delete_customer() -> Response:
    """DELETE /customers?email=&phoneNumber=[&dryRun=true]: erase a whole customer (privacy request).

    Refused (403) while no API token is configured. The access log line carries
    the counts, never the identifiers.
    """
    if not current_app.config["FLUXKART_API_TOKEN"]:
        raise ApiError(
            403,
            "erasure_disabled",
            "erasure is refused while FLUXKART_API_TOKEN is not set: nobody erases customers on an "
            "open service; set the token and send it as 'Authorization: Bearer <token>'",
        )
    email, phone = query_identifiers()
    if email is None and phone is None:
        raise ApiError(400, "missing_identifier", "give ?email= and/or ?phoneNumber=")
    dry_run = query_bool("dryRun")
    result = reconnect_once(lambda db: erase_customer(db, email, phone, dry_run))
    ERASURES.labels("true" if dry_run else "false").inc()
    counts = {name: result[name] for name in ("dryRun", "contacts", "identifiers", "historyEvents")}
    g.log_fields = {"erasure": counts}
    log.info("erasure previewed" if dry_run else "customer erased", extra={"fields": counts})
    return jsonify(result)


# --------------------------------------------------------------------------
# Console: support staff's pages at /console (server-rendered, works without JavaScript)
# --------------------------------------------------------------------------

# Its own Blueprint: templates in templates/console/, the stylesheet in static/
# (served at /console/static/), every view behind a signed session cookie
# instead of the API's bearer header (a browser cannot send one from a form).
console = Blueprint(
    "console", __name__, url_prefix="/console", template_folder="templates", static_folder="static"
)

# No script at all, styles only from our own stylesheet (no inline style), forms
# post only to us, never framed (clickjacking on the erase button).
CONSOLE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
# A support shift: a signed cookie older than this is refused even if the browser kept it.
CONSOLE_SESSION_HOURS = 8
# Views anyone may reach: the sign-in form and the stylesheet it needs.
CONSOLE_OPEN_ENDPOINTS = {"console.sign_in_form", "console.sign_in", "console.static"}
SEARCH_KINDS = {"email": "Email", "phone": "Phone number", "id": "Contact id"}
HISTORY_PAGE = 50


class ConsoleSessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie, marked Secure whenever the request came over HTTPS.

    gunicorn sets the scheme from X-Forwarded-Proto when the proxy is trusted
    (forwarded_allow_ips), so a TLS-terminating load balancer counts as HTTPS.
    """

    def get_cookie_secure(self, app: Flask) -> bool:
        """Secure when configured so, or when this request arrived over HTTPS."""
        return bool(app.config["SESSION_COOKIE_SECURE"]) or (has_request_context() and request.is_secure)


def configure_console(app: Flask) -> None:
    """Session cookie settings for the console; the signing key is FLUXKART_SECRET_KEY."""
    app.secret_key = app.config["FLUXKART_SECRET_KEY"] or None
    app.session_interface = ConsoleSessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME="fluxkart_console",
        SESSION_COOKIE_PATH="/console",  # never sent to the JSON API
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=CONSOLE_SESSION_HOURS),
    )
    app.register_blueprint(console)


def mask_email(email: str) -> str:
    """`dana@example.com` -> `d***@example.com`: enough to tell two apart on the phone, no more."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"


def mask_phone(phone: str) -> str:
    """`+919876543210` -> `+91 ******3210`: the country code and the last four digits.

    Shorter numbers show fewer digits (two of 4-7, none below 4), so a mask
    never gives away most of a number.
    """
    prefix, digits = "", phone
    if phone.startswith("+"):
        try:
            parsed = phonenumbers.parse(phone, None)
            prefix, digits = f"+{parsed.country_code} ", str(phone[1 + len(str(parsed.country_code)) :])
        except phonenumbers.NumberParseException:
            prefix, digits = "+", phone[1:]
    shown = 4 if len(digits) >= 8 else 2 if len(digits) >= 4 else 0
    return prefix + "*" * (len(digits) - shown) + digits[len(digits) - shown :]


# The link graph: nodes on a circle, primary at the top, the others clockwise
# oldest first. A customer has a handful of rows, for which a circle keeps every
# edge visible and the picture stable between visits; graph libraries were
# weighed (README, docs/console.md): Graphviz needs a system binary and a
# subprocess per page, networkx's layouts need numpy, and SVG writers add
# nothing over an autoescaped template.
GRAPH_NODE_RADIUS = 24
GRAPH_MARGIN = 40
# Edges of different kinds between the same two rows bend apart instead of overlapping.
EDGE_BEND = {"link": 0.0, "email": 0.22, "phone": -0.22}


def link_edges(rows: list[Row]) -> list[dict[str, Any]]:
    """Why the rows are one customer: link (secondary -> the row it points at), shared email, shared phone.

    Rows sharing a value are chained oldest first (n rows, n - 1 edges), which
    is enough to show they are connected without a clique of lines.
    """
    rows = oldest_first(rows)
    ids = {row["id"] for row in rows}
    edges = [
        {"kind": "link", "source": row["id"], "target": row["linkedId"]}
        for row in rows
        if row["linkedId"] is not None and row["linkedId"] in ids
    ]
    for kind, column in (("email", "email"), ("phone", "phoneNumber")):
        last_with: dict[str, int] = {}
        for row in rows:
            value = row[column]
            if value is None:
                continue
            if value in last_with:
                edges.append({"kind": kind, "source": last_with[value], "target": row["id"]})
            last_with[value] = row["id"]
    return edges


def link_graph(rows: list[Row]) -> dict[str, Any]:
    """Positions (SVG user units) of every row and the path of every edge, for templates/console/graph.svg."""
    primary_ids = {row["id"] for row in primaries_of(rows)}
    ordered = sorted(oldest_first(rows), key=lambda row: row["id"] not in primary_ids)
    count = len(ordered)
    # Big enough that neighbouring nodes keep a node's width between them.
    radius = 0.0 if count == 1 else max(110.0, count * 3 * GRAPH_NODE_RADIUS / (2 * math.pi))
    size = 2 * (radius + GRAPH_NODE_RADIUS + GRAPH_MARGIN)
    centre = size / 2
    nodes, where = [], {}
    for index, row in enumerate(ordered):
        angle = -math.pi / 2 + 2 * math.pi * index / count
        x, y = centre + radius * math.cos(angle), centre + radius * math.sin(angle)
        where[row["id"]] = (x, y)
        nodes.append(
            {"id": row["id"], "x": round(x, 1), "y": round(y, 1), "primary": row["id"] in primary_ids}
        )
    edges = []
    for edge in link_edges(rows):
        (x1, y1), (x2, y2) = where[edge["source"]], where[edge["target"]]
        bend = EDGE_BEND[edge["kind"]]
        # Control point: the midpoint pushed sideways by a share of the edge's length.
        cx, cy = (x1 + x2) / 2 - bend * (y2 - y1), (y1 + y2) / 2 + bend * (x2 - x1)
        path = f"M {x1:.1f} {y1:.1f} Q {cx:.1f} {cy:.1f} {x2:.1f} {y2:.1f}"
        edges.append({**edge, "path": path})
    return {"size": round(size, 1), "nodes": nodes, "edges": edges}


def console_page(template: str, status: int = 200, **context: Any) -> Response:
    """Render templates/console/<template> with the given status."""
    response = current_app.make_response(render_template(f"console/{template}", **context))
    response.status_code = status
    return response


def console_message(status: int, title: str, message: str, back: bool = True) -> Response:
    """A page that says what went wrong and what to do about it (and, when it helps, a way back)."""
    return console_page("message.html", status, title=title, message=message, back=back)


def session_fingerprint() -> str:
    """Ties a session to the API token it was opened with: changing the token signs everyone out."""
    token: str = current_app.config["FLUXKART_API_TOKEN"]
    key: str = current_app.config["FLUXKART_SECRET_KEY"]
    return hmac.new(key.encode(), token.encode(), "sha256").hexdigest()


def signed_in() -> bool:
    """True when this session signed in with the API token that is configured now."""
    return hmac.compare_digest(str(session.get("auth", "")), session_fingerprint())


def csrf_token() -> str:
    """This session's token for every form (made on first use); templates call it."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return str(session["csrf"])


@console.context_processor
def console_context() -> dict[str, Any]:
    """What every console template may call: csrf_token() and signed_in()."""
    return {"csrf_token": csrf_token, "signed_in": signed_in}


@console.before_request
def console_gate() -> WerkzeugResponse | None:
    """Refuse the console without a token or signing key, demand sign-in, check CSRF on every POST."""
    if request.endpoint == "console.static":
        return None
    if not current_app.config["FLUXKART_API_TOKEN"]:
        return console_message(
            403,
            "The console is off",
            "No API token is configured (FLUXKART_API_TOKEN). The console shows and erases customers' "
            "personal data, so it stays off until the service has a token to sign in with. "
            "Set FLUXKART_API_TOKEN and FLUXKART_SECRET_KEY, then restart the service.",
            back=False,
        )
    if not current_app.config["FLUXKART_SECRET_KEY"]:
        return console_message(
            403,
            "The console is off",
            "No session signing key is configured (FLUXKART_SECRET_KEY), so a sign-in could not be "
            "kept safely. Set it (docs/console.md says how) and restart the service.",
            back=False,
        )
    if request.endpoint not in CONSOLE_OPEN_ENDPOINTS and not signed_in():
        return redirect(url_for("console.sign_in_form"), 303)
    if request.method == "POST":
        expected = str(session.get("csrf", ""))
        given = request.form.get("csrf_token", "")
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            log.warning("console form refused: missing or wrong CSRF token")
            return console_message(
                400,
                "This form has expired",
                "The form did not carry this session's security token (it was opened before a "
                "sign-in or sign-out, or sent from another site). Open the page again and resend it.",
            )
    return None


@console.after_app_request
def console_headers(response: Response) -> Response:
    """The console's security headers on every answer under /console, errors included."""
    if request.path == "/console" or request.path.startswith("/console/"):
        response.headers.update(CONSOLE_HEADERS)
    return response


@console.errorhandler(ApiError)
def console_api_error(exc: ApiError) -> Response:
    """A domain error (400/404/409...) as a page with the same status and message."""
    return console_message(exc.status, "That did not work", exc.message)


@console.errorhandler(DatabaseUnavailable)
def console_database_unavailable(exc: DatabaseUnavailable) -> Response:
    """The API's 503 with Retry-After, as a page."""
    log.error("database unavailable: %s", exc)
    response = console_message(
        503, "The database is busy", "The database is unavailable or busy; retry shortly."
    )
    response.headers["Retry-After"] = "1"
    return response


@console.get("/sign-in")
def sign_in_form() -> WerkzeugResponse:
    """The sign-in form (the API token is the password)."""
    if signed_in():
        return redirect(url_for("console.search_form"), 303)
    return console_page("sign_in.html")


@console.post("/sign-in")
def sign_in() -> WerkzeugResponse:
    """Check the token in constant time; on success start a fresh session (new CSRF token)."""
    token: str = current_app.config["FLUXKART_API_TOKEN"]
    given = request.form.get("token", "").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        log.warning("console sign-in refused: wrong token")
        return console_page("sign_in.html", 401, error="That is not this service's API token.")
    session.clear()  # nothing from before the sign-in survives it (session fixation)
    session["auth"] = session_fingerprint()
    session["csrf"] = secrets.token_urlsafe(32)
    log.info("console sign-in")
    return redirect(url_for("console.search_form"), 303)


@console.post("/sign-out")
def sign_out() -> WerkzeugResponse:
    """Forget the session; the browser is sent back to the sign-in form."""
    session.clear()
    flash("You are signed out.")
    return redirect(url_for("console.sign_in_form"), 303)


@console.get("")
def search_form() -> Response:
    """Look a customer up by email, phone number or contact id."""
    return console_page("search.html", kind="email")


@console.post("/search")
def search() -> WerkzeugResponse:
    """Find the customer and redirect to its page, addressed by its primary id only.

    The identifier travels in the POST body alone, so it lands in no URL, log
    line or browser history; the primary id the page is addressed by is the
    service's own row id (the one GET /customers/<id>/history takes), not a
    customer's personal data. Redirecting makes reload and Back safe.
    """
    kind = request.form.get("kind", "")
    value = request.form.get("identifier", "")
    if kind not in SEARCH_KINDS:
        return console_page("search.html", 400, kind="email", error="Choose what to search by.")
    try:
        primary_id = reconnect_once(lambda db: find_primary_id(db, kind, value))
    except ApiError as exc:
        return console_page("search.html", exc.status, kind=kind, value=value, error=exc.message)
    return redirect(url_for("console.customer_page", primary_id=primary_id), 303)


def customer_id_of(db: Database, contact_id: int) -> int:
    """The id a customer's page is addressed by, from any of its contact ids; ApiError 404/409.

    That is the customer's oldest live row: its primary whenever the rows keep
    the SPEC's rules, and the row identify or repair would make primary when
    they do not (data the service did not write). A demoted primary that was
    since deleted or erased leads, through the history, to the survivor.
    """
    if contact_id > MAX_CONTACT_ID:  # beyond BIGINT (SQLite cannot even bind it)
        raise ApiError(404, "not_found", f"no customer with id {contact_id}")
    rows = connected_rows(db, set(), set(), ids=[contact_id])
    if rows:
        return int(oldest_first(rows.values())[0]["id"])
    return resolve_customer(db, contact_id)


def find_primary_id(db: Database, kind: str, value: str) -> int:
    """The page id (customer_id_of) of the customer with this email, phone number or contact id.

    ApiError 400 for a value that is not one, 404 when no customer has it.
    """
    if kind == "id":
        text = value.strip().lstrip("#")
        if not text.isascii() or not text.isdigit() or not 0 < int(text) <= MAX_CONTACT_ID:
            raise ApiError(400, "invalid_contact_id", "A contact id is a whole number, such as 42.")
        return customer_id_of(db, int(text))
    region = current_app.config["FLUXKART_PHONE_REGION"]
    email = normalize_email(value, "the email") if kind == "email" else None
    phone = normalize_phone(value, region, "the phone number") if kind == "phone" else None
    if email is None and phone is None:
        raise ApiError(400, "missing_identifier", f"Type the {SEARCH_KINDS[kind].lower()} to look for.")
    return int(oldest_first(lookup_customer(db, email, phone))[0]["id"])


def customer_rows(db: Database, customer_id: int) -> list[Row]:
    """Every live row of the customer whose page id is customer_id, oldest first; ApiError 404/409."""
    if customer_id > MAX_CONTACT_ID:
        raise ApiError(404, "not_found", f"no customer with id {customer_id}")
    rows = oldest_first(connected_rows(db, set(), set(), ids=[customer_id]).values())
    if not rows:
        raise ApiError(404, "not_found", f"no customer with id {customer_id}")
    if rows[0]["id"] != customer_id:
        raise ApiError(
            409,
            "customer_moved",
            f"contact {customer_id} is now part of customer {rows[0]['id']}: open that one",
        )
    return rows


def keeps_the_rules(rows: list[Row]) -> bool:
    """True when the oldest row is the only primary and every other row links straight to it."""
    primary, *others = rows
    return primary["linkPrecedence"] == "primary" and all(
        row["linkPrecedence"] == "secondary" and row["linkedId"] == primary["id"] for row in others
    )


def show_customer(customer_id: int, reveal: bool) -> Response:
    """The customer page: rows, link graph, history; identifiers masked unless revealed."""
    after = request.args.get("after", "")
    after_id = int(after) if after.isascii() and after.isdigit() and int(after) <= MAX_CONTACT_ID else 0
    rows = reconnect_once(lambda db: customer_rows(db, customer_id))
    try:
        history = reconnect_once(lambda db: customer_history(db, customer_id, after_id, HISTORY_PAGE))
        history_error = None
    except ApiError as exc:  # e.g. rows with no primary yet: the rest of the page still helps
        history, history_error = {"events": [], "nextAfter": None}, exc.message
    email_of: Callable[[str], str] = (lambda e: e) if reveal else mask_email
    phone_of: Callable[[str], str] = (lambda p: p) if reveal else mask_phone
    shown = [
        {
            **row,
            "email": None if row["email"] is None else email_of(row["email"]),
            "phoneNumber": None if row["phoneNumber"] is None else phone_of(row["phoneNumber"]),
        }
        for row in rows
    ]
    return console_page(
        "customer.html",
        primary_id=customer_id,
        rows=shown,
        graph=link_graph(rows),
        consistent=keeps_the_rules(rows),
        revealed=reveal,
        events=history["events"],
        next_after=history["nextAfter"],
        history_error=history_error,
    )


@console.get("/customers/<int:primary_id>")
def customer_page(primary_id: int) -> WerkzeugResponse:
    """One customer, identifiers masked; any other contact id of it redirects here."""
    customer_id = reconnect_once(lambda db: customer_id_of(db, primary_id))
    if customer_id != primary_id:
        return redirect(url_for("console.customer_page", primary_id=customer_id), 303)
    return show_customer(primary_id, reveal=False)


@console.post("/customers/<int:primary_id>/reveal")
def reveal(primary_id: int) -> Response:
    """The same page with identifiers in full; the log records who asked (request id), not what was shown."""
    log.info("console reveal", extra={"fields": {"event": "console_reveal", "customerId": primary_id}})
    return show_customer(primary_id, reveal=True)


def erasure_of(db: Database, primary_id: int, dry_run: bool) -> dict[str, Any]:
    """erase_customer for the customer with this primary, named by one of its identifiers."""
    rows = customer_rows(db, primary_id)
    # One identifier is enough to name the customer; erase_customer takes identify's locks on it.
    email = next((row["email"] for row in rows if row["email"] is not None), None)
    phone = None if email else next(row["phoneNumber"] for row in rows if row["phoneNumber"] is not None)
    result: dict[str, Any] = erase_customer(db, email, phone, dry_run)
    return result


@console.get("/customers/<int:primary_id>/erase")
def erase_preview(primary_id: int) -> Response:
    """What erasing this customer would remove (the dry run), and the form that confirms it."""
    preview = reconnect_once(lambda db: erasure_of(db, primary_id, True))
    return console_page("erase.html", primary_id=primary_id, preview=preview)


@console.post("/customers/<int:primary_id>/erase")
def erase(primary_id: int) -> Response:
    """Erase the customer, but only if it is still the one the preview showed.

    A merge between preview and confirmation would otherwise erase rows the
    support agent never saw: then the new preview is shown instead.
    """
    seen = request.form.get("contact_ids", "")
    preview = reconnect_once(lambda db: erasure_of(db, primary_id, True))
    if seen != ",".join(str(i) for i in preview["contactIds"]):
        notice = "This customer changed since the preview (an order merged rows into it). Check again."
        return console_page("erase.html", 409, primary_id=primary_id, preview=preview, notice=notice)
    result = reconnect_once(lambda db: erasure_of(db, primary_id, False))
    log.info("console erasure", extra={"fields": {"event": "console_erasure", "customerId": primary_id}})
    return console_page("erased.html", result=result)


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
# Commands: repair (SPEC, "Commands")
# --------------------------------------------------------------------------


class Progress:
    """A long command's progress on stderr: a click bar on a terminal, else a line every few seconds."""

    PLAIN_EVERY_S = 5.0

    def __init__(self, label: str, total: int | None):
        self.label, self.total, self.done = label, total, 0
        self.started = self.printed = time.monotonic()
        self.bar: Any = None
        if total is not None and sys.stderr.isatty():
            self.bar = click.progressbar(
                length=total, label=label, file=sys.stderr, show_pos=True, show_eta=True
            )
            self.bar.__enter__()

    def advance(self, count: int) -> None:
        """Count `count` more items done."""
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        elif time.monotonic() - self.printed >= self.PLAIN_EVERY_S:
            self.printed = time.monotonic()
            rate = self.done / max(self.printed - self.started, 1e-9)
            of = f"/{self.total}" if self.total is not None else ""
            click.echo(f"{self.label}: {self.done}{of} ({rate:.0f}/s)", err=True)

    def close(self) -> None:
        """Finish the bar (or print the last plain line)."""
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
        else:
            click.echo(f"{self.label}: {self.done} done", err=True)


def database_problem(exc: Exception) -> str:
    """A database error for a command's one-line message, with the driver's own words:
    'MySQL error 2003: (2003, "Can't connect ...")' (a command prints it, not a traceback)."""
    return f"{exc}: {exc.__cause__}" if exc.__cause__ is not None else str(exc)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB.

    Linux's VmHWM (/proc/self/status, KiB) when there is one: getrusage's ru_maxrss
    carries over the peak of the process that started us (Linux keeps it across exec),
    so a command started by a big process would report that process's memory.
    """
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# Repair reads the table a page at a time and changes it a few rows at a time,
# so its transactions stay short while the service serves.
REPAIR_PAGE = 1000
REPAIR_BATCH = 200
# Repair looks for customers that break the rules again after each pass (a
# merge can make new ones); this many passes at most.
MAX_REPAIR_PASSES = 5
# At most this many invalid values are listed one by one; the rest are counted.
MAX_LISTED = 50


@dataclass
class RepairReport:
    """What repair read, changed and could not change."""

    rows_read: int = 0
    normalized: int = 0
    invalid: list[str] = field(default_factory=list)  # "row 12: email ..." (the first MAX_LISTED)
    invalid_count: int = 0
    without_identifier: list[int] = field(default_factory=list)  # row ids (the first MAX_LISTED)
    without_identifier_count: int = 0
    customers_repaired: int = 0
    rows_repointed: int = 0
    primaries_demoted: int = 0
    merged_by_identifier: int = 0
    primaries_promoted: int = 0
    failed: int = 0  # customers whose transaction ran out of retries

    def changed(self) -> bool:
        return bool(self.normalized or self.customers_repaired)


def canonical_identifiers(row: Row, region: str, report: RepairReport) -> tuple[str | None, str | None]:
    """A stored row's identifiers in canonical form; an invalid value is kept as it is and reported."""
    values: list[str | None] = []
    for column, normalize in (("email", normalize_email), ("phoneNumber", normalize_phone)):
        stored = row[column]
        try:
            values.append(normalize(stored) if column == "email" else normalize(stored, region))
        except ApiError as exc:
            values.append(stored)
            report.invalid_count += 1
            if len(report.invalid) < MAX_LISTED:
                report.invalid.append(f"row {row['id']}: {exc.message} (left as it is)")
    email, phone = values
    if email is None and phone is None:
        report.without_identifier_count += 1
        if len(report.without_identifier) < MAX_LISTED:
            report.without_identifier.append(row["id"])
    return email, phone


def store_canonical(db: Database, changes: list[tuple[Row, str | None, str | None]]) -> int:
    """Write canonical identifiers into rows, under identify's locks; returns how many rows changed.

    The rows are locked first, as identify locks a customer's rows, so a
    concurrent order sees each row before or after, never half; then one
    statement touches the new identifiers of every changed row (ContactIdentifier:
    a concurrent order for one of them conflicts, on Galera too). A row changed
    or deleted since it was read is left for the next run.
    """
    locked = {row["id"]: row for row in db.all("lock_contacts", ids=[row["id"] for row, _, _ in changes])}
    now, changed = utcnow(), []
    for row, email, phone in changes:
        current = locked.get(row["id"])
        if current is not None and (current["email"], current["phoneNumber"]) == (
            row["email"],
            row["phoneNumber"],
        ):
            changed.append({**current, "email": email, "phoneNumber": phone, "updatedAt": now})
    db.run_many("store_contact_rows", [stored_row_params(row) for row in changed])  # one statement on MySQL
    if changed:
        db.run("touch_contact_identifiers", ids=[row["id"] for row in changed])
    return len(changed)


def normalize_stored_identifiers(db: Database, region: str, report: RepairReport, dry_run: bool) -> None:
    """Repair's first step (also migrate's last): every live row's identifiers in canonical form.

    Reads the table a page at a time (bounded memory), writes in short
    transactions, and fills ContactIdentifier for every identifier it reads.
    """
    progress = Progress("normalizing identifiers", db.one("count_live_contacts")["n"])  # type: ignore[index]
    after = 0
    while page := db.all("select_live_page", after=after, limit=REPAIR_PAGE):
        after = page[-1]["id"]
        report.rows_read += len(page)
        changes = []
        for row in page:
            email, phone = canonical_identifiers(row, region, report)
            if (email, phone) != (row["email"], row["phoneNumber"]):
                changes.append((row, email, phone))
        for start in range(0, len(changes), REPAIR_BATCH):
            batch = changes[start : start + REPAIR_BATCH]
            if dry_run:
                report.normalized += len(batch)
            else:
                report.normalized += in_transaction(db, partial(store_canonical, changes=batch), "repair")
        if not dry_run:
            db.run("fill_identifiers", ids=[row["id"] for row in page])
        progress.advance(len(page))
    progress.close()


def unsettled_seeds(db: Database) -> Iterable[tuple[str, Any]]:
    """("id", row id) or ("email"/"phone", value) for every place the rules are broken, page by page.

    Keyset pagination: the table may change while we read; a customer repaired
    meanwhile simply no longer shows up.
    """
    after: Any = 0
    while page := db.all("select_unsettled_contacts", after=after, limit=REPAIR_PAGE):
        after = page[-1]["id"]
        yield from (("id", row["id"]) for row in page)
    for kind, statement in (("email", "select_shared_emails"), ("phone", "select_shared_phones")):
        after = ""
        while page := db.all(statement, after=after, limit=REPAIR_PAGE):
            after = page[-1]["value"]
            yield from ((kind, row["value"]) for row in page)


def repair_customer(db: Database, seed: tuple[str, Any], dry_run: bool) -> IdentifyPlan:
    """Lock the customer around one seed and make it satisfy the rules (one transaction)."""
    kind, value = seed
    emails = {value} if kind == "email" else set()
    phones = {value} if kind == "phone" else set()
    ids = [value] if kind == "id" else []
    rows = lock_customer(db, emails, phones, ids)
    now = utcnow()
    plan = plan_identify(rows, None, None, now) if rows else IdentifyPlan(rows=[], outcome="unchanged")
    if not dry_run and rows:
        write_plan(db, plan)
        record_plan_events(db, rows, plan, now)
    return plan


def repair_customers(db: Database, report: RepairReport, dry_run: bool) -> None:
    """Repair's second step: every customer that breaks the rules, one short transaction each."""
    counted: set[int] = set()  # dry run: rows of customers already counted (nothing changes)
    for _ in range(MAX_REPAIR_PASSES):
        before = report.customers_repaired
        progress = Progress("repairing customers", None)
        for seed in unsettled_seeds(db):
            try:
                plan = in_transaction(db, partial(repair_customer, seed=seed, dry_run=dry_run), "repair")
            except DatabaseUnavailable as exc:
                report.failed += 1
                log.error("could not repair the customer of %s %s: %s", seed[0], seed[1], exc)
                continue
            finally:
                progress.advance(1)
            if dry_run:
                # A customer broken in several ways is found from each of them; a real
                # run repairs it at the first, a dry run must count it once.
                if counted & {row["id"] for row in plan.rows}:
                    continue
                counted.update(row["id"] for row in plan.rows)
            if plan.outcome != "unchanged":
                report.customers_repaired += 1
                report.rows_repointed += len(plan.relinked)
                report.primaries_promoted += plan.promoted is not None
                if seed[0] == "id":
                    report.primaries_demoted += len(plan.demoted)
                else:
                    report.merged_by_identifier += len(plan.demoted)
        progress.close()
        if dry_run or report.customers_repaired == before:
            return


@click.command("repair")
@click.option("--dry-run", is_flag=True, help="Report what would change; change nothing.")
@with_appcontext
def repair_command(dry_run: bool) -> None:
    """Normalize every stored identifier, then make every customer satisfy the rules (SPEC, "Commands").

    Works in short transactions that take identify's locks, so it runs while
    the service serves. Exits 1 when something could not be repaired (invalid
    values are reported and left as they are).
    """
    started = time.monotonic()
    start_command_run()  # the request id of this run's history events
    click.echo(f"repair: {database_location(current_app.config)}")
    db = get_db()
    region = current_app.config["FLUXKART_PHONE_REGION"]
    report = RepairReport()
    try:
        db.connect()
        if not dry_run:
            # Until the pass is over, identify must not trust a lock-free read.
            db.run("upsert_service_state", key="consistent", value="0")
        normalize_stored_identifiers(db, region, report, dry_run)
        repair_customers(db, report, dry_run)
        if not dry_run and not report.failed:
            db.run("upsert_service_state", key="phone_region", value=region)
            db.run("upsert_service_state", key="consistent", value="1")
    except (DatabaseUnavailable, DatabaseMisconfigured) as exc:
        # What was repaired is committed; a second run goes on with what is still broken.
        raise click.ClickException(f"repair stopped: {database_problem(exc)}") from exc
    verb = "would be" if dry_run else "were"
    lines = [
        f"rows read: {report.rows_read}",
        f"identifiers that {verb} normalized: {report.normalized} rows",
        f"customers that {verb} repaired: {report.customers_repaired}"
        f" (rows re-pointed {report.rows_repointed}, primaries demoted {report.primaries_demoted},"
        f" merged because they share a canonical identifier {report.merged_by_identifier},"
        f" primaries promoted {report.primaries_promoted})",
        f"invalid values left as they are: {report.invalid_count}",
        *(f"  {line}" for line in report.invalid),
        f"rows with neither identifier (never matched): {report.without_identifier_count}"
        + (f" (ids {', '.join(map(str, report.without_identifier))})" if report.without_identifier else ""),
        f"customers that could not be repaired (retries ran out): {report.failed}",
        f"duration: {time.monotonic() - started:.1f} s; peak memory: {peak_rss_mib():.0f} MiB",
    ]
    if dry_run:
        lines.append(
            "dry run: nothing was changed (merges that only normalization would reveal are not counted)"
        )
    elif not report.changed():
        lines.append("nothing to repair: the table already satisfies the rules")
    click.echo("\n".join(lines))
    if report.failed or report.invalid_count:
        raise SystemExit(1)


# --------------------------------------------------------------------------
# Commands: import (historical orders; equals replaying them through identify)
# --------------------------------------------------------------------------

# Lines per batch: one transaction, a handful of multi-row statements. Big
# enough to amortize round trips, small enough that a batch holds its locks
# for a fraction of a second (live identify requests wait at most that long).
IMPORT_BATCH_LINES = 2000
# Without a terminal, a progress line this often (seconds).
PROGRESS_EVERY_S = 5.0
# In-memory ids of rows a batch inserts: above every real id, in creation
# order, until the rows are written and get their real ids.
TEMP_ID_BASE = 2**62
# A phone cell a spreadsheet wrote as a number: 9876543210.0 (the fraction is
# only zeros). Exponent forms (9.87654E+09) have lost digits and are refused.
SPREADSHEET_WHOLE = re.compile(r"\s*(\d+)\.0+\s*")
SPREADSHEET_EXPONENT = re.compile(r"\s*\d+(\.\d*)?[eE][+-]?\d+\s*")
ORDER_FORMATS = ("auto", "csv", "jsonl")
# SQLite has one write lock and its busy handler is not a queue: a waiting
# writer polls (every 100 ms once it has waited a while), so an import that
# starts its next batch as soon as the last commits would starve live
# requests. After this much time holding the lock, the import pauses for
# longer than one poll.
SQLITE_HOLD_S = 0.5
SQLITE_PAUSE_S = 0.15
# A gzip file's first two bytes (0x1f 0x8b) as the surrogateescape reading decodes them.
GZIP_START = "\x1f\udc8b"
# What errors="surrogateescape" decodes a byte that is not UTF-8 to.
NOT_UTF8 = re.compile("[\udc80-\udcff]")
ONE_MICROSECOND = timedelta(microseconds=1)


class ImportRefused(Exception):
    """The file cannot be imported at all (no identifier column): nothing was written."""


@dataclass
class OrderLine:
    """One order of an export file: its canonical identifiers, or why it is rejected."""

    number: int  # the file's line where the record starts (1 is the first line)
    text: str  # the record as read (several lines for a quoted CSV newline), for --rejects
    email: str | None = None
    phone: str | None = None
    reason: str | None = None


class JsonFraction(str):
    """A JSON number with a fraction or exponent, kept as its text (json.loads parse_float)."""


def utf8_problem(text: str) -> str | None:
    """Why `text` (decoded with surrogateescape) is not valid UTF-8, or None when it is."""
    match = NOT_UTF8.search(text)
    if match is None:
        return None
    return f"not valid UTF-8 (byte 0x{ord(match.group()) - 0xDC00:02X} at character {match.start() + 1})"


def spreadsheet_phone(value: Any) -> Any:
    """A phone cell or JSON value as identify takes it: 9876543210.0 becomes 9876543210.

    A spreadsheet that stored the column as numbers exports a whole number
    with a zero fraction; identify alone would read the '.' as formatting and
    keep the zero. Anything else is passed on unchanged (identify validates it).
    """
    if isinstance(value, JsonFraction):
        match = SPREADSHEET_WHOLE.fullmatch(value)
        return int(match.group(1)) if match else float(value)  # a float: identify's own 400
    if isinstance(value, str):
        if match := SPREADSHEET_WHOLE.fullmatch(value):
            return match.group(1)
        if SPREADSHEET_EXPONENT.fullmatch(value):
            raise ApiError(
                400,
                "invalid_phone_number",
                f"phoneNumber {value.strip()!r} is in scientific notation: the spreadsheet lost its "
                "digits; export the column as text",
            )
    return value


def order_identifiers(email: Any, phone: Any, region: str) -> tuple[str | None, str | None]:
    """The canonical (email, phone) of one order, by identify's own rules; ApiError when invalid."""
    if isinstance(email, JsonFraction):
        email = float(email)  # identify's answer to a JSON number
    canonical_email = normalize_email(email)
    canonical_phone = normalize_phone(spreadsheet_phone(phone), region)
    if canonical_email is None and canonical_phone is None:
        raise ApiError(400, "missing_identifier", "neither an email nor a phoneNumber")
    return canonical_email, canonical_phone


class OrderFile:
    """An export file read as a stream of orders: CSV with a header row, or JSON Lines.

    UTF-8 with or without a byte-order mark; bytes that are not UTF-8 reject
    their line only. The file is read one line at a time (memory does not grow
    with it); `bytes_read` follows the position for the progress bar.
    """

    def __init__(self, binary: IO[bytes], fmt: str, region: str):
        self.text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")
        self.region = region
        self.format = fmt
        self.bytes_read = 0
        self.line_number = 0
        self.header = ""  # the CSV header row as read, for --rejects

    def release(self) -> None:
        """Let go of the file without closing it (click closes a file it opened; stdin stays open)."""
        with contextlib.suppress(ValueError):
            self.text.detach()

    def lines(self) -> Iterator[str]:
        for line in self.text:
            self.line_number += 1
            self.bytes_read += len(line.encode("utf-8", "surrogateescape"))
            yield line

    def orders(self) -> Iterator[OrderLine]:
        """Every order line in file order; raises ImportRefused before the first when the CSV
        header names neither identifier column. Blank lines are skipped."""
        lines = self.lines()
        first = ""
        for line in lines:
            if line.strip():
                first = line
                break
        if not first:
            return
        if first.startswith(GZIP_START):
            raise ImportRefused(
                "the file is gzip-compressed: decompress it on the way in, "
                "e.g. zcat FILE | flask --app fluxkart import -"
            )
        if self.format == "auto":
            self.format = "jsonl" if first.lstrip().startswith("{") else "csv"
        remaining = itertools.chain([first], lines)
        if self.format == "jsonl":
            yield from self.json_orders(remaining)
        else:
            yield from self.csv_orders(remaining, self.line_number)

    def json_orders(self, lines: Iterator[str]) -> Iterator[OrderLine]:
        for text in lines:
            if not text.strip():
                continue
            order = OrderLine(self.line_number, text)
            try:
                if problem := utf8_problem(text):
                    raise ApiError(400, "invalid_utf8", problem)
                try:
                    body = json.loads(text, parse_float=JsonFraction)
                except (ValueError, RecursionError) as exc:
                    raise ApiError(400, "invalid_json", "not valid JSON") from exc
                if not isinstance(body, dict):
                    raise ApiError(400, "invalid_body", "not a JSON object")
                order.email, order.phone = order_identifiers(
                    body.get("email"), body.get("phoneNumber"), self.region
                )
            except ApiError as exc:
                order.reason = exc.message
            yield order

    def csv_orders(self, lines: Iterator[str], first_number: int) -> Iterator[OrderLine]:
        pending: list[str] = []  # the lines of the record being read

        def feed() -> Iterator[str]:
            for line in lines:
                pending.append(line)
                yield line

        reader = csv.reader(feed())
        header = next(reader)
        self.header = "".join(pending)
        columns = [name.strip().lower() for name in header]
        if "email" not in columns and "phonenumber" not in columns:
            separator = next((sep for sep in ";\t|" if len(header) == 1 and sep in header[0]), None)
            hint = f"; its columns look separated by {separator!r}: export with commas" if separator else ""
            raise ImportRefused(
                f"line {first_number}: the header has neither an 'email' nor a 'phoneNumber' column "
                f"(it has: {', '.join(repr(name[:80]) for name in header[:20])}){hint}; nothing was imported"
            )
        for name in ("email", "phonenumber"):
            if columns.count(name) > 1:
                raise ImportRefused(f"line {first_number}: the header has two '{name}' columns")
        email_at = columns.index("email") if "email" in columns else None
        phone_at = columns.index("phonenumber") if "phonenumber" in columns else None
        while True:
            pending.clear()
            try:
                record = next(reader)
                problem = None
            except StopIteration:
                return
            except csv.Error as exc:
                record, problem = None, f"not valid CSV ({exc})"
            text = "".join(pending)
            order = OrderLine(self.line_number - len(pending) + 1, text)
            if record == [] or (record is None and not text.strip()):
                continue
            try:
                if (
                    problem is None
                    and (problem := utf8_problem(text)) is None
                    and len(record or []) != len(header)
                ):
                    problem = f"has {len(record or [])} columns, the header has {len(header)}"
                if problem:
                    raise ApiError(400, "invalid_line", problem)
                assert record is not None
                order.email, order.phone = order_identifiers(
                    record[email_at] if email_at is not None else None,
                    record[phone_at] if phone_at is not None else None,
                    self.region,
                )
            except ApiError as exc:
                order.reason = exc.message
            yield order


class Rejects:
    """The rejected lines, verbatim, in a file that imports like the original once fixed:
    a CSV file's rejects come after its header row (`header`, "" for JSON Lines)."""

    def __init__(self, path: str | None):
        self.file = open(path, "wb") if path else None  # noqa: SIM115 (closed by close())
        self.header = ""
        self.header_written = False

    def add(self, order: OrderLine) -> None:
        if self.file is None:
            return
        if self.header and not self.header_written:
            self.write(self.header)
            self.header_written = True
        self.write(order.text)

    def write(self, text: str) -> None:
        assert self.file is not None
        if not text.endswith(("\n", "\r")):
            text += "\n"
        self.file.write(text.encode("utf-8", "surrogateescape"))

    def close(self) -> None:
        if self.file is None:
            return
        if self.header and not self.header_written:
            self.write(self.header)  # no rejects: still a valid (empty) import file
        self.file.close()


# -- identify's rules over the batch's customers, in memory ------------------


class BatchCustomers:
    """The customers one import batch touches, in memory: every live row of the connected
    components of the batch's identifiers (locked), indexed by email, phone and link.

    `identify` applies one order with identify's own pure `plan_identify`, so the import
    and the API cannot decide differently.
    """

    def __init__(self, rows: Iterable[Row]):
        self.rows: dict[int, Row] = {}
        self.by_email: dict[str, set[int]] = defaultdict(set)
        self.by_phone: dict[str, set[int]] = defaultdict(set)
        self.linked: dict[int, set[int]] = defaultdict(set)  # id -> rows whose linkedId is id
        self.changed: set[int] = set()  # existing rows whose link or precedence changed
        self.inserted: list[int] = []  # temporary ids, in creation order
        for row in rows:
            self.add(dict(row))

    def add(self, row: Row) -> None:
        self.rows[row["id"]] = row
        if row["email"] is not None:
            self.by_email[row["email"]].add(row["id"])
        if row["phoneNumber"] is not None:
            self.by_phone[row["phoneNumber"]].add(row["id"])
        if row["linkedId"] is not None:
            self.linked[row["linkedId"]].add(row["id"])

    def component(self, email: str | None, phone: str | None) -> list[Row]:
        """Every row connected to the request's identifiers (shared email, shared phone, link)."""
        seen: set[int] = set()
        todo = [*(self.by_email.get(email, ()) if email is not None else ())]
        todo += self.by_phone.get(phone, ()) if phone is not None else ()
        while todo:
            row_id = todo.pop()
            if row_id in seen:
                continue
            seen.add(row_id)
            row = self.rows[row_id]
            todo.extend(self.by_email.get(row["email"], ()) if row["email"] is not None else ())
            todo.extend(self.by_phone.get(row["phoneNumber"], ()) if row["phoneNumber"] is not None else ())
            if row["linkedId"] in self.rows:
                todo.append(row["linkedId"])
            todo.extend(self.linked.get(row_id, ()))
        return [self.rows[row_id] for row_id in seen]

    def relink(self, row_id: int, precedence: str, linked_id: int | None, now: datetime) -> None:
        row = self.rows[row_id]
        if row["linkedId"] is not None:
            self.linked[row["linkedId"]].discard(row_id)
        row["linkPrecedence"], row["linkedId"], row["updatedAt"] = precedence, linked_id, now
        if linked_id is not None:
            self.linked[linked_id].add(row_id)
        if row_id < TEMP_ID_BASE:
            self.changed.add(row_id)

    def identify(self, email: str | None, phone: str | None, now: datetime) -> str:
        """Apply one order to the rows in memory, as identify would; returns its outcome."""
        rows = self.component(email, phone)
        plan = plan_identify(rows, email, phone, now)
        primary_id = plan.rows[0]["id"]
        if plan.promoted is not None:
            self.relink(plan.promoted["id"], "primary", None, now)
        for row_id in plan.relinked:
            self.relink(row_id, "secondary", primary_id, now)
        if plan.inserted is not None:
            new = plan.inserted
            new["id"] = TEMP_ID_BASE + len(self.inserted)
            new["updatedAt"] = new["createdAt"]
            self.inserted.append(new["id"])
            self.add(new)
        return plan.outcome


# -- the batch's transaction ------------------------------------------------


class OrderClock:
    """Each order's `now`: the wall clock, but strictly after the previous order's, so the
    file's order is the rows' (createdAt) order even when lines are microseconds apart."""

    def __init__(self) -> None:
        self.last = datetime.min

    def now(self) -> datetime:
        self.last = max(utcnow(), self.last + ONE_MICROSECOND)
        return self.last


def import_batch(db: Database, batch: OrderBatch, clock: OrderClock) -> Counter[str]:
    """Apply a batch of orders in file order inside the caller's transaction; returns the
    outcome counts (created, linked, merged, repaired, unchanged).

    identify's protocol (apply_identify) for many requests at once: 0. on a
    consistent table, count the settled orders as unchanged (`settled_orders`,
    identify's fast path, read ahead by `ReadAhead` or now) and go on with the
    others; 1. touch every identifier of those (one statement, sorted: one lock
    order); 2. lock every live row of their customers (`lock_customer`); 3.
    decide line by line in memory with `plan_identify`; 4. write the final
    state with multi-row statements, touching the identifiers of every existing
    row whose link changes (as write_plan does). Raises
    RetryTransaction("customer_erased") when an erasure committed between the
    settled read and the end (docs/import.md).
    """
    orders = batch.pairs()
    outcomes: Counter[str] = Counter()
    erasures = None
    if trusts_fast_path(db):
        # identify's fast path for the whole batch: a repeat customer's order changes nothing.
        erasures, settled = batch.take_settled_read() or settled_read(db, orders)
        outcomes["unchanged"] = sum(settled)
        orders = [order for order, done in zip(orders, settled, strict=True) if not done]
        if not orders:
            return outcomes
    emails = {email for email, _ in orders if email is not None}
    phones = {phone for _, phone in orders if phone is not None}
    identifiers = sorted([("email", e) for e in emails] + [("phone", p) for p in phones])
    db.run_many("touch_identifier_rows", [{"kind": k, "value": v, "version": 1} for k, v in identifiers])
    customers = BatchCustomers(lock_customer(db, emails, phones))
    for email, phone in orders:
        outcomes[customers.identify(email, phone, clock.now())] += 1
    write_batch(db, customers)
    if erasures is not None and erasure_count(db) != erasures:
        # The settled orders were applied at the lock-free read, the others now. Only an
        # erasure can make a settled order unsettled; if one came in between, an order
        # before it in the file may have been applied after it: start the batch over.
        raise RetryTransaction("customer_erased")
    return outcomes


def erasure_count(db: Database) -> int:
    """How many erasures have committed. A count, not the newest id: ids are taken at insert,
    so an erasure can commit after one with a larger id (and on Galera every node has its own)."""
    row = db.one("count_erasures")
    return int(row["n"]) if row else 0


def settled_read(db: Database, orders: list[tuple[str | None, str | None]]) -> tuple[int, list[bool]]:
    """`settled_orders`, with the erasure count read just before it (for import_batch's check)."""
    erasures = erasure_count(db)
    return erasures, settled_orders(db, orders)


def settled_orders(db: Database, orders: list[tuple[str | None, str | None]]) -> list[bool]:
    """For each order, True when identify would change nothing: every identifier it carries is
    stored, and all of them belong to one customer. One lock-free read for the batch.

    Only on a table known to be consistent (`trusts_fast_path`), where an identifier
    belongs to one customer and COALESCE(linkedId, id) is its primary. A settled order
    stays settled whatever the orders before it in the batch do (they only add rows
    and merge customers), so skipping it leaves exactly the state replaying it would.
    """
    emails = sorted({email for email, _ in orders if email is not None})
    phones = sorted({phone for _, phone in orders if phone is not None})
    owners: dict[tuple[str, str], set[int]] = defaultdict(set)
    for row in db.all("select_identifier_owners", emails=emails, phones=phones):
        if row["email"] is not None:
            owners["email", row["email"]].add(row["customerId"])
        if row["phoneNumber"] is not None:
            owners["phone", row["phoneNumber"]].add(row["customerId"])
    settled = []
    for email, phone in orders:
        customers: set[int] = set()
        stored = True
        for kind, value in (("email", email), ("phone", phone)):
            if value is not None:
                stored = stored and (kind, value) in owners
                customers |= owners.get((kind, value), set())
        settled.append(stored and len(customers) == 1)
    return settled


def write_batch(db: Database, customers: BatchCustomers) -> None:
    """Write what the batch changed: relinked rows, new primaries, then new secondaries."""
    rows = customers.rows
    if customers.changed:
        # As write_plan: the identifiers of every existing row whose link changes, so a
        # racing request on another cluster node that linked to a demoted customer conflicts.
        db.run("touch_contact_identifiers", ids=sorted(customers.changed))
    db.run_many(
        "store_contact_rows", [stored_row_params(rows[row_id]) for row_id in sorted(customers.changed)]
    )
    new = [rows[row_id] for row_id in customers.inserted]
    real_ids: dict[int, int] = {}
    primaries = [row for row in new if row["linkPrecedence"] == "primary"]
    if primaries:
        top = db.one("select_max_contact_id")
        db.run_many("insert_contact", [insert_params(row, None) for row in primaries])
        after = int(top["top"]) if top else 0
        ids = {
            (r["email"], r["phoneNumber"]): r["id"] for r in db.all("select_primaries_after_id", after=after)
        }
        for row in primaries:
            real_ids[row["id"]] = ids[(row["email"], row["phoneNumber"])]
    secondaries = [
        insert_params(row, real_ids.get(row["linkedId"], row["linkedId"]))
        for row in new
        if row["linkPrecedence"] == "secondary"
    ]
    top = db.one("select_max_contact_id")
    db.run_many("insert_contact", secondaries)
    record_batch_events(db, customers, real_ids, int(top["top"]) if top and secondaries else None)


def record_batch_events(
    db: Database, customers: BatchCustomers, real_ids: dict[int, int], secondaries_after: int | None
) -> None:
    """History for what a batch changed, in its transaction: one `imported` event per customer,
    naming its new primary, the rows the batch re-pointed and the rows it inserted."""
    touched: dict[int, set[int]] = defaultdict(set)
    for row_id in real_ids.values():
        touched[row_id].add(row_id)
    for row_id in customers.changed:
        row = customers.rows[row_id]
        touched[row["linkedId"] or row_id].add(row_id)
    if secondaries_after is not None:
        batch_primaries = {row["linkedId"] for row in customers.rows.values() if row["linkedId"]}
        batch_primaries |= set(real_ids.values()) | {i for i in customers.rows if i < TEMP_ID_BASE}
        for row in db.all("select_secondaries_after_id", after=secondaries_after):
            if row["linkedId"] in batch_primaries:
                touched[row["linkedId"]].add(row["id"])
    record_imported(db, {customer_id: sorted(ids) for customer_id, ids in sorted(touched.items())}, utcnow())


def insert_params(row: Row, linked_id: int | None) -> dict[str, Any]:
    """insert_contact's parameters for a row the batch created."""
    return {
        "email": row["email"],
        "phone": row["phoneNumber"],
        "linked_id": linked_id,
        "link_precedence": row["linkPrecedence"],
        "created_at": row["createdAt"],
    }


# -- the command: batches, progress, summary --------------------------------


@dataclass
class ImportTotals:
    """What an import did so far, for the progress line and the summary."""

    started: float = field(default_factory=time.monotonic)
    lines: int = 0  # order lines read (blank lines and the header not counted)
    imported: int = 0  # lines applied in committed batches
    rejected: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    last_line: int = 0  # the file line of the last order in a committed batch
    reader_rss_mib: float = 0.0  # the peak memory of the process reading the file (ReadAhead)

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.imported / elapsed if elapsed > 0 else 0.0

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        o = self.outcomes
        return (
            f"lines read {self.lines:,}, imported {self.imported:,}: customers created {o['created']:,}, "
            f"rows linked {o['linked']:,}, merges {o['merged']:,}, repaired {o['repaired']:,}, "
            f"unchanged {o['unchanged']:,}; "
            f"rejected {self.rejected:,}; {elapsed:.1f} s, {self.rate():,.0f} orders/s, "
            f"peak RSS {peak_rss_mib():.0f} MiB, reading {self.reader_rss_mib:.0f} MiB"
        )


class ImportProgress:
    """A click progress bar (bytes of the file, rate, ETA) on a terminal; a plain line every
    PROGRESS_EVERY_S seconds otherwise, or when the size is unknown (standard input)."""

    def __init__(self, size: int | None, totals: ImportTotals, quiet: bool):
        self.totals = totals
        self.position = 0
        self.next_line_at = time.monotonic() + PROGRESS_EVERY_S
        self.quiet = quiet
        self.bar: Any = None
        if not quiet and size and sys.stderr.isatty():
            self.bar = click.progressbar(
                length=size,
                label="importing",
                file=sys.stderr,
                show_eta=True,
                show_percent=True,
                item_show_func=lambda _: f"{totals.imported:,} orders, {totals.rate():,.0f}/s",
            )
            self.bar.__enter__()

    def update(self, position: int) -> None:
        if self.bar is not None:
            self.bar.update(position - self.position, position)
        elif not self.quiet and time.monotonic() >= self.next_line_at:
            self.next_line_at = time.monotonic() + PROGRESS_EVERY_S
            t = self.totals
            click.echo(
                f"import: {t.imported:,} orders imported, {t.rejected:,} rejected, {t.rate():,.0f} orders/s",
                err=True,
            )
        self.position = position

    def close(self) -> None:
        bar, self.bar = self.bar, None
        if bar is not None:
            bar.__exit__(None, None, None)


@dataclass
class OrderBatch:
    """What one import transaction applies: up to --batch-size valid orders in file order,
    the invalid lines read before the last of them, and the settled read made ahead."""

    orders: list[tuple[int, str | None, str | None]] = field(default_factory=list)  # (line, email, phone)
    rejected: list[OrderLine] = field(default_factory=list)
    lines: int = 0  # order lines read for this batch, valid and rejected
    bytes_read: int = 0  # the file's position after it, for the progress bar
    header: str = ""  # the CSV header row as read ("" for JSON Lines), for --rejects
    settled: tuple[int, list[bool]] | None = None  # settled_read, made by ReadAhead

    def pairs(self) -> list[tuple[str | None, str | None]]:
        """The orders' canonical (email, phone), in file order."""
        return [(email, phone) for _, email, phone in self.orders]

    def take_settled_read(self) -> tuple[int, list[bool]] | None:
        """The settled read made ahead, once: a retried transaction reads again."""
        settled, self.settled = self.settled, None
        return settled


def order_batches(orders: OrderFile, size: int) -> Iterator[OrderBatch]:
    """The file in batches of `size` valid orders; a batch also ends at `size` rejected lines
    (memory never holds more), and the last may have fewer of either."""
    batch = OrderBatch()
    for order in orders.orders():
        batch.lines += 1
        if order.reason is None:
            batch.orders.append((order.number, order.email, order.phone))
        else:
            batch.rejected.append(order)
        if len(batch.orders) >= size or len(batch.rejected) >= size:
            batch.bytes_read, batch.header = orders.bytes_read, orders.header
            yield batch
            batch = OrderBatch()
    if batch.lines:
        batch.bytes_read, batch.header = orders.bytes_read, orders.header
        yield batch


@dataclass
class ReadEnd:
    """The reading process's last message: the file is read."""

    header: str  # the CSV header row as read ("" for JSON Lines): a header-only file has no batch
    file_lines: int  # the file's lines, blank ones and the header included (0: an empty file)
    peak_rss_mib: float  # the reading process's peak memory


class ReaderStopped(Exception):
    """The process reading the file ended without finishing it (killed, or out of memory)."""


class ReadAhead:
    """Reads the file into batches, with each batch's settled read, in a process of its own,
    ahead of the batch being written; iterating gives the batches in file order.

    Why a process: reading, validating and the settled read are a third of the
    import's Python work; in a thread they would wait for the one interpreter lock,
    in a forked process they run on the other core while this one writes
    (docs/import.md, "Performance"). Reading ahead is sound: a settled order stays
    settled whatever is applied after the read, except through an erasure, which
    import_batch detects by the erasure count read before the settled read.

    The reading process has its own connection and never touches this one's. It
    ignores Ctrl-C (this process stops it), and ends when this one does: its next
    send finds the pipe closed. Its errors (the file refused, a misconfigured
    database) are raised here; a failed settled read is left to the transaction.
    """

    def __init__(self, orders: OrderFile, size: int, db: Database):
        receiving, sending = multiprocessing.Pipe(duplex=False)
        self.pid = os.fork()
        if self.pid == 0:
            receiving.close()
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            code = 1
            try:
                code = self.run(orders, size, db, sending)
            finally:
                os._exit(code)  # no atexit, no flushing of buffers this process shares
        sending.close()
        self.receiving = receiving
        self.status: int | None = None
        self.end: ReadEnd | None = None  # once every batch was given

    @staticmethod
    def run(orders: OrderFile, size: int, db: Database, sending: Any) -> int:
        """The reading process: every batch, then a ReadEnd; an error instead if one stops it.
        Returns its exit status."""
        try:
            for batch in order_batches(orders, size):
                if batch.orders:
                    with contextlib.suppress(RetryTransaction, DatabaseUnavailable):
                        batch.settled = settled_read(db, batch.pairs()) if trusts_fast_path(db) else None
                sending.send(batch)
            sending.send(ReadEnd(orders.header, orders.line_number, peak_rss_mib()))
            return 0
        except BrokenPipeError:  # the importing process stopped
            return 1
        except Exception as exc:
            if not isinstance(exc, ImportRefused | DatabaseMisconfigured):
                exc = ReaderStopped(f"the process reading the file failed: {exc!r}")
            with contextlib.suppress(OSError):
                sending.send(exc)
            return 1

    def __iter__(self) -> Iterator[OrderBatch]:
        while True:
            try:
                item = self.receiving.recv()
            except EOFError:
                raise ReaderStopped(f"the process reading the file ended ({self.wait()})") from None
            if isinstance(item, Exception):
                raise item
            if isinstance(item, ReadEnd):
                self.end = item
                return
            yield item

    def wait(self) -> str:
        """Reap the reading process; how it ended, for a message."""
        if self.status is None:
            _, self.status = os.waitpid(self.pid, 0)
        if os.WIFSIGNALED(self.status):
            return f"killed by signal {os.WTERMSIG(self.status)}"
        return f"exit status {os.waitstatus_to_exitcode(self.status)}"

    def close(self) -> None:
        """Stop the reading process if it still runs, and reap it."""
        self.receiving.close()
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            self.wait()


def raise_interrupt(signum: int, _frame: Any) -> None:
    """SIGTERM stops an import as Ctrl-C does: the open batch rolls back."""
    raise KeyboardInterrupt


@click.command("import")
@click.argument("file", type=click.File("rb"))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(ORDER_FORMATS),
    default="auto",
    show_default=True,
    help="csv (a header row naming email and/or phoneNumber) or jsonl (one JSON object a line); "
    "auto: JSON Lines when the first non-blank line starts with '{'.",
)
@click.option(
    "--rejects",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the rejected lines here, as they were (with the CSV header): fix them and import this file.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 5000),  # SQLite binds at most 32766 parameters a statement
    default=IMPORT_BATCH_LINES,
    show_default=True,
    help="Orders per transaction.",
)
@click.option("--quiet", is_flag=True, help="No progress, only rejected lines and the summary.")
@with_appcontext
def import_orders(file: IO[bytes], fmt: str, rejects: str | None, batch_size: int, quiet: bool) -> None:
    """Import historical orders from FILE ('-' reads standard input): the result equals sending
    each valid line to POST /identify in file order. Invalid lines are reported (line number
    and reason) and skipped. Re-running the same file changes nothing it already imported, so
    an interrupted import is finished by running it again. docs/import.md.

    Exit status: 0 every line imported; 3 finished, some lines rejected; 1 refused or stopped
    (nothing after the last committed batch was written).
    """
    settings = current_app.config
    totals = ImportTotals()
    orders = OrderFile(file, fmt, settings["FLUXKART_PHONE_REGION"])
    size = None
    with contextlib.suppress(OSError, ValueError):
        size = os.fstat(file.fileno()).st_size if file.seekable() else None
    if not quiet:
        click.echo(f"importing into {database_location(settings)}", err=True)
    progress = ImportProgress(size, totals, quiet)
    rejected = Rejects(rejects)
    db = get_db()
    clock = OrderClock()
    previous = signal.signal(signal.SIGTERM, raise_interrupt)

    def reject(order: OrderLine) -> None:
        totals.rejected += 1
        click.echo(f"line {order.number}: {order.reason}", err=True)
        rejected.add(order)

    status = 0
    held_since = time.monotonic()
    reader = None
    try:
        db.connect()  # before the fork: the schema is created (if missing) by this connection alone
        reader = ReadAhead(orders, batch_size, new_database())
        for batch in reader:
            totals.lines += batch.lines
            rejected.header = batch.header
            for order in batch.rejected:
                reject(order)
            if batch.orders:
                work = functools.partial(import_batch, batch=batch, clock=clock)
                outcomes = in_transaction(db, work, "import")
                if db.dialect == "sqlite" and time.monotonic() - held_since > SQLITE_HOLD_S:
                    time.sleep(SQLITE_PAUSE_S)  # let the writers waiting in line in
                    held_since = time.monotonic()
                totals.outcomes.update(outcomes)
                totals.imported += len(batch.orders)
                totals.last_line = batch.orders[-1][0]
            progress.update(batch.bytes_read)
        assert reader.end is not None
        rejected.header = reader.end.header
        totals.reader_rss_mib = reader.end.peak_rss_mib
        if reader.end.file_lines == 0:
            click.echo("the file is empty: nothing to import", err=True)
    except (ImportRefused, DatabaseMisconfigured) as exc:
        progress.close()
        click.echo(f"refused: {exc}", err=True)
        status = 1
    except (DatabaseUnavailable, ReaderStopped, KeyboardInterrupt) as exc:
        progress.close()
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"stopped: {database_problem(exc)}"
        done = (
            f"Imported every order up to line {totals.last_line}; the batch after it was rolled back"
            if totals.imported
            else "Nothing was imported"
        )
        click.echo(
            f"{why}. {done}. Run the same command again to finish: orders already imported change nothing.",
            err=True,
        )
        status = 130 if isinstance(exc, KeyboardInterrupt) else 1
    finally:
        if reader is not None:
            reader.close()
        signal.signal(signal.SIGTERM, previous)
        progress.close()
        rejected.close()
        orders.release()
        db.close()
    click.echo(totals.summary())
    if status == 0 and totals.rejected:
        status = 3
    if status:
        click.get_current_context().exit(status)


# --------------------------------------------------------------------------
# Migrate: bring an existing Contact table to this schema (SPEC, "Commands")
# --------------------------------------------------------------------------

# Contact's columns as information_schema describes a table that
# sql/mysql/schema.sql created: name -> (type, nullable, collation, extra).
# tests/test_migrate.py checks this against such a table.
MYSQL_CONTACT_COLUMNS: dict[str, tuple[str, str, str | None, str]] = {
    "id": ("int", "NO", None, "auto_increment"),
    "phoneNumber": ("varchar(32)", "YES", "utf8mb4_bin", ""),
    "email": ("varchar(255)", "YES", "utf8mb4_bin", ""),
    "linkedId": ("int", "YES", None, ""),
    "linkPrecedence": ("enum('primary','secondary')", "NO", "utf8mb4_bin", ""),
    "createdAt": ("datetime(6)", "NO", None, ""),
    "updatedAt": ("datetime(6)", "NO", None, ""),
    "deletedAt": ("datetime(6)", "YES", None, ""),
}
MYSQL_CONTACT_ENGINE = "InnoDB"
MYSQL_CONTACT_COLLATION = "utf8mb4_bin"
# The service's indexes on Contact (both dialects): name -> (column, the
# statement adding it on MySQL, the index the replaced implementation's
# `run.sh --indexes` made on that column, the statement renaming that one).
CONTACT_INDEXES = {
    "Contact_email": ("email", "add_contact_email_index", "idx_email", "rename_legacy_email_index"),
    "Contact_phoneNumber": (
        "phoneNumber",
        "add_contact_phone_index",
        "idx_phoneNumber",
        "rename_legacy_phone_index",
    ),
    "Contact_linkedId": (
        "linkedId",
        "add_contact_linked_id_index",
        "idx_linkedId",
        "rename_legacy_linked_id_index",
    ),
}
# How many of the rows that would lose data migrate names (it also says how many there are).
MIGRATE_REFUSAL_LIST = 50
# How long migrate's ALTERs wait for Contact's metadata lock before giving up.
MIGRATE_LOCK_WAIT_S = 10
INT_DISPLAY_WIDTH = re.compile(r"^(tinyint|smallint|mediumint|int|bigint)\(\d+\)")
CREATE_TABLE_NAME = re.compile(r"^CREATE TABLE IF NOT EXISTS (\w+)", re.IGNORECASE)
CREATE_INDEX_NAME = re.compile(r"^CREATE INDEX IF NOT EXISTS (\w+)", re.IGNORECASE)


@dataclass
class MigrationStep:
    """One change migrate makes: what changes, what it rewrites or locks, and how."""

    change: str
    locking: str
    run: Callable[[Database], None]
    details: list[str] = field(default_factory=list)
    # True when the step changes Contact's values or column types (not only indexes or other tables).
    rewrites: bool = False


@dataclass
class MigrationPlan:
    """Everything migrate would do to this database, decided before it changes anything."""

    dialect: str
    server: str
    contact_rows: int = 0
    steps: list[MigrationStep] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Rows holding a value the new columns cannot hold: the first few, and how many in all.
    unconvertible: list[Row] = field(default_factory=list)
    unconvertible_total: int = 0


def schema_names(schema: list[str], pattern: re.Pattern[str]) -> list[str]:
    """The tables (or indexes) the schema's statements create, in file order."""
    return [m.group(1) for statement in schema if (m := pattern.match(statement))]


def plan_migration(db: Database) -> MigrationPlan:
    """Inspect the database and decide every step migrate takes (changes nothing).

    Out: the plan, whose `unconvertible` rows (when any) mean migrate must refuse.
    Errors: DatabaseUnavailable / RetryTransaction from the driver; ClickException
    when Contact lacks a column the service needs (not a table migrate knows).
    """
    version = db.one("select_server_version")
    plan = MigrationPlan(db.dialect, str(version["version"] if version else "?"))
    tables = {str(row["name"]) for row in db.all("select_table_names")}
    state: dict[str, str] = {}
    if "ServiceState" in tables:
        state = {row["name"]: row["value"] for row in db.all("select_service_state")}
    if "Contact" in tables:
        unconvertible = db.all("select_unconvertible_contacts", limit=MIGRATE_REFUSAL_LIST)
        if unconvertible:
            plan.unconvertible = unconvertible
            plan.unconvertible_total = int(unconvertible[0]["total"])
            return plan
        plan_fills(db, plan)
        if db.dialect == "mysql":
            plan_mysql_contact(db, plan)
        else:
            plan_sqlite_contact(db, plan, "sqlite_sequence" in tables)
    # Rows that needed filling or converting were written by something else, whatever
    # ServiceState says (e.g. a dump of the old table restored over a migrated one).
    adopting = "Contact" in tables and (state.get("schema") != "2" or any(s.rewrites for s in plan.steps))
    plan_schema(db, plan, tables)
    plan_service_state(plan, state, adopting)
    return plan


def plan_fills(db: Database, plan: MigrationPlan) -> None:
    """The step filling the NULLs a legacy table holds where the service's columns are NOT NULL."""
    counts = db.one("count_migrate_fills") or {}
    plan.contact_rows = int(counts.get("contact_rows") or 0)
    missing = {
        key: int(counts.get(key) or 0)
        for key in ("missing_link_precedence", "missing_created_at", "missing_updated_at")
    }
    if not any(missing.values()):
        return
    earliest = utcnow()
    if missing["missing_created_at"] or missing["missing_updated_at"]:
        earliest = (db.one("select_earliest_created_at") or {}).get("earliest") or earliest
    rules = {
        "missing_link_precedence": "linkPrecedence: 'secondary' where linkedId is set, else 'primary'",
        "missing_created_at": "createdAt: the row's updatedAt, else its deletedAt, else the oldest "
        f"createdAt in the table ({earliest})",
        "missing_updated_at": "updatedAt: the row's createdAt (as filled)",
    }
    locking = "one UPDATE: locks only the rows it changes, until it commits; no rewrite"
    if db.dialect == "sqlite":
        locking = "one UPDATE inside the migrate transaction (the database's write lock); no rewrite"
    plan.steps.append(
        MigrationStep(
            "fill the values the service's columns cannot leave NULL",
            locking,
            run_named("fill_missing_values", earliest=earliest),
            [f"{rules[key]}: {count:,} rows" for key, count in missing.items() if count],
            rewrites=True,
        )
    )


def run_named(*names: str, **params: Any) -> Callable[[Database], None]:
    """A step that runs these named statements in order."""

    def run(db: Database) -> None:
        for name in names:
            db.run(name, **params)

    return run


def describe_mysql_column(column: tuple[str, str, str | None, str]) -> str:
    """'varchar(32) utf8mb4_bin NULL' for the plan."""
    kind, nullable, collation, extra = column
    words = [kind, collation or "", "NULL" if nullable == "YES" else "NOT NULL", extra]
    return " ".join(word for word in words if word)


def plan_mysql_contact(db: Database, plan: MigrationPlan) -> None:
    """Steps bringing Contact's columns, table options and indexes to sql/mysql/schema.sql's."""
    actual = {}
    for row in db.all("select_contact_columns"):
        kind = INT_DISPLAY_WIDTH.sub(r"\1", str(row["type"]).lower())  # MariaDB says int(11), MySQL 8 int
        extra = "auto_increment" if "auto_increment" in str(row["extra"] or "").lower() else ""
        actual[str(row["name"])] = (kind, str(row["nullable"]), row["collation"], extra)
    missing = [name for name in MYSQL_CONTACT_COLUMNS if name not in actual]
    if missing:
        raise click.ClickException(
            f"Contact has no column {', '.join(missing)}: it is not a table migrate knows how to adopt"
        )
    changes = [
        f"{name}: {describe_mysql_column(actual[name])} -> {describe_mysql_column(target)}"
        for name, target in MYSQL_CONTACT_COLUMNS.items()
        if actual[name] != target
    ]
    plan.notes += [
        f"column {name} is not the service's: left as it is"
        for name in actual
        if name not in MYSQL_CONTACT_COLUMNS
    ]
    table = db.one("select_contact_table") or {}
    if table.get("engine") != MYSQL_CONTACT_ENGINE:
        changes.append(f"storage engine: {table.get('engine')} -> {MYSQL_CONTACT_ENGINE}")
    if changes:
        if table.get("collation") != MYSQL_CONTACT_COLLATION:
            changes.append(f"table default collation: {table.get('collation')} -> {MYSQL_CONTACT_COLLATION}")
        plan.steps.append(
            MigrationStep(
                "convert Contact's columns to the service's types and collations (identifiers compare "
                "byte for byte from now on; repair re-links what the old collation joined)",
                "rewrites the table: ALGORITHM=COPY, LOCK=SHARED (reads go on; writes wait until it ends)",
                run_named("convert_contact_columns"),
                changes,
                rewrites=True,
            )
        )
    elif table.get("collation") != MYSQL_CONTACT_COLLATION:
        plan.steps.append(
            MigrationStep(
                f"set Contact's default collation: {table.get('collation')} -> {MYSQL_CONTACT_COLLATION}",
                "metadata only: ALGORITHM=INSTANT (only the brief metadata lock every ALTER takes)",
                run_named("set_contact_default_collation"),
            )
        )
    indexes = {str(row["name"]): str(row["column_list"]) for row in db.all("select_contact_indexes")}
    known = {"PRIMARY", *CONTACT_INDEXES}
    if not any(name in indexes or legacy in indexes for name, (_, _, legacy, _) in CONTACT_INDEXES.items()):
        # The reference's production shape: all three in one statement, one read of the table.
        plan.steps.append(
            MigrationStep(
                "add indexes " + ", ".join(f"{name} on {c[0]}" for name, c in CONTACT_INDEXES.items()),
                "builds the indexes in one read of the table, without rewriting it: ALGORITHM=INPLACE, "
                "LOCK=NONE (reads and writes go on)",
                run_named("add_contact_indexes"),
            )
        )
        indexes.update({name: column for name, (column, *_) in CONTACT_INDEXES.items()})
    for name, (column, add, legacy, rename) in CONTACT_INDEXES.items():
        if indexes.get(name) == column:
            continue
        if indexes.get(legacy) == column and name not in indexes:
            known.add(legacy)
            plan.steps.append(
                MigrationStep(
                    f"rename index {legacy} on {column} to {name}",
                    "metadata only: ALGORITHM=INSTANT (only the brief metadata lock every ALTER takes)",
                    run_named(rename),
                )
            )
        else:
            plan.steps.append(
                MigrationStep(
                    f"add index {name} on {column}",
                    "builds the index without rewriting the table: ALGORITHM=INPLACE, LOCK=NONE "
                    "(reads and writes go on)",
                    run_named(add),
                )
            )
    plan.notes += [
        f"index {name} on ({columns}) is not the service's: left as it is"
        for name, columns in indexes.items()
        if name not in known
    ]


def sqlite_definitions(create_table: str) -> dict[str, str]:
    """A CREATE TABLE statement's column and constraint definitions, whitespace collapsed.

    Keyed by column name (unquoted); table constraints by their own text.
    """
    body = create_table[create_table.index("(") + 1 : create_table.rindex(")")]
    parts, depth, current = [], 0, ""
    for ch in body:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    definitions = {}
    for part in parts:
        text = " ".join(part.split())
        name, _, rest = text.partition(" ")
        if name.upper() in ("PRIMARY", "UNIQUE", "CHECK", "FOREIGN", "CONSTRAINT"):
            definitions[text] = text
        else:
            definitions[name.strip('"`[]')] = rest
    return definitions


def plan_sqlite_contact(db: Database, plan: MigrationPlan, has_sequence: bool) -> None:
    """The rebuild step when Contact's definition differs from sql/sqlite/schema.sql's."""
    current = sqlite_definitions(str((db.one("select_contact_definition") or {})["sql"]))
    target = sqlite_definitions(db.queries["create_contact_new"])
    missing = [name for name in target if name not in current and not name.startswith(("CHECK", "PRIMARY"))]
    if missing:
        raise click.ClickException(
            f"Contact has no column {', '.join(missing)}: it is not a table migrate knows how to adopt"
        )
    changes = [
        f"{name}: {current.get(name, '(none)')} -> {target.get(name, '(none)')}"
        for name in dict.fromkeys([*target, *current])
        if current.get(name) != target.get(name)
    ]
    if not changes:
        return
    indexes = {str(row["name"]): str(row["column_list"]) for row in db.all("select_contact_indexes")}
    for name, columns in indexes.items():
        covered = [service for service, (column, *_) in CONTACT_INDEXES.items() if column == columns]
        if name in CONTACT_INDEXES:
            continue
        changes.append(
            f"index {name} on ({columns}) goes with the old table"
            + (f"; the service's {covered[0]} replaces it" if covered else "; recreate it if you need it")
        )
    sequence = "select_contact_sequence" if has_sequence else "select_contact_max_id"

    def rebuild(db: Database) -> None:
        seq = int((db.one(sequence) or {}).get("seq") or 0)
        for name in (
            "create_contact_new",
            "copy_contacts_to_new",
            "drop_legacy_contact",
            "rename_new_contact",
        ):
            db.run(name)
        db.run("forget_contact_sequence")
        db.run("set_contact_sequence", seq=seq)

    plan.steps.append(
        MigrationStep(
            "rebuild Contact with the service's columns (new table, copy every row with its id, drop "
            "the old one, rename; the AUTOINCREMENT counter is kept; timestamps widened to microseconds)",
            "rewrites the table inside the migrate transaction, which holds the database's write lock "
            "until it commits (readers go on; writers wait)",
            rebuild,
            changes,
            rewrites=True,
        )
    )


def plan_schema(db: Database, plan: MigrationPlan, tables: set[str]) -> None:
    """The step creating the tables (SQLite: and indexes) the schema has and this database lacks."""
    changes = [
        f"create table {name} (new and empty)"
        for name in schema_names(db.schema, CREATE_TABLE_NAME)
        if name not in tables
    ]
    if db.dialect == "sqlite" and "Contact" in tables:
        rebuilt = any(step.change.startswith("rebuild") for step in plan.steps)
        present = set() if rebuilt else {str(r["name"]) for r in db.all("select_contact_indexes")}
        changes += [
            f"add index {name} on {CONTACT_INDEXES[name][0]} (holds the write lock while it builds)"
            for name in schema_names(db.schema, CREATE_INDEX_NAME)
            if name in CONTACT_INDEXES and name not in present
        ]
    if changes:
        plan.steps.append(
            MigrationStep(
                "create what the service's schema has and this database lacks (the schema file's "
                "CREATE ... IF NOT EXISTS statements)",
                "new tables lock nothing else",
                create_schema,
                changes,
            )
        )


def create_schema(db: Database) -> None:
    """A step running the schema file's CREATE ... IF NOT EXISTS statements."""
    db.connect()
    db.ensure_schema()


def plan_service_state(plan: MigrationPlan, state: dict[str, str], adopting: bool) -> None:
    """The last step: ServiceState says the schema is the service's, and whether the data needs repair."""
    writes: dict[str, str] = {}
    if state.get("schema") != "2":
        writes["schema"] = "2"
    if adopting or "consistent" not in state:
        writes["consistent"] = "0" if plan.contact_rows else "1"
    if not writes:
        return
    meaning = {
        ("schema", "2"): "the Contact table has the service's schema",
        ("consistent", "1"): "the table is empty, so every customer satisfies the rules",
        ("consistent", "0"): f"the {plan.contact_rows:,} rows were written by something else: "
        "run `flask --app fluxkart repair` next (the service may serve meanwhile)",
    }
    plan.steps.append(
        MigrationStep(
            "record in ServiceState: " + ", ".join(f"{name}={value}" for name, value in writes.items()),
            "one-row writes to ServiceState",
            write_service_state(writes),
            [f"{name}={value}: {meaning[(name, value)]}" for name, value in writes.items()],
        )
    )


def write_service_state(writes: dict[str, str]) -> Callable[[Database], None]:
    """A step that sets these ServiceState rows."""

    def run(db: Database) -> None:
        for name, value in writes.items():
            db.run("upsert_service_state", key=name, value=value)

    return run


def echo_plan(plan: MigrationPlan) -> None:
    """Print the plan: every step, what it changes, and what it rewrites or locks."""
    engine = "MySQL/MariaDB" if plan.dialect == "mysql" else "SQLite"
    click.echo(f"migrate: {engine} {plan.server}; Contact holds {plan.contact_rows:,} rows")
    if plan.dialect == "sqlite" and plan.steps:
        click.echo(
            "  all steps run in one transaction holding the database's write lock until it commits: "
            "readers go on, writers wait"
        )
    for note in plan.notes:
        click.echo(f"  note: {note}")
    for number, step in enumerate(plan.steps, 1):
        click.echo(f"  {number}. {step.change}")
        for detail in step.details:
            click.echo(f"       {detail}")
        click.echo(f"     locks: {step.locking}")
    if plan.steps and plan.contact_rows:
        click.echo(
            "  then: normalize every stored email and phone number with the API's own functions "
            "(repair's first pass), so orders find rows stored as sent from the first request on"
        )
        click.echo(
            "     locks: reads the table a page at a time; writes in short transactions that take "
            "identify's locks on the rows they change"
        )


def refusal_message(plan: MigrationPlan) -> str:
    """Why migrate changes nothing: the rows that would lose data, by id."""
    lines = [
        f"refusing to migrate, nothing was changed: {plan.unconvertible_total:,} Contact rows hold "
        "values the new columns cannot hold without losing data:"
    ]
    lines += [f"  id {row['id']}: {row['problem']}" for row in plan.unconvertible]
    if plan.unconvertible_total > len(plan.unconvertible):
        lines.append(f"  ... and {plan.unconvertible_total - len(plan.unconvertible):,} more")
    lines.append("Correct or clear these values (UPDATE Contact ... WHERE id = ...), then run migrate again.")
    return "\n".join(lines)


def apply_migration(db: Database, plan: MigrationPlan) -> None:
    """Run the plan's steps in order, printing each and how long it took.

    MySQL commits each step on its own (DDL commits anyway); SQLite runs them
    all in one transaction, so a failure leaves the file as it was.
    Errors: DatabaseUnavailable / RetryTransaction with the driver's error as __cause__.
    """
    if db.dialect == "mysql":
        db.run("set_migrate_session", lock_wait_s=MIGRATE_LOCK_WAIT_S)
    else:
        db.begin()
    number = 0
    try:
        for number, step in enumerate(plan.steps, 1):
            started = time.perf_counter()
            step.run(db)
            click.echo(f"  step {number} done in {time.perf_counter() - started:.1f} s")
        if db.dialect == "sqlite":
            db.commit()
    except (DatabaseUnavailable, DatabaseMisconfigured, RetryTransaction) as exc:
        db.rollback()
        raise click.ClickException(migrate_failure(db.dialect, number, exc)) from exc
    except BaseException:
        db.rollback()
        raise


def migrate_failure(dialect: str, number: int, exc: Exception) -> str:
    """What went wrong at step `number`, what is already done, and what to do."""
    cause = exc.__cause__ or exc
    if dialect == "sqlite" or number == 1:
        done = "nothing was changed" + (" (one transaction)" if dialect == "sqlite" else "")
    elif number == 2:
        done = "step 1 is done and stays done"
    else:
        done = f"steps 1 to {number - 1} are done and stay done"
    hint = ""
    if isinstance(exc, RetryTransaction) and exc.reason in ("lock_wait_timeout", "database_locked"):
        hint = (
            "; another connection held Contact longer than migrate waits for it (an open transaction, "
            "or the old service still writing): stop the writers and run migrate again"
        )
    return f"migrate stopped at step {number}: {cause}; {done}{hint}"


def migration_database() -> Database:
    """migrate's own connection to the app's database, not the thread's shared one.

    It knows the migrate statements too, creates no table on connecting (migrate
    inspects first, and a dry run creates nothing), and has no read timeout (an
    ALTER of a large table runs for minutes).
    """
    ext = current_app.extensions["fluxkart"]
    queries = {**ext["queries"], **load_queries(current_app.config["FLUXKART_DIALECT"], MIGRATE_SQL)}
    db = Database(current_app.config, queries, ext["schema"])
    db.create_schema = False
    db.read_timeout = None
    db.serving = False  # the table it adopts has no ServiceState yet
    return db


def normalize_after_migration(db: Database) -> None:
    """Repair's first pass, run by migrate once the schema is the service's.

    Orders find rows stored as sent ('Doc@Example.com', '555 0101') from the
    first request on; repair (next) merges the customers this reveals.
    """
    started = time.perf_counter()
    report = RepairReport()
    try:
        normalize_stored_identifiers(db, current_app.config["FLUXKART_PHONE_REGION"], report, False)
    except (DatabaseUnavailable, DatabaseMisconfigured, RetryTransaction) as exc:
        raise click.ClickException(
            f"migrate stopped while normalizing identifiers: {exc.__cause__ or exc}; the schema steps "
            "are done; `flask --app fluxkart repair` starts with the same pass"
        ) from exc
    click.echo(
        f"  identifiers normalized: {report.normalized:,} rows in {time.perf_counter() - started:.1f} s "
        f"(invalid values left as they are: {report.invalid_count:,}; repair lists them)"
    )


@click.command("migrate")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@with_appcontext
def migrate_command(dry_run: bool) -> None:
    """Bring an existing Contact table (e.g. the replaced implementation's) to this service's schema.

    Prints each change and what it rewrites or locks, refuses (changing
    nothing) when a value would not fit its new column, and records
    ServiceState schema=2 last. Idempotent. See docs/switching.md.
    """
    db = migration_database()
    db.create_database = not dry_run  # a dry run creates nothing, not even the database
    started = time.perf_counter()
    click.echo(f"migrate: {database_location(current_app.config)}")
    try:
        try:
            plan = plan_migration(db)
        except (DatabaseUnavailable, DatabaseMisconfigured, RetryTransaction) as exc:
            raise click.ClickException(
                f"migrate could not inspect the database: {exc.__cause__ or exc}"
            ) from exc
        if plan.unconvertible:
            raise click.ClickException(refusal_message(plan))
        echo_plan(plan)
        if not plan.steps:
            click.echo("nothing to change: Contact already has the service's schema")
            return
        if dry_run:
            click.echo(f"dry run: {len(plan.steps)} steps planned, nothing changed")
            return
        click.echo("applying:")
        apply_migration(db, plan)
        if plan.contact_rows:
            normalize_after_migration(db)
    finally:
        db.close()
    click.echo(f"migrated in {time.perf_counter() - started:.1f} s; peak memory: {peak_rss_mib():.0f} MiB")
    if plan.contact_rows:
        click.echo(
            f"next: flask --app fluxkart repair (the {plan.contact_rows:,} rows still need it; "
            "see docs/switching.md)"
        )


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
    configure_console(app)
    app.cli.add_command(init_db_command)
    app.cli.add_command(migrate_command)
    app.cli.add_command(repair_command)
    app.cli.add_command(import_orders)
    return app
