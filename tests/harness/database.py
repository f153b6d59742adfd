"""The tests' own way into a test's database, bypassing the app.

`blank_settings()` is every setting explicitly empty; `run_sql(settings, sql)` runs one
statement on the database those settings name (MySQL or the SQLite file);
`read_contacts(settings)` is the Contact table as it is now; `mysql_connect(settings)`
is a PyMySQL connection to the settings' MySQL database, `lock_customer(settings, id)`
holds a customer's lock the way identify takes it, and `lock_waiters(conn)` counts who waits
for it. No pytest here: bench/ imports this
module too.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pymysql
import pymysql.cursors

from identity.settings import SETTINGS


def blank_settings() -> dict[str, Any]:
    """Every setting explicitly empty, so no developer .env or environment leaks in."""
    return {name: "" for name in SETTINGS}


def mysql_connect(settings: dict[str, Any], **options: Any) -> pymysql.connections.Connection:
    """A PyMySQL connection to the MySQL database `settings` name; `options` go to pymysql.connect."""
    return pymysql.connect(
        host=settings["MYSQL_HOST"],
        port=int(settings["MYSQL_PORT"]),
        user=settings["MYSQL_USER"],
        password=settings["MYSQL_PASSWORD"],
        database=settings["MYSQL_DATABASE"],
        **options,
    )


def run_sql(settings: dict[str, Any], sql: str, params: Any = (), many: bool = False) -> list[dict[str, Any]]:
    """Run one statement on the test's database, bypassing the app; returns its rows as dicts.

    `sql` uses %s placeholders (rewritten to ? for SQLite); `many` runs it once per
    parameter tuple. SQLite timestamps come back as their stored text.
    """
    if settings.get("MYSQL_HOST"):
        conn = mysql_connect(settings, autocommit=True, cursorclass=pymysql.cursors.DictCursor)
        with conn, conn.cursor() as cur:
            if many:
                cur.executemany(sql, params)
            else:
                cur.execute(sql, params)
            return list(cur.fetchall())
    db = sqlite3.connect(settings["FLUXKART_SQLITE_PATH"])
    db.row_factory = sqlite3.Row
    try:
        with db:
            run = db.executemany if many else db.execute
            return [dict(row) for row in run(sql.replace("%s", "?"), params)]
    finally:
        db.close()


def read_contacts(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Every Contact row straight from the database (not through the app), by id."""
    return run_sql(
        settings,
        "SELECT id, phoneNumber, email, linkedId, linkPrecedence, createdAt, updatedAt, deletedAt "
        "FROM Contact ORDER BY id",
    )


def lock_customer(settings: dict[str, Any], primary_id: int) -> Any:
    """A connection of the test's own holding the lock identify needs for this customer.

    MySQL: an open transaction that locked the primary's row (FOR UPDATE). SQLite: an open
    BEGIN IMMEDIATE, the database's one write lock. The caller ends it with rollback().
    """
    if settings.get("MYSQL_HOST"):
        conn = mysql_connect(settings, autocommit=False)
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM Contact WHERE id = %s FOR UPDATE", (primary_id,))
        return conn
    conn = sqlite3.connect(settings["FLUXKART_SQLITE_PATH"], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def lock_waiters(conn: Any) -> int:
    """How many transactions wait for a lock this MySQL connection holds (InnoDB's own view)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*) FROM information_schema.INNODB_LOCK_WAITS AS w "
            "JOIN information_schema.INNODB_TRX AS t ON t.trx_id = w.blocking_trx_id "
            "WHERE t.trx_mysql_thread_id = CONNECTION_ID()"
        )
        (count,) = cur.fetchone()
    return int(count)
