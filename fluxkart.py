"""FluxKart Identity: links a shop's orders to one customer by email and phone.

Routes
    GET  /                 status
    GET  /health/live      liveness: the process answers
    GET  /health/ready     readiness: the database answers (503 when it does not)
    POST /identify         {"email", "phoneNumber"} -> the consolidated customer
    GET  /customers        read-only lookup by ?email= and/or ?phoneNumber=
    GET  /contacts         contact rows, ?limit= ?after= ?email= ?phoneNumber=
    GET  /contacts/<id>    one contact row

Environment (or a .env file)
    MYSQL_HOST, MYSQL_PORT, MYSQL_USER, MYSQL_PASSWORD, MYSQL_DATABASE
                           any of them set selects MySQL/MariaDB (database
                           "Fluxkart" unless named); none set selects SQLite
    FLUXKART_SQLITE_PATH   the embedded database file (default fluxkart.db)
    FLUXKART_API_TOKEN     when set, every route but / and /health/* requires
                           "Authorization: Bearer <token>"
    FLUXKART_PHONE_REGION  e.g. IN: store numbers valid there in E.164 form

The contract is ../shared/SPEC.md; the design is in README.md.
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
import os
import random
import re
import resource
import signal
import sqlite3
import sys
import threading
import time
import unicodedata
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, TypeVar

import click
import phonenumbers
import prometheus_client
import prometheus_client.multiprocess as prometheus_multiprocess
import pymysql
import pymysql.cursors
from dotenv import load_dotenv
from flask import Flask, Response, current_app, g, has_request_context, jsonify, request, url_for
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
SETTINGS = (*MYSQL_SETTINGS, "FLUXKART_SQLITE_PATH", "FLUXKART_API_TOKEN", "FLUXKART_PHONE_REGION")

DEFAULTS: dict[str, Any] = {
    "MYSQL_HOST": "",
    "MYSQL_PORT": "",
    "MYSQL_USER": "",
    "MYSQL_PASSWORD": "",
    "MYSQL_DATABASE": "",
    "FLUXKART_SQLITE_PATH": "fluxkart.db",
    "FLUXKART_API_TOKEN": "",
    "FLUXKART_PHONE_REGION": "",
    # A request body is two short strings; anything near this limit is abuse.
    "MAX_CONTENT_LENGTH": 64 * 1024,
    # How often a unit of work is tried before the client gets a 503.
    "FLUXKART_MAX_ATTEMPTS": 12,
}


def load_settings(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults, then the environment (and .env), then the caller's overrides."""
    load_dotenv()  # never overrides a variable the environment already sets
    settings = dict(DEFAULTS)
    settings.update({name: os.environ[name] for name in SETTINGS if name in os.environ})
    settings.update(overrides or {})
    return settings


def uses_mysql(settings: dict[str, Any]) -> bool:
    """MySQL when any MYSQL_* setting is given, else the embedded SQLite file."""
    return any(settings.get(name) for name in MYSQL_SETTINGS)


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
# Database: one connection per thread, the same face for both drivers
# --------------------------------------------------------------------------


class DatabaseUnavailable(Exception):
    """The database cannot be reached or stayed busy through every retry (HTTP 503)."""


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

# Refusals of CREATE to a user without the privilege: table, database access denied.
MYSQL_NO_CREATE_CODES = {1142, 1044}
# Statements that wait on a lock give up after this long; the transaction is then retried.
LOCK_WAIT_TIMEOUT_S = 5
# A query that has not answered in this long means the server is in trouble.
MYSQL_READ_TIMEOUT_S = 10
# Retries stop after this long, whatever the attempt count: a client (and a
# load balancer) would rather have a prompt 503 than a request that hangs.
RETRY_BUDGET_S = 10


def adapt_datetime(value: datetime) -> str:
    """Store timestamps as fixed-width UTC text, which SQLite sorts correctly."""
    return value.isoformat(sep=" ", timespec="microseconds")


def convert_datetime(value: bytes) -> datetime:
    """Parse a DATETIME column back into a naive UTC datetime."""
    return datetime.fromisoformat(value.decode())


