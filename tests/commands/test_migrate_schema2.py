"""`migrate` upgrades a database the previous release made (ServiceState schema=2), on both backends.

Schema 3 (merge protection) changed CustomerHistory (kinds 'refused' and 'split', the `detail`
column) and added BlockedValue and CustomerLock. The service refuses a schema-2 database
("run migrate"); migrate upgrades it in place, keeping every row and event with its id, and
the service then serves it. The schema-2 statements are copied here (sql/ holds only the
current schema), as the previous release's schema files wrote them.
"""

from __future__ import annotations

import json
from typing import Any

from fluxkart import create_app
from identity.database import SCHEMA_VERSION
from identity.migrate import sqlite_definitions
from identity.sql import MIGRATE_SQL, load_queries, schema_statements
from tests.harness.database import run_sql
from tests.harness.servers import Api, LiveServer

# sql/mysql/schema.sql of schema version 2, comments left out.
MYSQL_SCHEMA_2 = [
    """CREATE TABLE IF NOT EXISTS ServiceState (
    name VARCHAR(64) CHARACTER SET ascii NOT NULL,
    value VARCHAR(255) NOT NULL,
    PRIMARY KEY (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS Contact (
    id INT NOT NULL AUTO_INCREMENT,
    phoneNumber VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    email VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    linkedId INT NULL,
    linkPrecedence ENUM('primary', 'secondary') NOT NULL,
    createdAt DATETIME(6) NOT NULL,
    updatedAt DATETIME(6) NOT NULL,
    deletedAt DATETIME(6) NULL,
    PRIMARY KEY (id),
    KEY Contact_email (email),
    KEY Contact_phoneNumber (phoneNumber),
    KEY Contact_linkedId (linkedId)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS ContactIdentifier (
    kind ENUM('email', 'phone') NOT NULL,
    value VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    version BIGINT UNSIGNED NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, value)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS CustomerHistory (
    id BIGINT NOT NULL AUTO_INCREMENT,
    kind ENUM('created', 'linked', 'merged', 'repaired', 'imported') NOT NULL,
    createdAt DATETIME(6) NOT NULL,
    requestId VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    customerId INT NOT NULL,
    formerCustomerId INT NULL,
    contactIds TEXT CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    PRIMARY KEY (id),
    KEY CustomerHistory_customerId (customerId, createdAt, id),
    KEY CustomerHistory_formerCustomerId (formerCustomerId)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS CustomerErasure (
    id BIGINT NOT NULL AUTO_INCREMENT,
    erasedAt DATETIME(6) NOT NULL,
    requestId VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    contacts INT NOT NULL,
    identifiers INT NOT NULL,
    historyEvents INT NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin""",
]

