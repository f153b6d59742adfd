"""One connection to MySQL/MariaDB or SQLite, the same face for both drivers.

A `Database` runs the named statements of sql/ with bound parameters and turns
driver errors into the service's own (errors.py): retry the unit of work, 503, or
a setting to fix. Its options are given at construction.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pymysql
import pymysql.cursors
from pymysql.constants import CLIENT

from identity.errors import DatabaseMisconfigured, DatabaseUnavailable, RetryTransaction
from identity.sql import CONNECTION_SQL, load_queries

log = logging.getLogger("fluxkart")

Row = dict[str, Any]

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
    1045: "the database refused the user name or password: check MYSQL_USER and MYSQL_PASSWORD",
}
# A database that does not exist is a setting to fix, never one to create (SPEC, "Start-up").
MYSQL_UNKNOWN_DATABASE = 1049
# Refusals of CREATE to a user without the privilege: table, database access denied.
MYSQL_NO_CREATE_CODES = {1142, 1044}
# Statements that wait on a lock give up after this long; the transaction is then retried.
LOCK_WAIT_TIMEOUT_S = 5
# A query that has not answered in this long means the server is in trouble.
MYSQL_READ_TIMEOUT_S = 10

# Overwrite deleted content with zeros on every SQLite connection: erased means gone
# (identity/scrub.py). A module constant so a benchmark's control can turn it off.
SQLITE_SECURE_DELETE = True


def adapt_datetime(value: datetime) -> str:
    """Store timestamps as fixed-width UTC text, which SQLite sorts correctly."""
    return value.isoformat(sep=" ", timespec="microseconds")


def convert_datetime(value: bytes) -> datetime:
    """Parse a DATETIME column back into a naive UTC datetime."""
    return datetime.fromisoformat(value.decode())


sqlite3.register_adapter(datetime, adapt_datetime)
sqlite3.register_converter("DATETIME", convert_datetime)


@functools.cache
def session_statements() -> dict[str, str]:
    """A MySQL connection's set-up statements (sql/mysql/connection.sql), read once."""
    return load_queries("mysql", CONNECTION_SQL)