class Database:
    """One thread's connection to MySQL or SQLite, opened lazily, dropped on failure."""

    def __init__(self, settings: dict[str, Any], queries: dict[str, str], schema: list[str]):
        self.settings = settings
        self.queries = queries
        self.schema = schema
        self.dialect = "mysql" if uses_mysql(settings) else "sqlite"
        self.conn: Any = None

    # -- connecting ------------------------------------------------------

    def connect(self) -> Any:
        """The open connection, opening it (and the schema) when there is none."""
        if self.conn is None:
            self.conn = self.connect_mysql() if self.dialect == "mysql" else self.connect_sqlite()
        return self.conn

    def connect_mysql(self) -> pymysql.connections.Connection:
        s = self.settings
        params = dict(
            host=s["MYSQL_HOST"] or "127.0.0.1",
            port=int(s["MYSQL_PORT"] or 3306),
            user=s["MYSQL_USER"] or "root",
            password=s["MYSQL_PASSWORD"] or "",
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=5,
            read_timeout=MYSQL_READ_TIMEOUT_S,
            write_timeout=MYSQL_READ_TIMEOUT_S,
            cursorclass=pymysql.cursors.DictCursor,
        )
        database = s["MYSQL_DATABASE"] or "Fluxkart"
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
        self.ensure_schema(conn)
        return conn

    def connect_sqlite(self) -> sqlite3.Connection:
        sqlite3.register_adapter(datetime, adapt_datetime)
        sqlite3.register_converter("DATETIME", convert_datetime)
        conn = sqlite3.connect(
            self.settings["FLUXKART_SQLITE_PATH"],
            timeout=LOCK_WAIT_TIMEOUT_S,  # how long BEGIN IMMEDIATE waits for another writer
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            detect_types=sqlite3.PARSE_DECLTYPES,
        )
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode = WAL")  # readers never wait for the writer
        conn.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; safe with WAL
        self.ensure_schema(conn)
        return conn

    def ensure_schema(self, conn: Any) -> None:
        """Create the tables if missing (idempotent, so safe on every new connection).

        A MySQL user without CREATE is refused even when the tables exist: then
        an operator ran init-db with more rights, and we go on without it.
        """
        for statement in self.schema:
            if self.dialect == "sqlite":
                conn.execute(statement)
                continue
            try:
                with conn.cursor() as cur:
                    cur.execute(statement)
            except (pymysql.err.OperationalError, pymysql.err.ProgrammingError) as exc:
                if exc.args[0] not in MYSQL_NO_CREATE_CODES:
                    raise
                log.warning("no CREATE privilege; expecting the schema to exist (flask init-db)")
                return

    def close(self) -> None:
        """Drop the connection; the next call opens a new one."""
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken: nothing to release
                pass

    # -- running statements ----------------------------------------------

    def execute(self, name: str, params: dict[str, Any]) -> Any:
        """Run a named statement; returns the driver's cursor."""
        sql = self.queries[name]
        try:
            conn = self.connect()
            if self.dialect == "mysql":
                cur = conn.cursor()
                cur.execute(sql, params)
                return cur
            return conn.execute(sql, params)
        except Exception as exc:
            raise self.translate(exc) from exc

    def all(self, name: str, **params: Any) -> list[Row]:
        """Every row of a named query, as dicts."""
        return [dict(row) for row in self.execute(name, params).fetchall()]

    def one(self, name: str, **params: Any) -> Row | None:
        """The first row of a named query, or None."""
        row = self.execute(name, params).fetchone()
        return dict(row) if row is not None else None

    def run(self, name: str, **params: Any) -> int:
        """Run a named write; returns the new row's id for an INSERT."""
        return int(self.execute(name, params).lastrowid or 0)

    def begin(self) -> None:
        """Start a write transaction (SQLite: take the write lock now, not at first write)."""
        try:
            if self.dialect == "mysql":
                self.connect().begin()
            else:
                self.connect().execute("BEGIN IMMEDIATE")
        except Exception as exc:
            raise self.translate(exc) from exc

    def commit(self) -> None:
        try:
            self.connect().commit() if self.dialect == "mysql" else self.conn.execute("COMMIT")
        except Exception as exc:
            raise self.translate(exc) from exc

    def rollback(self) -> None:
        """Roll back whatever is open; a broken connection is simply dropped."""
        if self.conn is None:
            return
        try:
            if self.dialect == "mysql":
                self.conn.rollback()
            elif self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except Exception:
            self.close()

    def translate(self, exc: Exception) -> Exception:
        """Map a driver error to RetryTransaction, DatabaseUnavailable, or itself."""
        if isinstance(exc, pymysql.err.OperationalError | pymysql.err.InterfaceError):
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
            if code in MYSQL_RETRY_CODES:
                return RetryTransaction(MYSQL_RETRY_CODES[code])
            if code in MYSQL_CONNECTION_CODES or isinstance(exc, pymysql.err.InterfaceError):
                self.close()
                return RetryTransaction("connection_lost")
            self.close()
            return DatabaseUnavailable(f"MySQL error {code}")
        if isinstance(exc, sqlite3.OperationalError):
            if "locked" in str(exc) or "busy" in str(exc):
                return RetryTransaction("database_locked")
            self.close()
            return DatabaseUnavailable("SQLite error")
        if isinstance(exc, pymysql.err.MySQLError | OSError):
            self.close()
            return DatabaseUnavailable(type(exc).__name__)
        return exc


