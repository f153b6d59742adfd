"""Straight-to-the-database work: schema, bulk preload, ceiling copy, merge fixtures, final table.

All of it runs on the throwaway mariadbd the benchmark started (tests/harness/mariadb.py),
never on a server of the machine. Values are always bound as parameters: PyMySQL's
executemany turns `INSERT ... VALUES (%s, ...)` into multi-row INSERTs of up to ~1 MB,
the fastest load that stays plain SQL.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pymysql
import pymysql.cursors

import fluxkart
from bench.workload import CustomerModel, Identifiers, Pair, SeedBatch, seed_customers, stamp
from identity.pool import get_db

INSERT_CONTACTS = (
    "INSERT INTO Contact (id, phoneNumber, email, linkedId, linkPrecedence, createdAt, updatedAt) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
INSERT_IDENTIFIERS = "INSERT INTO ContactIdentifier (kind, value, version) VALUES (%s, %s, %s)"
SELECT_ROWS = (
    "SELECT id, phoneNumber, email, linkedId, linkPrecedence, createdAt, updatedAt, deletedAt "
    "FROM Contact ORDER BY id"
)


def connect(port: int, database: str | None = None) -> pymysql.connections.Connection:
    """A plain autocommit connection to the benchmark's server."""
    return pymysql.connect(
        host="127.0.0.1",
        port=port,
        user="root",
        password="",
        database=database,
        charset="utf8mb4",
        autocommit=True,
        read_timeout=600,
        write_timeout=600,
    )


def create_database(port: int, name: str) -> None:
    """A fresh database with the service's own schema, created by the service's own code
    (what `flask init-db` runs): the tables and the ServiceState rows that say the table is
    the service's and consistent, so identify takes its lock-free path for repeat
    customers (the preload writes only valid customers)."""
    conn = connect(port)
    with conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        cur.execute(f"CREATE DATABASE `{name}`")
    settings = {
        "MYSQL_HOST": "127.0.0.1",
        "MYSQL_PORT": str(port),
        "MYSQL_USER": "root",
        "MYSQL_PASSWORD": "",
        "MYSQL_DATABASE": name,
        "FLUXKART_API_TOKEN": "",
        "FLUXKART_PHONE_REGION": "",
    }
    app = fluxkart.create_app(settings)
    with app.app_context():
        db = get_db()
        db.connect()
        db.close()


def server_version(port: int) -> str:
    conn = connect(port)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT VERSION()")
        return str(cur.fetchone()[0])


def count_contacts(port: int, database: str) -> tuple[int, int]:
    """(rows, largest id) of Contact."""
    conn = connect(port, database)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM Contact")
        rows, top = cur.fetchone()
        return int(rows), int(top)


def insert_batch(cur: Any, batch: SeedBatch) -> None:
    """One seed batch in one transaction: contacts, then their identifier rows (sorted: B-tree order)."""
    cur.execute("BEGIN")
    cur.executemany(INSERT_CONTACTS, batch.contacts)
    cur.executemany(INSERT_IDENTIFIERS, sorted(batch.identifiers))
    cur.execute("COMMIT")


def preload(
    port: int, database: str, model: CustomerModel, ids: Identifiers, rng: random.Random, contacts: int
) -> tuple[list[Pair], float]:
    """Add `contacts` valid rows after the existing ones; returns (each row's pair, seconds)."""
    started = time.perf_counter()
    _, top = count_contacts(port, database)
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    pairs: list[Pair] = []
    conn = connect(port, database)
    with conn, conn.cursor() as cur:
        # Checks the loader makes redundant (its ids and identifiers are unique by
        # construction); skipping them is the usual bulk-load speed-up.
        cur.execute("SET SESSION unique_checks = 0, foreign_key_checks = 0")
        for batch in seed_customers(
            model, ids, rng, contacts, top + 1, now - timedelta(days=730), timedelta(days=720)
        ):
            insert_batch(cur, batch)
            pairs.extend(batch.pairs)
    return pairs, time.perf_counter() - started


