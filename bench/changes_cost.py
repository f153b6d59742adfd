"""What the feed of changes costs identify's write path: p50 of new-customer and merge requests,
with and without the feed's columns, in the same run.

    .venv/bin/python -m bench.changes_cost                       # MariaDB
    .venv/bin/python -m bench.changes_cost --backend sqlite

identify writes no statement for the feed (its events are numbered later, by the feed's
readers); what it may pay is the feed's index on CustomerHistory (feedSeq, createdAt, id),
which every history INSERT maintains. A is the service on a database whose CustomerHistory
has no feed column and no feed index (dropped after the schema is made), B the service on the
schema as shipped. Same code, same server, requests alternating A B B A from one client
(bench/history_cost.py's method and figures: p50 per side, B/A, median of paired B - A,
B/A per quarter). Nobody reads /changes during the run, as on a service no consumer follows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.history_cost import measure, report
from tests.harness.database import run_sql
from tests.harness.gunicorn import Gunicorn, gunicorn_env
from tests.harness.mariadb import MariaDBServer

# SQLite cannot drop a column its table constraint names: CustomerHistory is rebuilt without it.
SQLITE_WITHOUT_FEED = [
    """CREATE TABLE CustomerHistory_nofeed (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL
        CHECK (kind IN ('created', 'linked', 'merged', 'repaired', 'imported', 'refused', 'split')),
    createdAt DATETIME NOT NULL,
    requestId TEXT NOT NULL,
    customerId INTEGER NOT NULL,
    formerCustomerId INTEGER,
    contactIds TEXT NOT NULL,
    detail TEXT
)""",
    "DROP TABLE CustomerHistory",
    "ALTER TABLE CustomerHistory_nofeed RENAME TO CustomerHistory",
    "CREATE INDEX CustomerHistory_customerId ON CustomerHistory (customerId, createdAt, id)",
    "CREATE INDEX CustomerHistory_formerCustomerId ON CustomerHistory (formerCustomerId)",
]
MYSQL_WITHOUT_FEED = [
    "ALTER TABLE CustomerHistory DROP INDEX CustomerHistory_feedSeq, DROP COLUMN feedSeq",
]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["mysql", "sqlite"], default="mysql")
    parser.add_argument("--requests", type=int, default=400, help="timed requests per kind and side")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fluxkart-changes-cost-") as tmp:
        work = Path(tmp)
        mariadb = None
        if args.backend == "mysql":
            (work / "mariadb").mkdir()
            mariadb = MariaDBServer(work / "mariadb")
            mariadb.start()
        servers: dict[str, Gunicorn] = {}
        try:
            for side in ("A", "B"):
                settings = {"FLUXKART_SQLITE_PATH": str(work / f"{side}.db")}
                if mariadb is not None:
                    with mariadb.connect() as conn, conn.cursor() as cur:
                        cur.execute(f"CREATE DATABASE `changes_cost_{side}`")
                    settings = mariadb.settings(f"changes_cost_{side}")
                servers[side] = Gunicorn(
                    gunicorn_env(settings, 1, 1, "sync"), work, app="fluxkart:create_app()"
                )
                servers[side].start(ready_path="/health/ready")  # the schema is made
                if side == "A":
                    for statement in MYSQL_WITHOUT_FEED if mariadb is not None else SQLITE_WITHOUT_FEED:
                        run_sql(settings, statement)
            results = measure(servers, args.requests)
        finally:
            for server in servers.values():
                server.stop()
            if mariadb is not None:
                mariadb.stop()
    report(args.backend, results, args.requests, ("no feed column", "feed"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