# sql/sqlite/schema.sql of schema version 2, comments left out.
SQLITE_SCHEMA_2 = [
    """CREATE TABLE IF NOT EXISTS ServiceState (
    name TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS Contact (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    phoneNumber TEXT,
    email TEXT,
    linkedId INTEGER,
    linkPrecedence TEXT NOT NULL CHECK (linkPrecedence IN ('primary', 'secondary')),
    createdAt DATETIME NOT NULL,
    updatedAt DATETIME NOT NULL,
    deletedAt DATETIME
)""",
    "CREATE INDEX IF NOT EXISTS Contact_email ON Contact (email)",
    "CREATE INDEX IF NOT EXISTS Contact_phoneNumber ON Contact (phoneNumber)",
    "CREATE INDEX IF NOT EXISTS Contact_linkedId ON Contact (linkedId)",
    """CREATE TABLE IF NOT EXISTS ContactIdentifier (
    kind TEXT NOT NULL CHECK (kind IN ('email', 'phone')),
    value TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS CustomerHistory (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('created', 'linked', 'merged', 'repaired', 'imported')),
    createdAt DATETIME NOT NULL,
    requestId TEXT NOT NULL,
    customerId INTEGER NOT NULL,
    formerCustomerId INTEGER,
    contactIds TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS CustomerHistory_customerId ON CustomerHistory (customerId, createdAt, id)",
    "CREATE INDEX IF NOT EXISTS CustomerHistory_formerCustomerId ON CustomerHistory (formerCustomerId)",
    """CREATE TABLE IF NOT EXISTS CustomerErasure (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    erasedAt DATETIME NOT NULL,
    requestId TEXT NOT NULL,
    contacts INTEGER NOT NULL,
    identifiers INTEGER NOT NULL,
    historyEvents INTEGER NOT NULL
)""",
]

T = "2025-03-01 10:00:0{}.000000"
# What the previous release wrote for (a@x, 111), (b@x, 222), then (a@x, 222): two customers
# merged, with their history; then (c@x, 333) and an erased customer's id left a gap.
ROWS = [
    (1, "111", "a@x", None, "primary", T.format(1), T.format(3)),
    (2, "222", "b@x", 1, "secondary", T.format(2), T.format(3)),
    (4, "333", "c@x", None, "primary", T.format(4), T.format(4)),
]
EVENTS = [
    (1, "created", T.format(1), "r1", 1, None, "[1]"),
    (2, "created", T.format(2), "r2", 2, None, "[2]"),
    (3, "merged", T.format(3), "r3", 1, 2, "[2]"),
    (4, "created", T.format(4), "r4", 4, None, "[4]"),
    (5, "created", T.format(5), "r5", 5, None, "[5]"),  # a customer erased since (below)
]
HISTORY = (
    "SELECT id, kind, requestId, customerId, formerCustomerId, contactIds FROM CustomerHistory ORDER BY id"
)


def make_schema_2(settings: dict[str, Any]) -> None:
    """A database as the previous release left it: its schema, ServiceState schema=2, rows, history."""
    for statement in MYSQL_SCHEMA_2 if settings["MYSQL_HOST"] else SQLITE_SCHEMA_2:
        run_sql(settings, statement)
    run_sql(
        settings,
        "INSERT INTO ServiceState (name, value) VALUES (%s, %s)",
        [("schema", "2"), ("consistent", "1"), ("phone_region", "")],
        many=True,
    )
    run_sql(
        settings,
        "INSERT INTO Contact (id, phoneNumber, email, linkedId, linkPrecedence, createdAt, updatedAt)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        ROWS,
        many=True,
    )
    run_sql(
        settings,
        "INSERT INTO CustomerHistory (id, kind, createdAt, requestId, customerId, formerCustomerId,"
        " contactIds) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        EVENTS,
        many=True,
    )
    run_sql(settings, "DELETE FROM CustomerHistory WHERE id = 5")


def history_indexes(settings: dict[str, Any]) -> set[str]:
    if settings["MYSQL_HOST"]:
        rows = run_sql(
            settings,
            "SELECT DISTINCT INDEX_NAME AS name FROM information_schema.STATISTICS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'CustomerHistory'",
        )
    else:
        rows = run_sql(
            settings, "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'CustomerHistory'"
        )
    return {row["name"] for row in rows if not row["name"].startswith("sqlite_autoindex")}


def state(settings: dict[str, Any]) -> dict[str, str]:
    return {row["name"]: row["value"] for row in run_sql(settings, "SELECT name, value FROM ServiceState")}


def test_a_schema_2_database_is_upgraded_and_served(settings: dict[str, Any], backend: str) -> None:
    make_schema_2(settings)
    events_before = run_sql(settings, HISTORY)
    contacts_before = run_sql(settings, "SELECT id, email, phoneNumber, linkedId FROM Contact ORDER BY id")
    app = create_app(settings)
    refused = app.test_client().get("/health/ready")
    assert refused.status_code == 503 and "migrate" in refused.json["error"]["message"]

    result = app.test_cli_runner().invoke(args=["migrate"])
    assert result.exit_code == 0, result.output
    if backend == "mysql":
        assert "extend CustomerHistory's kinds with 'refused' and 'split'" in result.output
        assert "add CustomerHistory.detail" in result.output
        assert "ALGORITHM=INSTANT" in result.output
        assert "add CustomerHistory.feedSeq" in result.output
        assert "add CustomerErasure.customerIds and feedSeq" in result.output
    else:
        assert "rebuild CustomerHistory" in result.output
        assert "rebuild CustomerErasure" in result.output
    assert f"record in ServiceState: schema={SCHEMA_VERSION}" in result.output
    assert "consistent" not in result.output.split("record in ServiceState")[1].splitlines()[0]
    assert state(settings)["schema"] == SCHEMA_VERSION
    assert state(settings)["consistent"] == "1"  # the previous release's data needs no repair
    # Every event and row kept with its id; the indexes are there; new tables exist.
    assert run_sql(settings, HISTORY) == events_before
    assert run_sql(settings, "SELECT COUNT(*) AS n FROM CustomerHistory WHERE detail IS NULL") == [{"n": 4}]
    assert (
        run_sql(settings, "SELECT id, email, phoneNumber, linkedId FROM Contact ORDER BY id")
        == contacts_before
    )
    assert {"CustomerHistory_customerId", "CustomerHistory_formerCustomerId"} <= history_indexes(settings)
    assert run_sql(settings, "SELECT COUNT(*) AS n FROM CustomerLock") == [{"n": 0}]
    for kind in ("refused", "split"):  # the new kinds are accepted
        run_sql(
            settings,
            "INSERT INTO CustomerHistory (kind, createdAt, requestId, customerId, contactIds, detail)"
            " VALUES (%s, %s, 'probe', 0, '[]', '{}')",
            (kind, T.format(9)),
        )
    run_sql(settings, "DELETE FROM CustomerHistory WHERE requestId = 'probe'")

    again = app.test_cli_runner().invoke(args=["migrate"])
    assert again.exit_code == 0 and "nothing to change" in again.output, again.output

    live = LiveServer(create_app(settings))
    api = Api(live.url)
    try:
        assert api.get("/health/ready").status_code == 200
        # A merge of the two customers records its evidence in the new column.
        merged = api.identify("c@x", "111")
        assert (merged["primaryContactId"], merged["secondaryContactIds"]) == (1, [2, 4])
        # The shipped blocked values are in force (seeded on first use).
        assert api.post("/identify", json={"phoneNumber": "0000000000"}).status_code == 422
        history = api.get("/customers/1/history").json()
        kinds = [event["kind"] for event in history["events"]]
        assert kinds == ["created", "created", "merged", "created", "merged"], kinds
        assert [event["id"] for event in history["events"]][:4] == [1, 2, 3, 4]
        assert history["events"][-1]["evidence"] == {"email": 4, "phone": 1}
        new_event = run_sql(settings, "SELECT id, detail FROM CustomerHistory WHERE id > 5")
        assert len(new_event) == 1 and new_event[0]["id"] > 7  # ids handed out before are never reused
        assert json.loads(new_event[0]["detail"]) == {"evidence": {"email": 4, "phone": 1}}
        # The feed of changes: the events of the previous release are numbered, oldest first,
        # by the first read of the feed (docs/changes.md); older than its retention, they answer
        # 410 from the start, and a consumer follows from the head.
        assert api.get("/changes").json() == {"changes": [], "cursor": 5, "head": 5}
        assert run_sql(settings, "SELECT COUNT(*) AS n FROM CustomerHistory WHERE feedSeq IS NULL") == [
            {"n": 0}
        ]
        numbered = run_sql(settings, "SELECT id, feedSeq FROM CustomerHistory WHERE id < 5 ORDER BY id")
        assert [row["feedSeq"] for row in numbered] == [1, 2, 3, 4]
        assert api.get("/changes", params={"after": 0}).status_code == 410
    finally:
        api.session.close()
        live.close()


def test_sqlite_history_rebuild_statement_is_the_schema_files() -> None:
    """sql/sqlite/migrate.sql's CustomerHistory_new is sql/sqlite/schema.sql's CustomerHistory."""
    schema = next(s for s in schema_statements("sqlite") if "TABLE IF NOT EXISTS CustomerHistory " in s)
    rebuild = load_queries("sqlite", MIGRATE_SQL)["create_history_new"]
    assert sqlite_definitions(rebuild) == sqlite_definitions(schema)


def test_sqlite_erasure_rebuild_statement_is_the_schema_files() -> None:
    """sql/sqlite/migrate.sql's CustomerErasure_new is sql/sqlite/schema.sql's CustomerErasure."""
    schema = next(s for s in schema_statements("sqlite") if "TABLE IF NOT EXISTS CustomerErasure " in s)
    rebuild = load_queries("sqlite", MIGRATE_SQL)["create_erasure_new"]
    assert sqlite_definitions(rebuild) == sqlite_definitions(schema)