def get_db() -> Database:
    """This thread's Database for the current app, created on first use."""
    state: threading.local = current_app.extensions["fluxkart"]["local"]
    db = getattr(state, "db", None)
    if db is None:
        ext = current_app.extensions["fluxkart"]
        db = state.db = Database(ext["settings"], ext["queries"], ext["schema"])
    return db


# --------------------------------------------------------------------------
# Transactions: the whole unit of work is retried, never one statement
# --------------------------------------------------------------------------


def in_transaction(db: Database, work: Callable[[Database], T], attempts: int) -> T:
    """Run work(db) in one transaction, retrying the whole of it on lock conflicts.

    A deadlock has already rolled everything back and a lock-wait timeout
    rolled back one statement, so we roll back the rest and start over from
    the first read. `work` must have no side effects outside the database.
    """
    deadline = time.monotonic() + RETRY_BUDGET_S
    for attempt in range(1, attempts + 1):
        try:
            db.begin()
            result = work(db)
            db.commit()
            return result
        except RetryTransaction as exc:
            db.rollback()
            if attempt == attempts or time.monotonic() > deadline:
                raise DatabaseUnavailable(f"gave up after {attempt} attempts: {exc}") from exc
            log.warning("retrying identify transaction (attempt %d): %s", attempt, exc.reason)
            IDENTIFY_RETRIES.labels(exc.reason).inc()
            # Jittered exponential backoff, capped: lets the winner commit first.
            time.sleep(random.uniform(0, min(0.2, 0.002 * 2**attempt)))
        except BaseException:
            db.rollback()
            raise
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------
# Domain: normalization, identify, answers
# --------------------------------------------------------------------------


