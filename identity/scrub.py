"""Erased means gone from an SQLite file (SPEC, "History and erasure"; issue 22).

Deleting rows is not enough for the bytes: a deleted cell stays in its page until the page
is reused (unless `secure_delete` zeroes it), a page that gave cells to a neighbour keeps
stale copies of them in its unused gap (secure_delete does not reach those: measured), and
the WAL keeps a copy of every page the customer was ever written to. So every SQLite
connection runs with `secure_delete` (database.py), and after an erasure commits,
`scrub_after_erasure` rebuilds the file from its live rows (VACUUM) and checkpoints the WAL
into it, truncating the WAL to zero bytes. VACUUM holds SQLite's write lock while it runs
(identify's writers wait, up to the busy timeout), which is why its cost is measured. Its cost is measured by
bench/erasure_cost.py (docs/history-and-erasure.md has the figures).

On MySQL/MariaDB this is not the service's to do: what remains where (binary log, undo,
the doublewrite buffer, backups) and how an operator purges it is in
docs/history-and-erasure.md.
"""

from __future__ import annotations

import functools
import logging

from identity.database import Database
from identity.sql import load_queries

log = logging.getLogger("fluxkart")


@functools.cache
def scrub_statements() -> dict[str, str]:
    """sql/sqlite/scrub.sql, read once."""
    return load_queries("sqlite", ("sqlite/scrub.sql",))


def scrub_after_erasure(db: Database) -> None:
    """After an erasure's COMMIT on SQLite: no byte of the erased identifiers stays in the
    database file or its WAL. Nothing to do on MySQL. Logs a warning when a reader kept the
    checkpoint from truncating the WAL (the next checkpoint finishes it)."""
    if db.dialect != "sqlite":
        return
    statements = scrub_statements()
    cur = db.connect().cursor()
    cur.execute(statements["vacuum"])
    row = cur.execute(statements["checkpoint_truncate"]).fetchone()
    if row and row.get("busy"):
        log.warning("after an erasure a reader kept the WAL from being truncated; the next checkpoint will")