def connect_mysql(
    settings: dict[str, Any], read_timeout: float | None = MYSQL_READ_TIMEOUT_S, create: bool = False
) -> Any:
    """A PyMySQL connection set up for the service: utf8mb4, autocommit, UTC,
    READ COMMITTED, a short lock wait, causal reads on Galera. A missing database
    raises error 1049; only `create` (init-db --create-database) creates it."""
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
        # Several statements in one round trip (Database.defer): fewer turns while locks are held.
        client_flag=CLIENT.MULTI_STATEMENTS,
    )
    database = settings["MYSQL_DATABASE"]
    try:
        conn = pymysql.connect(database=database, **params)
    except pymysql.err.OperationalError as exc:
        if exc.args[0] != MYSQL_UNKNOWN_DATABASE or not create:
            raise
        conn = pymysql.connect(**params)
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{database}`")  # noqa: S608 (a setting, not input)
        conn.select_db(database)
    session = session_statements()
    with conn.cursor() as cur:
        cur.execute(session["set_read_committed"])
        cur.execute(session["set_session_clock_and_lock_wait"], {"lock_wait_s": LOCK_WAIT_TIMEOUT_S})
        with contextlib.suppress(pymysql.err.OperationalError):  # MySQL: no such variable
            cur.execute(session["keep_in_lists"])
        cur.execute(session["select_binlog_settings"])
        server = cur.fetchone()
        if server["log_bin"] and server["binlog_format"] == "STATEMENT":
            # Say so now, so readiness fails too, instead of at the first write.
            try:
                cur.execute(session["set_row_binlog"])
            except pymysql.err.MySQLError as exc:
                conn.close()
                raise DatabaseMisconfigured(f"MySQL error 1665: {MYSQL_SETTING_ERRORS[1665]}") from exc
        cur.execute(session["select_wsrep_on"])
        wsrep = cur.fetchone()
        if wsrep and wsrep["Value"] == "ON":
            cur.execute(
                session["set_wsrep_sync_wait"], {"sync_wait": int(settings["FLUXKART_WSREP_SYNC_WAIT"])}
            )
    # Read by Database: only a multi-primary cluster needs the writes that make two nodes'
    # transactions conflict (identity/merge.py, write_plan).
    conn.fluxkart_multi_primary = bool(wsrep and wsrep["Value"] == "ON")
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
    if SQLITE_SECURE_DELETE:  # deleted rows are zeroed, not left in free space (identity/scrub.py)
        conn.execute("PRAGMA secure_delete = ON")
    return conn


# The only difference between the drivers the rest of the module sees: how to
# connect. How to begin a write transaction is a named statement of each dialect.
CONNECT = {"mysql": connect_mysql, "sqlite": connect_sqlite}


# The schema version this code writes and needs (ServiceState 'schema').
SCHEMA_VERSION = "3"
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


class Result:
    """One statement's answer out of a multi-statement query, kept before the cursor moves on."""

    def __init__(self, cur: Any):
        self.rows: list[Row] = list(cur.fetchall() or [])
        self.rowcount: int = cur.rowcount
        self.lastrowid: int | None = cur.lastrowid

    def fetchall(self) -> list[Row]:
        return self.rows

    def fetchone(self) -> Row | None:
        return self.rows[0] if self.rows else None


class Database:
    """One thread's connection to MySQL or SQLite, opened lazily, dropped on failure.

    Every statement is a named one from sql/ (`queries`), run with a dict of
    parameters (a list value is expanded for `IN`). Driver errors come out as
    RetryTransaction (start the unit of work over), DatabaseUnavailable (503)
    or DatabaseMisconfigured.
    """

    def __init__(
        self,
        settings: dict[str, Any],
        queries: dict[str, str],
        schema: list[str],
        *,
        create_schema: bool = True,
        create_database: bool | None = None,
        serving: bool = True,
        read_timeout: float | None = MYSQL_READ_TIMEOUT_S,
    ):
        """`create_schema`: create missing tables at connect. `create_database`: True creates
        a missing MySQL database (init-db --create-database alone); None, the default, never
        creates one on MySQL and makes the embedded SQLite file; False creates neither.
        `serving`: refuse a table the service did not create.
        `read_timeout`: seconds a MySQL statement may take (None: no limit, for migrate)."""
        self.settings = settings
        self.queries = queries
        self.schema = schema
        self.dialect: str = settings["FLUXKART_DIALECT"]
        self.create_schema = create_schema
        self.create_database = create_database
        self.serving = serving
        self.read_timeout = read_timeout
        self.conn: Any = None
        self.in_transaction = False
        # MySQL, inside a transaction: statements whose answer nobody needs yet (BEGIN, writes),
        # sent in the same round trip as the next statement that is read, or as COMMIT.
        self.deferred: list[tuple[str, dict[str, Any]]] = []
        self.multi_primary = False  # a Galera node: set at connect
        self.state: dict[str, str] = {}  # ServiceState as read at connect
        self.state_read_at = 0.0

    def connect(self) -> Any:
        """The open connection, opening it (and creating the schema if missing) when there is none."""
        if self.conn is None:
            try:
                create = self.create_database is True or (
                    self.dialect == "sqlite" and self.create_database is None
                )
                self.conn = CONNECT[self.dialect](self.settings, self.read_timeout, create)
                self.multi_primary = getattr(self.conn, "fluxkart_multi_primary", False)
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
        self.deferred = []
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken: nothing to release
                pass

    def execute(self, name: str, params: dict[str, Any]) -> Any:
        """Run a named statement with its parameters (after any deferred ones, in the same
        round trip); returns the driver's cursor, positioned on this statement's result."""
        return self.send([(name, params)])[-1]

    def send(self, statements: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        """Run the deferred statements, then these, in order; returns one cursor per statement
        given (with its rows, rowcount and lastrowid). On one MySQL server they travel as one
        multi-statement query, each one's parameters escaped by PyMySQL as `execute` would
        (`mogrify`): one round trip; the server stops at the first error, raised here."""
        conn = self.connect()
        batch = [expand_lists(self.queries[name], params, self.dialect) for name, params in self.deferred]
        batch += [expand_lists(self.queries[name], params, self.dialect) for name, params in statements]
        self.deferred = []
        try:
            if not self.batches or len(batch) < 2:
                cursors = [conn.cursor() for _ in batch]
                for cur, (sql, params) in zip(cursors, batch, strict=True):
                    cur.execute(sql, params)
                return cursors[len(batch) - len(statements) :]
            cur = conn.cursor()
            cur.execute(";\n".join(cur.mogrify(sql, params) for sql, params in batch))
            results = []
            for index in range(len(batch)):
                if index:
                    cur.nextset()
                results.append(Result(cur))
            return results[len(batch) - len(statements) :]
        except Exception as exc:
            raise self.translate(exc) from exc

    @property
    def batches(self) -> bool:
        """True when statements may travel together (`send`): one MySQL server. SQLite runs in
        this process (nothing to save). A Galera node can report a transaction it aborted
        mid-query as committed when the abort falls on a statement inside a multi-statement
        query (seen in tests/api/test_erasure.py's Galera race: answered rows that never
        existed), so there every statement is its own round trip."""
        return self.dialect == "mysql" and not self.multi_primary

    def defer(self, name: str, **params: Any) -> None:
        """Run a named write whose answer is not needed: inside a transaction where statements
        travel together (`batches`) it waits for the next statement sent (its errors surface
        there, or at commit); elsewhere it runs now."""
        self.connect()
        if self.in_transaction and self.batches:
            self.deferred.append((name, params))
        else:
            self.execute(name, params)

    def all_together(self, *statements: tuple[str, dict[str, Any]]) -> list[list[Row]]:
        """Every row of each named query, all sent in one round trip (MySQL), in order."""
        return [list(cur.fetchall()) for cur in self.send(list(statements))]

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
        if self.deferred:
            self.send([])
        try:
            self.connect().cursor().executemany(self.queries[name], rows)
        except Exception as exc:
            raise self.translate(exc) from exc

    def begin(self) -> None:
        """Start a write transaction (`begin_write`: SQLite takes its write lock now, not at first
        write). On MySQL the BEGIN is deferred: it travels with the transaction's first statement."""
        self.in_transaction = True
        self.defer("begin_write")

    def commit(self) -> None:
        """Commit the open transaction, sending any deferred writes with it; errors (a Galera
        conflict can come here, or from a deferred write) are translated."""
        if self.deferred == [("begin_write", {})]:
            self.deferred = []  # nothing was sent: there is nothing to commit
        else:
            self.execute("commit", {})
        self.in_transaction = False

    def rollback(self) -> None:
        """Roll back the open transaction, if any; a broken connection is simply dropped."""
        self.deferred = []
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
            if code == MYSQL_UNKNOWN_DATABASE:
                return DatabaseMisconfigured(unknown_database(self.settings))
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


def unknown_database(settings: dict[str, Any]) -> str:
    """The one line for a MySQL database that does not exist: the setting, and both fixes."""
    return (
        f"MYSQL_DATABASE={settings['MYSQL_DATABASE']!r}: there is no such database on "
        f"{settings['MYSQL_HOST']}:{settings['MYSQL_PORT']}; correct the name, or create it once "
        "with `python3 dev.py flask init-db --create-database`"
    )


def utcnow() -> datetime:
    """Now in UTC, naive, microsecond precision: what DATETIME(6) stores."""
    return datetime.now(UTC).replace(tzinfo=None)