class ApiError(Exception):
    """An error the client caused or can act on, answered as JSON."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


PHONE_FORMATTING = str.maketrans("", "", " -.()")
MAX_EMAIL_LENGTH = 254
MAX_PHONE_DIGITS = 20


def is_clean_text(value: str) -> bool:
    """No control characters and nothing the database could not store (lone surrogates)."""
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        return False
    return True


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
    E.164 form when a region is configured and the number is valid there.
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
    phone = phone.translate(PHONE_FORMATTING)
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


def identify(db: Database, email: str | None, phone: str | None, attempts: int) -> tuple[dict[str, Any], str]:
    """Link this order's identifiers to their customer; returns (answer, outcome).

    A repeat customer whose identifiers are all known is answered from one
    consistent read, with no transaction and no lock. Anything else runs the
    locked merge in `apply_identify`.
    """
    rows = db.all("select_customer", email=email, phone=phone)
    if is_settled(rows, email, phone):
        return customer_answer(rows), "unchanged"
    return in_transaction(db, lambda db: apply_identify(db, email, phone), attempts)


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
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        # Keep werkzeug's status and headers (Allow on 405), swap the body for JSON.
        response = exc.get_response()
        status = exc.code or 500
        code = HTTP_ERROR_CODES.get(status, "http_error")
        message = exc.description or exc.name
        if status == 413:
            message = f"request body is larger than {app.config['MAX_CONTENT_LENGTH']} bytes"
        body = error_response(status, code, message)
        for name, value in response.headers.items():
            if name.lower() not in ("content-type", "content-length"):
                body.headers[name] = value
        return body

    @app.errorhandler(DatabaseUnavailable)
    def database_unavailable(exc: DatabaseUnavailable) -> Response:
        log.error("database unavailable: %s", exc)
        return error_response(
            503,
            "database_unavailable",
            "the database is unavailable or busy; retry shortly",
            {"Retry-After": "1"},
        )

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; it has been logged")


# --------------------------------------------------------------------------
# Observability: request ids, one JSON access log line per request, metrics
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
IDENTIFY_RETRIES = prometheus_client.Counter(
    "fluxkart_identify_retries", "identify transactions started over, by reason", ["reason"]
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
# Routes: parse, call the domain, answer JSON
# --------------------------------------------------------------------------

PUBLIC_ENDPOINTS = {"status", "live", "ready"}
OPENAPI_PATH = Path(__file__).with_name("openapi.json")
MAX_PAGE = 1000
DEFAULT_PAGE = 100
MAX_ID = 2**63 - 1


def require_token() -> None:
    """Bearer-token check for every non-public route when FLUXKART_API_TOKEN is set."""
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
    """The request body as a JSON object, whatever the Content-Type says."""
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
    region = current_app.config["FLUXKART_PHONE_REGION"]
    email = normalize_email(request.args.get("email"))
    phone = normalize_phone(request.args.get("phoneNumber"), region)
    return email, phone


def query_int(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise ApiError(400, "invalid_parameter", f"{name} must be a whole number from {low} to {high}")
    return int(raw)


def register_routes(app: Flask) -> None:
    @app.get("/")
    def status() -> Response:
        """Who is answering, and where to start."""
        return jsonify(status="ok", message="FluxKart Identity is running: POST /identify")

    @app.get("/health/live")
    def live() -> Response:
        """Liveness: the process answers. Never touches the database."""
        return jsonify(status="ok")

    @app.get("/health/ready")
    def ready() -> Response:
        """Readiness: 200 when the database answers a query, else 503."""
        db = get_db()
        try:
            db.one("select_one")
        except (RetryTransaction, DatabaseUnavailable) as exc:
            db.close()
            raise DatabaseUnavailable(str(exc)) from exc
        return jsonify(status="ok", database=db.dialect)

    @app.post("/identify")
    def identify_contact() -> Response:
        """Link an order's email and/or phone to its customer and answer the customer."""
        body = json_body()
        region = current_app.config["FLUXKART_PHONE_REGION"]
        email = normalize_email(body.get("email"))
        phone = normalize_phone(body.get("phoneNumber"), region)
        if email is None and phone is None:
            raise ApiError(400, "missing_identifier", "send an email, a phoneNumber, or both")
        answer, outcome = run_retrying_reads(
            lambda db: identify(db, email, phone, current_app.config["FLUXKART_MAX_ATTEMPTS"])
        )
        g.identify_outcome = outcome
        return jsonify(answer)

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus metrics: requests and latency by route and status, identify outcomes, retries."""
        return metrics_page()

    @app.get("/openapi.json")
    def openapi() -> Response:
        """The OpenAPI 3 description of this API."""
        return Response(OPENAPI_PATH.read_bytes(), content_type="application/json")

    @app.get("/customers")
    def lookup_customer() -> Response:
        """Support staff's read-only lookup: the identify answer, writing nothing."""
        email, phone = query_identifiers()
        if email is None and phone is None:
            raise ApiError(400, "missing_identifier", "give ?email= and/or ?phoneNumber=")
        rows = run_retrying_reads(lambda db: db.all("select_customers", email=email, phone=phone))
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
                f"the email and phone number belong to different customers ({ids}); "
                "look them up one at a time",
            )
        return jsonify(customer_answer(rows))

    @app.get("/contacts")
    def list_contacts() -> Response:
        """Contact rows by id, paginated (?limit, ?after) and filtered (?email, ?phoneNumber)."""
        limit = query_int("limit", DEFAULT_PAGE, 1, MAX_PAGE)
        after = query_int("after", 0, 0, MAX_ID)
        email, phone = query_identifiers()
        rows = run_retrying_reads(
            lambda db: db.all("select_contacts", after=after, limit=limit + 1, email=email, phone=phone)
        )
        page = rows[:limit]
        response = jsonify([contact_to_json(row) for row in page])
        if len(rows) > limit:
            args = {k: v for k, v in request.args.items() if k != "after"}
            next_url = url_for("list_contacts", **{**args, "limit": limit, "after": page[-1]["id"]})
            response.headers["Link"] = f'<{next_url}>; rel="next"'
        return response

    @app.get("/contacts/<int:contact_id>")
    def get_contact(contact_id: int) -> Response:
        """One contact row, or 404."""
        row = None
        if contact_id <= MAX_ID:
            row = run_retrying_reads(lambda db: db.one("select_contact_by_id", id=contact_id))
        if row is None:
            raise ApiError(404, "not_found", f"no contact with id {contact_id}")
        return jsonify(contact_to_json(row))