def copy_database(port: int, source: str, target: str) -> None:
    """The ceiling's own copy of Contact, so its inserts never touch the service's data."""
    conn = connect(port)
    with conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{target}`")
        cur.execute(f"CREATE DATABASE `{target}`")
        cur.execute(f"CREATE TABLE `{target}`.Contact LIKE `{source}`.Contact")
        cur.execute(f"INSERT INTO `{target}`.Contact SELECT * FROM `{source}`.Contact")  # noqa: S608


def fetch_rows(port: int, database: str) -> list[dict[str, Any]]:
    """The whole Contact table as dicts, by id (what the invariant checker reads)."""
    conn = connect(port, database)
    with conn, conn.cursor(pymysql.cursors.SSDictCursor) as cur:
        cur.execute(SELECT_ROWS)
        return list(cur.fetchall())


def build_customer(
    port: int, database: str, ids: Identifiers, rows: int, created: datetime
) -> tuple[str, str, list[Pair]]:
    """One customer of `rows` valid rows written directly; returns (primary email, primary phone, pairs).

    Secondaries alternate a new email with the primary's phone and the primary's email
    with a new phone, so the customer is connected through its primary's identifiers.
    """
    email, phone = ids.email(), ids.phone()
    pairs: list[Pair] = [(email, phone)]
    identifiers = [("email", email, 1), ("phone", phone, 1)]
    for k in range(1, rows):
        if k % 2:
            new = ids.email()
            pairs.append((new, phone))
            identifiers.append(("email", new, 1))
        else:
            new = ids.phone()
            pairs.append((email, new))
            identifiers.append(("phone", new, 1))
    conn = connect(port, database)
    with conn, conn.cursor() as cur:
        cur.execute("BEGIN")
        when = stamp(created)
        cur.execute(INSERT_CONTACTS, (None, phone, email, None, "primary", when, when))
        primary = cur.lastrowid
        secondaries = [
            (
                None,
                p,
                e,
                primary,
                "secondary",
                stamp(created + timedelta(milliseconds=k)),
                stamp(created + timedelta(milliseconds=k)),
            )
            for k, (e, p) in enumerate(pairs[1:], start=1)
        ]
        cur.executemany(INSERT_CONTACTS, secondaries)
        cur.executemany(INSERT_IDENTIFIERS, identifiers)
        cur.execute("COMMIT")
    return email, phone, pairs


def drop_databases(port: int, names: Iterable[str]) -> None:
    conn = connect(port)
    with conn, conn.cursor() as cur:
        for name in names:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


def set_buffer_pool(port: int, mib: int) -> None:
    """Resize InnoDB's buffer pool (dynamic in MariaDB 10.2+): the data a real server keeps in memory."""
    conn = connect(port)
    with conn, conn.cursor() as cur:
        cur.execute("SET GLOBAL innodb_buffer_pool_size = %s", (mib * 1024 * 1024,))


def buffer_pool_misses(port: int) -> int:
    """Pages InnoDB had to read from disk (or the OS cache) so far: Innodb_buffer_pool_reads."""
    conn = connect(port)
    with conn, conn.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_reads'")
        return int(cur.fetchone()[1])


def table_sizes_mib(port: int, database: str) -> dict[str, float]:
    """Data + index size of each table, as InnoDB estimates it."""
    conn = connect(port)
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT table_name, (data_length + index_length) / 1048576 FROM information_schema.tables "
            "WHERE table_schema = %s",
            (database,),
        )
        return {str(name): round(float(size), 1) for name, size in cur.fetchall()}


def set_flush_at_commit(port: int, value: int) -> None:
    """innodb_flush_log_at_trx_commit: 1 writes and syncs the redo log at every commit (durable,
    MariaDB's default and production's); tests/harness/mariadb.py starts the server with 2 (sync once
    a second)."""
    conn = connect(port)
    with conn, conn.cursor() as cur:
        cur.execute("SET GLOBAL innodb_flush_log_at_trx_commit = %s", (value,))
