"""The replaced implementation's Contact table, for migrate's tests and the legacy benchmark.

The MySQL DDL is the reference implementation's production table as it ships
(utf8mb4_general_ci identifiers: case- and accent-insensitive; DATETIME in whole
seconds; everything nullable; no secondary indexes). Its optional indexes are
the ones its `run.sh --indexes` adds. SQLite has no such table in the wild;
SQLITE_CONTACT is the same table in SQLite's spelling (NOCASE is the closest
collation SQLite has), so migrate's SQLite rebuild is tested on the same rows.
"""

from __future__ import annotations

from typing import Any

from tests.harness.database import run_sql

MYSQL_CONTACT = """
CREATE TABLE IF NOT EXISTS Contact (
  id INT NOT NULL AUTO_INCREMENT,
  phoneNumber VARCHAR(255) NULL,
  email VARCHAR(255) NULL,
  linkedId INT NULL,
  linkPrecedence ENUM('primary', 'secondary') NULL,
  createdAt DATETIME NULL,
  updatedAt DATETIME NULL,
  deletedAt DATETIME NULL,
  PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_general_ci
"""

SQLITE_CONTACT = """
CREATE TABLE IF NOT EXISTS Contact (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  phoneNumber VARCHAR(255) COLLATE NOCASE NULL,
  email VARCHAR(255) COLLATE NOCASE NULL,
  linkedId INT NULL,
  linkPrecedence TEXT NULL CHECK (linkPrecedence IN ('primary', 'secondary')),
  createdAt DATETIME NULL,
  updatedAt DATETIME NULL,
  deletedAt DATETIME NULL
)
"""

# What `run.sh --indexes` adds (both dialects accept the statement).
LEGACY_INDEXES = [
    "CREATE INDEX idx_email ON Contact (email)",
    "CREATE INDEX idx_phoneNumber ON Contact (phoneNumber)",
    "CREATE INDEX idx_linkedId ON Contact (linkedId)",
]

INSERT_CONTACT = (
    "INSERT INTO Contact (id, phoneNumber, email, linkedId, linkPrecedence, createdAt, updatedAt, deletedAt) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)

# (id, phoneNumber, email, linkedId, linkPrecedence, createdAt, updatedAt, deletedAt):
# one row of every kind the replaced implementation and the tools around it leave.
LEGACY_ROWS: list[tuple[object, ...]] = [
    # stored as sent: mixed case, formatted phone
    (1, "555 0101", "Doc@Example.com", None, "primary", "2023-01-01 10:00:00", "2023-01-01 10:00:00", None),
    # the same customer's email in another case, phone in another format
    (2, "(555) 010-1", "doc@example.com", 1, "secondary", "2023-01-01 10:05:00", "2023-01-01 10:05:00", None),
    # accents: utf8mb4_general_ci finds 3 when asked for rene@x.com; utf8mb4_bin must not
    (3, "+91 98765 43210", "rené@x.com", None, "primary", "2023-01-02 09:00:00", "2023-01-02 09:00:00", None),
    (4, "9876543210", "rene@x.com", None, "primary", "2023-01-02 09:00:01", "2023-01-02 09:00:01", None),
    # NULL precedence: a primary (no link) and a secondary (linked)
    (5, "300001", "a@x.io", None, None, "2023-01-03 08:00:00", "2023-01-03 08:00:00", None),
    (6, "300002", "b@x.io", 5, None, "2023-01-03 08:00:01", "2023-01-03 08:00:01", None),
    # a chain: 7 points at a secondary
    (7, "300003", "b@x.io", 6, "secondary", "2023-01-03 08:00:02", "2023-01-03 08:00:02", None),
    # three identical primaries, one without createdAt (gets its updatedAt)
    (8, "400001", "n@x.io", None, "primary", "2023-01-04 07:00:00", "2023-01-04 07:00:00", None),
    (9, "400001", "n@x.io", None, "primary", None, "2023-01-04 07:30:00", None),
    # no timestamps but deleted (createdAt and updatedAt get deletedAt)
    (10, "400001", "n@x.io", None, "primary", None, None, "2023-01-05 00:00:00"),
    # neither identifier nor any timestamp (the replaced implementation stores empty bodies)
    (11, None, None, None, None, None, None, None),
    # a secondary whose primary is not there
    (12, "5550001", "mira@x.io", 999, "secondary", "2023-01-06 12:00:00", "2023-01-06 12:00:00", None),
    # the same number with and without formatting; a no-break space inside; upper-case accents; 4-byte UTF-8
    (13, "800 001", "Émile@Example.COM", None, "primary", "2023-01-07 12:00:00", "2023-01-07 12:00:00", None),
    (14, "800001", "\U0001f600@x.io", None, "primary", "2023-01-07 12:00:01", "2023-01-07 12:00:02", None),
    (15, "+91\u00a098765\u00a043210", None, 3, "secondary", "2023-01-08 00:00:00", None, None),
    # a soft-deleted secondary
    (
        16,
        "300001",
        "gone@x.io",
        5,
        "secondary",
        "2022-12-31 23:59:59",
        "2023-01-09 00:00:00",
        "2023-01-09 00:00:00",
    ),
]
# The id of a row inserted and deleted again: migrate must never hand it out again.
DELETED_TOP_ID = 20


def filled(row: tuple[object, ...], earliest: str) -> tuple[object, ...]:
    """The row as migrate leaves it: NULLs filled by the rules in docs/switching.md."""
    id_, phone, email, linked, precedence, created, updated, deleted = row
    precedence = precedence or ("secondary" if linked is not None else "primary")
    created = created or updated or deleted or earliest
    updated = updated or created
    return (id_, phone, email, linked, precedence, created, updated, deleted)


# (id, email, phoneNumber, linkedId, linkPrecedence, createdAt second, deleted)
Seed = tuple[int, str | None, str | None, int | None, str, int, bool]


def seed_rows(settings: dict[str, Any], rows: list[Seed]) -> None:
    """Write rows into the service's own Contact table behind its back, and mark the table as
    `migrate` leaves an adopted one (not known to be consistent). createdAt is 2024-01-01
    00:00:<second>; a deleted row gets a deletedAt."""
    run_sql(
        settings,
        "INSERT INTO Contact (id, email, phoneNumber, linkedId, linkPrecedence, createdAt, updatedAt,"
        " deletedAt) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        [
            (
                i,
                e,
                p,
                link,
                prec,
                f"2024-01-01 00:00:{s:02d}",
                f"2024-01-01 00:00:{s:02d}",
                "2024-02-01 00:00:00" if d else None,
            )
            for i, e, p, link, prec, s, d in rows
        ],
        many=True,
    )
    run_sql(settings, "UPDATE ServiceState SET value = '0' WHERE name = 'consistent'")