def run_retrying_reads(work: Callable[[Database], T]) -> T:
    """Run work against this thread's database, reconnecting once if the connection was stale.

    A pooled connection the server has closed (restart, idle timeout) fails on
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
            raise ImportRefused(
                f"line {first_number}: the header has neither an 'email' nor a 'phoneNumber' column "
                f"(it has: {', '.join(repr(name) for name in header)}); nothing was imported"
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
    """The rejected lines, verbatim, in a file that imports like the original once fixed."""

    def __init__(self, path: str | None):
        self.file = open(path, "wb") if path else None  # noqa: SIM115 (closed by close())
        self.header_written = False

    def add(self, orders: OrderFile, order: OrderLine) -> None:
        if self.file is None:
            return
        if orders.format == "csv" and not self.header_written:
            self.write(orders.header)
            self.header_written = True
        self.write(order.text)

    def write(self, text: str) -> None:
        assert self.file is not None
        if not text.endswith(("\n", "\r")):
            text += "\n"
        self.file.write(text.encode("utf-8", "surrogateescape"))

    def close(self, orders: OrderFile | None) -> None:
        if self.file is None:
            return
        if orders is not None and orders.format == "csv" and not self.header_written and orders.header:
            self.write(orders.header)  # no rejects: still a valid (empty) import file
        self.file.close()


# -- identify's rules over rows in memory -------------------------------------


@dataclass
class IdentifyPlan:
    """What one identify request changes in its customer (pure: no database).

    `relinks` are (row id, new linkPrecedence, new linkedId); `insert` is the
    new row's (email, phone, linkedId or None for a primary, createdAt).
    """

    outcome: str  # created, linked, merged, unchanged
    survivor_id: int | None
    relinks: list[tuple[int, str, int | None]] = field(default_factory=list)
    insert: tuple[str | None, str | None, int | None, datetime] | None = None


def plan_identify(rows: list[Row], email: str | None, phone: str | None, now: datetime) -> IdentifyPlan:
    """The SPEC's identify rules for one request over the whole connected component of live
    rows it matches (`rows`, empty for a new customer); returns the changes, writes nothing.

    The oldest live row by (createdAt, id) is the survivor; every other row
    becomes a secondary linked straight to it; a secondary is inserted when
    the request brings an identifier no row has.
    """
    if not rows:
        return IdentifyPlan("created", None, insert=(email, phone, None, now))
    ordered = oldest_first(rows)
    survivor = ordered[0]
    plan = IdentifyPlan("unchanged", survivor["id"])
    if survivor["linkPrecedence"] != "primary" or survivor["linkedId"] is not None:
        plan.relinks.append((survivor["id"], "primary", None))
    for row in ordered[1:]:
        if row["linkPrecedence"] != "secondary" or row["linkedId"] != survivor["id"]:
            plan.relinks.append((row["id"], "secondary", survivor["id"]))
    if plan.relinks:
        plan.outcome = "merged"
    if (email is not None and all(row["email"] != email for row in rows)) or (
        phone is not None and all(row["phoneNumber"] != phone for row in rows)
    ):
        # Never older than its primary, even if this host's clock is behind the one that made it.
        plan.insert = (email, phone, survivor["id"], max(now, survivor["createdAt"] + ONE_MICROSECOND))
        plan.outcome = "merged" if plan.relinks else "linked"
    return plan


class BatchCustomers:
    """The customers one import batch touches, in memory: every live row of the connected
    components of the batch's identifiers, indexed by email, phone and link."""

    def __init__(self, rows: Iterable[Row]):
        self.rows: dict[int, Row] = {}
        self.by_email: dict[str, set[int]] = defaultdict(set)
        self.by_phone: dict[str, set[int]] = defaultdict(set)
        self.linked: dict[int, set[int]] = defaultdict(set)  # id -> rows whose linkedId is id
        self.changed: set[int] = set()  # existing rows whose link changed
        self.touched: set[tuple[str, str]] = set()  # identifiers of customers with changed rows
        self.inserted: list[int] = []  # temporary ids, in creation order
        for row in rows:
            self.add(row)

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

    def identify(self, email: str | None, phone: str | None, now: datetime) -> str:
        """Apply one order to the rows in memory, as identify would; returns the outcome."""
        rows = self.component(email, phone)
        plan = plan_identify(rows, email, phone, now)
        for row_id, precedence, linked_id in plan.relinks:
            row = self.rows[row_id]
            if row["linkedId"] is not None:
                self.linked[row["linkedId"]].discard(row_id)
            row["linkPrecedence"], row["linkedId"], row["updatedAt"] = precedence, linked_id, now
            if linked_id is not None:
                self.linked[linked_id].add(row_id)
            if row_id < TEMP_ID_BASE:
                self.changed.add(row_id)
        if any(row_id < TEMP_ID_BASE for row_id, _, _ in plan.relinks):
            # Existing rows change: every identifier of the customer is written too (the
            # overlap that makes a racing write on another cluster node conflict).
            for row in rows:
                if row["email"] is not None:
                    self.touched.add(("email", row["email"]))
                if row["phoneNumber"] is not None:
                    self.touched.add(("phone", row["phoneNumber"]))
        if plan.insert is not None:
            new_email, new_phone, linked_id, created_at = plan.insert
            row_id = TEMP_ID_BASE + len(self.inserted)
            self.inserted.append(row_id)
            self.add(
                {
                    "id": row_id,
                    "email": new_email,
                    "phoneNumber": new_phone,
                    "linkedId": linked_id,
                    "linkPrecedence": "primary" if linked_id is None else "secondary",
                    "createdAt": created_at,
                    "updatedAt": created_at,
                }
            )
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


