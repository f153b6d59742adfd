"""The start-up check (SPEC, "Start-up"): the configuration is tried before anything is served.

gunicorn's master runs `check_before_serving()` (gunicorn.conf.py, on_starting) before it
binds its port or forks a worker. A setting that is wrong (a region or limit the service
cannot use, credentials the server refuses, a database that does not exist, a table that
needs `migrate`) stops it there with one log line naming the setting and the fix, and a
non-zero exit: a process manager sees a failed start, not a healthy service that answers 500.
A database that is only unreachable for now is not a wrong setting: the start goes on, the
workers connect when it comes back, and readiness answers 503 until then (no crash loop).

On success the first line the service logs says which data it serves: the backend, the host
and database, the schema state and the number of contacts.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from identity.database import SCHEMA_VERSION, Database
from identity.errors import (
    ConfigurationError,
    DatabaseMisconfigured,
    DatabaseUnavailable,
    RetryTransaction,
    database_problem,
)
from identity.settings import load_settings
from identity.sql import load_queries, schema_statements

# The exit status of a start refused for a setting: gunicorn's own for "the app cannot be
# loaded" (its WorkerBootError), so process managers that know gunicorn read it the same way.
EXIT_BAD_SETTING = 3


@dataclass
class DatabaseFacts:
    """What a process serves: the first log line's fields."""

    backend: str
    host: str | None
    database: str
    schema: str  # "current (3)", "created (3)", or "unknown (unreachable)"
    contacts: int | None  # live rows; None while the database is unreachable

    def fields(self) -> dict[str, Any]:
        return {
            "event": "start",
            "backend": self.backend,
            "host": self.host,
            "database": self.database,
            "schema": self.schema,
            "contacts": self.contacts,
        }


def where(settings: dict[str, Any]) -> tuple[str | None, str]:
    """(host:port, database) for MySQL; (None, the absolute file path) for SQLite."""
    if settings["FLUXKART_DIALECT"] == "mysql":
        return f"{settings['MYSQL_HOST']}:{settings['MYSQL_PORT']}", str(settings["MYSQL_DATABASE"])
    return None, str(Path(settings["FLUXKART_SQLITE_PATH"]).resolve())


def inspect_database(settings: dict[str, Any]) -> DatabaseFacts:
    """Connect as a worker would (never creating a MySQL database), give an empty database
    the schema, and count the contacts.

    Raises ConfigurationError naming the setting (credentials, a missing database or
    folder, a table that needs `migrate`), DatabaseUnavailable when it cannot be reached.
    """
    dialect = settings["FLUXKART_DIALECT"]
    host, database = where(settings)
    if dialect == "sqlite" and not Path(database).parent.is_dir():
        raise ConfigurationError(
            f"FLUXKART_SQLITE_PATH={settings['FLUXKART_SQLITE_PATH']!r}: the folder {Path(database).parent} "
            "does not exist; correct the path or create the folder"
        )
    queries = load_queries(dialect)
    probe = Database(settings, queries, schema_statements(dialect), create_schema=False)
    try:
        existed = (probe.one("select_contact_table_exists") or {"n": 0})["n"] > 0
        probe.close()
        db = Database(settings, queries, schema_statements(dialect))  # creates the schema when safe
        row = db.one("count_live_contacts")
        db.close()
    except DatabaseMisconfigured as exc:
        probe.close()
        raise ConfigurationError(str(exc)) from exc
    except RetryTransaction as exc:  # a connection lost while checking: unreachable for now
        probe.close()
        raise DatabaseUnavailable(str(exc)) from exc
    schema = f"{'current' if existed else 'created'} ({db.state.get('schema', SCHEMA_VERSION)})"
    return DatabaseFacts(dialect, host, database, schema, int((row or {"n": 0})["n"]))


def log_line(level: str, message: str, fields: dict[str, Any]) -> None:
    """One JSON line on stdout, the shape of every other line the service logs."""
    entry = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": "fluxkart",
        "message": message,
        **fields,
    }
    print(json.dumps(entry), flush=True)


def check_before_serving() -> None:
    """gunicorn's on_starting: stop the master (one line, exit 3) on a wrong setting; log
    which data the service will serve; go on while the database is only unreachable."""
    try:
        settings = load_settings(None)
        facts = inspect_database(settings)
    except ConfigurationError as exc:
        log_line("CRITICAL", f"not starting: {exc.message}", {"event": "start_refused"})
        sys.exit(EXIT_BAD_SETTING)
    except DatabaseUnavailable as exc:
        host, database = where(settings)
        facts = DatabaseFacts(settings["FLUXKART_DIALECT"], host, database, "unknown (unreachable)", None)
        log_line(
            "WARNING",
            f"serving {facts.backend} {host}/{database}: the database is unreachable for now "
            f"({database_problem(exc)}); each request tries again and /health/ready answers 503 meanwhile",
            facts.fields(),
        )
        return
    target = f"{facts.host}/{facts.database}" if facts.host else facts.database
    log_line(
        "INFO",
        f"serving {facts.backend} {target}: schema {facts.schema}, {facts.contacts} contacts",
        facts.fields(),
    )