def value_list(db: Database, values: Iterable[Any]) -> Any:
    """A list parameter for the lock_contacts_by_* statements (a tuple for PyMySQL, JSON for SQLite)."""
    listed = list(values)
    if db.dialect == "sqlite":
        return json.dumps(listed)
    return tuple(listed) or (None,)  # `IN (NULL)` matches nothing; `IN ()` is a syntax error


def run_many(db: Database, name: str, rows: list[dict[str, Any]]) -> None:
    """Run a named statement once per parameter set: one multi-row statement on MySQL
    (PyMySQL's executemany rewrites INSERT ... VALUES), in-process calls on SQLite."""
    if not rows:
        return
    try:
        conn = db.connect()
        if db.dialect == "mysql":
            with conn.cursor() as cur:
                cur.executemany(db.queries[name], rows)
        else:
            conn.executemany(db.queries[name], rows)
    except Exception as exc:
        raise db.translate(exc) from exc


def load_components(db: Database, emails: set[str], phones: set[str]) -> list[Row]:
    """Every live row connected to these identifiers, locked: rows sharing an email or a phone
    with a loaded row, the rows loaded rows link to, and the rows linked to loaded rows."""
    loaded: dict[int, Row] = {}
    asked_emails: set[str] = set()
    asked_phones: set[str] = set()
    asked_ids: set[int] = set()
    queries: dict[str, set[Any]] = {"lock_contacts_by_emails": emails, "lock_contacts_by_phones": phones}
    while any(queries.values()):
        found: list[Row] = []
        for name, values in queries.items():
            if values:
                found += db.all(name, values=value_list(db, sorted(values)))
        asked_emails |= queries.get("lock_contacts_by_emails", set())
        asked_phones |= queries.get("lock_contacts_by_phones", set())
        asked_ids |= queries.get("lock_contacts_by_linked_ids", set())
        fresh = [row for row in found if row["id"] not in loaded]
        for row in fresh:
            loaded[row["id"]] = row
        queries = {
            "lock_contacts_by_emails": {r["email"] for r in fresh if r["email"] is not None} - asked_emails,
            "lock_contacts_by_phones": {r["phoneNumber"] for r in fresh if r["phoneNumber"] is not None}
            - asked_phones,
            "lock_contacts_by_ids": {r["linkedId"] for r in fresh if r["linkedId"] is not None}
            - loaded.keys(),
            "lock_contacts_by_linked_ids": {r["id"] for r in fresh} - asked_ids,
        }
    return list(loaded.values())


def import_batch(
    db: Database, orders: list[tuple[str | None, str | None]], clock: OrderClock
) -> Counter[str]:
    """Apply a batch of orders in file order inside the caller's transaction; returns the
    outcome counts (created, linked, merged, unchanged).

    identify's protocol, for many requests at once: 1. touch every identifier
    of the batch (sorted: one lock order); 2. read and lock the connected
    components of those identifiers; 3. run identify's rules line by line in
    memory; 4. write the final state with multi-row statements, touching every
    identifier of each customer whose existing rows changed.
    """
    emails = {email for email, _ in orders if email is not None}
    phones = {phone for _, phone in orders if phone is not None}
    identifiers = sorted([("email", e) for e in emails] + [("phone", p) for p in phones])
    run_many(db, "touch_identifier_rows", [{"kind": k, "value": v, "version": 1} for k, v in identifiers])
    customers = BatchCustomers(load_components(db, emails, phones))
    outcomes: Counter[str] = Counter()
    for email, phone in orders:
        outcomes[customers.identify(email, phone, clock.now())] += 1
    write_batch(db, customers, set(identifiers))
    return outcomes


def write_batch(db: Database, customers: BatchCustomers, touched: set[tuple[str, str]]) -> None:
    """Write what the batch changed: relinked rows, new primaries, then new secondaries."""
    rows = customers.rows
    run_many(
        db,
        "touch_identifier_rows",
        [{"kind": k, "value": v, "version": 1} for k, v in sorted(customers.touched - touched)],
    )
    run_many(
        db,
        "relink_contact_rows",
        [
            {
                "id": row["id"],
                "phone": row["phoneNumber"],
                "email": row["email"],
                "linked_id": row["linkedId"],
                "link_precedence": row["linkPrecedence"],
                "created_at": row["createdAt"],
                "updated_at": row["updatedAt"],
            }
            for row in (rows[row_id] for row_id in sorted(customers.changed))
        ],
    )
    new = [rows[row_id] for row_id in customers.inserted]
    real_ids: dict[int, int] = {}
    primaries = [row for row in new if row["linkPrecedence"] == "primary"]
    if primaries:
        top = db.one("select_max_contact_id")
        run_many(db, "insert_contact", [insert_params(row, None) for row in primaries])
        ids = {
            (r["email"], r["phoneNumber"]): r["id"]
            for r in db.all("select_primaries_after_id", after=top["top"] if top else 0)
        }
        for row in primaries:
            real_ids[row["id"]] = ids[(row["email"], row["phoneNumber"])]
    run_many(
        db,
        "insert_contact",
        [
            insert_params(row, real_ids.get(row["linkedId"], row["linkedId"]))
            for row in new
            if row["linkPrecedence"] == "secondary"
        ],
    )


def insert_params(row: Row, linked_id: int | None) -> dict[str, Any]:
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

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.imported / elapsed if elapsed > 0 else 0.0

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        o = self.outcomes
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return (
            f"lines read {self.lines:,}, imported {self.imported:,}: customers created {o['created']:,}, "
            f"rows linked {o['linked']:,}, merges {o['merged']:,}, unchanged {o['unchanged']:,}; "
            f"rejected {self.rejected:,}; {elapsed:.1f} s, {self.rate():,.0f} orders/s, "
            f"peak RSS {peak_mib:.0f} MiB"
        )


class Progress:
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


def batches_of(
    orders: Iterable[OrderLine], size: int, on_reject: Callable[[OrderLine], None]
) -> Iterator[list[OrderLine]]:
    """Valid orders in lists of `size`, in file order; rejected lines go to `on_reject` as read."""
    batch: list[OrderLine] = []
    for order in orders:
        if order.reason is not None:
            on_reject(order)
            continue
        batch.append(order)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


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
    "auto: JSON Lines when the first line starts with '{'.",
)
@click.option(
    "--rejects",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the rejected lines here, as they were (with the CSV header): fix them and import this file.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 20000),
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
    progress = Progress(size, totals, quiet)
    rejected = Rejects(rejects)
    db = get_db()
    clock = OrderClock()
    previous = signal.signal(signal.SIGTERM, raise_interrupt)

    def reject(order: OrderLine) -> None:
        totals.rejected += 1
        click.echo(f"line {order.number}: {order.reason}", err=True)
        rejected.add(orders, order)

    def count(order: OrderLine) -> OrderLine:
        totals.lines += 1
        return order

    status = 0
    held_since = time.monotonic()
    try:
        for batch in batches_of(map(count, orders.orders()), batch_size, reject):
            pairs = [(order.email, order.phone) for order in batch]
            work = functools.partial(import_batch, orders=pairs, clock=clock)
            outcomes = in_transaction(db, work, settings["FLUXKART_MAX_ATTEMPTS"])
            if db.dialect == "sqlite" and time.monotonic() - held_since > SQLITE_HOLD_S:
                time.sleep(SQLITE_PAUSE_S)  # let the writers waiting in line in
                held_since = time.monotonic()
            totals.outcomes.update(outcomes)
            totals.imported += len(batch)
            totals.last_line = batch[-1].number
            progress.update(orders.bytes_read)
        if totals.lines == 0 and orders.line_number == 0:
            click.echo("the file is empty: nothing to import", err=True)
    except ImportRefused as exc:
        progress.close()
        click.echo(f"refused: {exc}", err=True)
        status = 1
    except (DatabaseUnavailable, KeyboardInterrupt) as exc:
        progress.close()
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"stopped: {exc}"
        click.echo(
            f"{why}. Imported every order up to line {totals.last_line}; the batch after it was "
            "rolled back. Run the same command again to finish: orders already imported change nothing.",
            err=True,
        )
        status = 130 if isinstance(exc, KeyboardInterrupt) else 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        progress.close()
        rejected.close(orders)
        orders.release()
        db.close()
    click.echo(totals.summary())
    if status == 0 and totals.rejected:
        status = 3
    if status:
        click.get_current_context().exit(status)


# --------------------------------------------------------------------------
# The app factory and the init-db command
# --------------------------------------------------------------------------


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    """Build the app. No connection is opened here: the first request opens one per thread."""
    settings = load_settings(overrides)
    configure_logging()
    app = Flask(__name__, static_folder=None)
    app.config.update(settings)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    check_dialects_agree()
    dialect = "mysql" if uses_mysql(settings) else "sqlite"
    app.extensions["fluxkart"] = {
        "settings": settings,
        "queries": load_queries(dialect),
        "schema": schema_statements(dialect),
        "local": threading.local(),
    }
    app.before_request(start_request)
    app.before_request(require_token)
    app.after_request(finish_request)
    register_error_handlers(app)
    register_routes(app)
    app.cli.add_command(import_orders)

    @app.cli.command("init-db")
    def init_db() -> None:
        """Create the database and tables if they do not exist (never drops anything)."""
        db = get_db()
        db.connect()
        click.echo(f"schema ready on {db.dialect}")

    return app
