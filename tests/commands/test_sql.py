"""The named SQL in sql/: the dialects agree, every statement compiles, the hot ones use indexes.

A typo in a statement that only runs on a rare path (a merge, say) fails here in seconds
instead of in production. SQLite statements are compiled with EXPLAIN on an in-memory
database; the MySQL dialect's own syntax (ON DUPLICATE KEY UPDATE, FOR UPDATE) does not
parse on SQLite, so the MySQL statements are EXPLAINed on the session's MariaDB server.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from typing import Any

import pymysql.cursors
import pytest

from fluxkart import create_app
from identity.database import expand_lists
from identity.pool import get_db
from identity.sql import SQL_DIR, check_dialects_agree, load_queries, parse_queries, schema_statements
from tests.harness.database import blank_settings, mysql_connect
from tests.harness.mariadb import ExistingServer, MariaDBServer
from tests.harness.servers import Api, LiveServer

SQLITE_PARAM = re.compile(r"(?<!:):([A-Za-z_]\w*)")
MYSQL_PARAM = re.compile(r"%\((\w+)\)s")
SQLITE = load_queries("sqlite")
MYSQL = load_queries("mysql")
# The statements every identify runs, and the read endpoints' lookups.
HOT = ["select_customer", "select_connected", "select_identifier_owners"]
# Dummy values for EXPLAIN: numbers where the grammar wants one (LIMIT), else a string.
NUMBERS = {
    "limit": 10,
    "max_rows": 200,
    "after": 0,
    "id": 1,
    "primary_id": 1,
    "demoted_id": 2,
    "linked_id": 1,
}
# List parameters (expanded for IN by the app's Database wrapper, as here).
LISTS: dict[str, list[Any]] = {
    "emails": ["x"],
    "phones": ["1"],
    "parents": [1],
    "children": [1],
    "known": [1],
    "ids": [1, 2],
}


def bind(dialect: str, name: str, **values: Any) -> tuple[str, dict[str, Any]]:
    """A named statement with a value for each parameter, lists expanded as the app does."""
    sql = (SQLITE if dialect == "sqlite" else MYSQL)[name]
    pattern = SQLITE_PARAM if dialect == "sqlite" else MYSQL_PARAM
    params = {p: values.get(p, LISTS.get(p, NUMBERS.get(p, "x"))) for p in pattern.findall(sql)}
    return expand_lists(sql, params, dialect)


def statement_names(path: str) -> set[str]:
    """The names a file under sql/ defines."""
    return set(parse_queries((SQL_DIR / path).read_text()))


def test_dialects_name_the_same_statements() -> None:
    """sql/mysql and sql/sqlite define the same names, so both loaders expose the same set."""
    assert statement_names("mysql/queries.sql") == statement_names("sqlite/queries.sql")
    assert set(MYSQL) == set(SQLITE)
    check_dialects_agree()  # the app's own start-up check agrees


def test_sqlite_statements_are_rewritten() -> None:
    """The loader leaves no PyMySQL placeholders and no FOR UPDATE in the SQLite statements."""
    for name, sql in SQLITE.items():
        assert "%(" not in sql, name
        assert "FOR UPDATE" not in sql.upper(), name


# --------------------------------------------------------------------------
# SQLite: every statement compiles
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sqlite_db() -> Iterator[sqlite3.Connection]:
    """An in-memory database with the schema applied twice (it must be idempotent)."""
    conn = sqlite3.connect(":memory:")
    for _ in range(2):
        for statement in schema_statements("sqlite"):
            conn.execute(statement)
    yield conn
    conn.close()


# Transaction control cannot be EXPLAINed; it is run for real instead.
TRANSACTION_CONTROL = ("begin_write", "commit", "rollback")


def test_transaction_control_runs_on_sqlite(sqlite_db: sqlite3.Connection) -> None:
    """begin_write opens a write transaction that commit and rollback close."""
    for end in ("commit", "rollback"):
        sqlite_db.isolation_level = None
        sqlite_db.execute(SQLITE["begin_write"])
        assert sqlite_db.in_transaction
        sqlite_db.execute(SQLITE[end])
        assert not sqlite_db.in_transaction


@pytest.mark.parametrize("name", sorted(set(SQLITE) - set(TRANSACTION_CONTROL)))
def test_statement_compiles_on_sqlite(sqlite_db: sqlite3.Connection, name: str) -> None:
    """EXPLAIN prepares the statement without running it: syntax, tables and columns are checked."""
    sql, params = bind("sqlite", name)
    sqlite_db.execute("EXPLAIN " + sql, params).fetchall()


@pytest.mark.parametrize("name", HOT)
def test_sqlite_plan_uses_the_identifier_indexes(sqlite_db: sqlite3.Connection, name: str) -> None:
    """No full scan of Contact: matching by email and phone goes through their indexes."""
    sql, params = bind("sqlite", name, email="x", phone="x", emails=["x"], phones=["x"])
    plan = [row[3] for row in sqlite_db.execute("EXPLAIN QUERY PLAN " + sql, params)]
    assert any("USING INDEX Contact_email" in step for step in plan), plan
    assert any("USING INDEX Contact_phoneNumber" in step for step in plan), plan
    assert not [step for step in plan if re.match(r"SCAN (Contact|c)\b", step)], plan


# --------------------------------------------------------------------------
# MySQL: every statement compiles; the hot ones use indexes at a few thousand rows
# --------------------------------------------------------------------------


@pytest.fixture
def mysql_conn(
    mysql_server: MariaDBServer | ExistingServer, mysql_database: str
) -> Iterator[pymysql.connections.Connection]:
    """A connection to a fresh database with the MySQL schema applied twice (idempotent)."""
    conn = mysql_connect(
        mysql_server.settings(mysql_database), autocommit=True, cursorclass=pymysql.cursors.DictCursor
    )
    with conn.cursor() as cur:
        for _ in range(2):
            for statement in schema_statements("mysql"):
                cur.execute(statement)
    yield conn
    conn.close()


def explain(conn: pymysql.connections.Connection, name: str, **values: Any) -> list[dict[str, Any]]:
    """EXPLAIN a named MySQL statement; parameters not given get a dummy value."""
    sql, params = bind("mysql", name, **values)
    with conn.cursor() as cur:
        cur.execute("EXPLAIN " + sql, params)
        return list(cur.fetchall())


def test_transaction_control_runs_on_mysql(mysql_conn: pymysql.connections.Connection) -> None:
    """begin_write opens a transaction that commit and rollback close."""
    with mysql_conn.cursor() as cur:
        for end in ("commit", "rollback"):
            cur.execute(MYSQL["begin_write"])
            cur.execute("SELECT @@in_transaction")
            assert list(cur.fetchone().values()) == [1]
            cur.execute(MYSQL[end])
            cur.execute("SELECT @@in_transaction")
            assert list(cur.fetchone().values()) == [0]


@pytest.mark.parametrize("name", sorted(set(MYSQL) - set(TRANSACTION_CONTROL)))
def test_statement_compiles_on_mysql(mysql_conn: pymysql.connections.Connection, name: str) -> None:
    """MariaDB accepts EXPLAIN of every statement (SELECT, INSERT, UPDATE) as the app sends it."""
    assert explain(mysql_conn, name, created_at="2024-01-01 00:00:00.000000", updated_at=None)


def fill(conn: pymysql.connections.Connection, customers: int) -> None:
    """`customers` customers of one primary and two secondaries each, then fresh statistics."""
    rows = []
    for n in range(customers):
        primary_id = 3 * n + 1
        created = f"2024-01-01 00:00:00.{n:06d}"
        rows.append((primary_id, f"p{n}@x.io", f"{n}", None, "primary", created))
        rows.append((primary_id + 1, f"s{n}@x.io", f"{n}", primary_id, "secondary", created))
        rows.append((primary_id + 2, f"p{n}@x.io", f"9{n}", primary_id, "secondary", created))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO Contact (id, email, phoneNumber, linkedId, linkPrecedence, createdAt, updatedAt)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [(*row, row[-1]) for row in rows],
        )
        cur.execute("ANALYZE TABLE Contact")
        cur.fetchall()


@pytest.mark.parametrize("name", HOT)
@pytest.mark.parametrize(
    "values",
    [
        {"email": "s500@x.io", "phone": "700"},
        {"email": "p10@x.io", "phone": None},
        {"email": None, "phone": "9123"},
    ],
    ids=["email and phone", "email only", "phone only"],
)
def test_mysql_plan_uses_indexes(
    mysql_conn: pymysql.connections.Connection, name: str, values: dict[str, str | None]
) -> None:
    """At 3000 rows, no access to Contact is a full table scan (type ALL).

    Under FOR UPDATE a scan would lock every row it reads; at a million rows it would also
    be slow (STYLE "SQL": every column a query filters or locks on has an index).
    """
    fill(mysql_conn, 1000)
    lists = {"emails": [v for v in [values["email"]] if v], "phones": [v for v in [values["phone"]] if v]}
    plan = explain(mysql_conn, name, **values, **lists, parents=[], children=[])
    contact_steps = [step for step in plan if step["table"] in ("Contact", "c")]
    assert contact_steps, plan
    scans = [step for step in contact_steps if step["type"] == "ALL"]
    assert not scans, plan
    used = {key for step in contact_steps for key in (step["key"] or "").split(",")}
    if values["email"]:
        assert "Contact_email" in used, plan
    if values["phone"]:
        assert "Contact_phoneNumber" in used, plan


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("relink_contacts", {"primary_id": 1, "ids": [4, 5, 6]}),
        ("promote_contact", {"id": 4}),
        ("touch_contact_identifiers", {"ids": [4, 5, 6]}),
        ("select_contact_by_id", {"id": 5}),
        ("lock_contacts", {"ids": [4, 5, 6]}),
        ("select_connected", {"emails": ["p1@x.io"], "phones": ["1"], "parents": [4], "children": [5, 6]}),
    ],
)
def test_mysql_merge_statements_use_indexes(
    mysql_conn: pymysql.connections.Connection, name: str, values: dict[str, Any]
) -> None:
    """The merge's writes find a customer's rows by id and linkedId without scanning the table."""
    fill(mysql_conn, 1000)
    plan = explain(mysql_conn, name, **values)
    assert not [step for step in plan if step["table"] == "Contact" and step["type"] == "ALL"], plan


def test_a_user_without_create_privilege_runs_on_an_existing_schema(
    mysql_server: MariaDBServer | ExistingServer, mysql_database: str
) -> None:
    """README "Production": the service's user needs only SELECT, INSERT, UPDATE once init-db ran."""
    root_settings = {**blank_settings(), **mysql_server.settings(mysql_database)}
    with create_app(root_settings).app_context():
        get_db().connect()  # what `flask init-db` does, with root's rights
    user = f"fluxkart_svc_{mysql_database[-12:]}"
    conn = mysql_server.connect()
    with conn.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'")
        cur.execute(f"GRANT SELECT, INSERT, UPDATE ON `{mysql_database}`.* TO '{user}'@'%'")
    try:
        live = LiveServer(create_app({**root_settings, "MYSQL_USER": user, "MYSQL_PASSWORD": "pw"}))
        try:
            api = Api(live.url)
            assert api.identify("least@privilege.io", "1")["secondaryContactIds"] == []
            assert api.identify("least@privilege.io", "2")["phoneNumbers"] == ["1", "2"]
            api.session.close()
        finally:
            live.close()
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP USER '{user}'@'%'")
        conn.close()


# --------------------------------------------------------------------------
# Every statement, both dialects: no full scan of a table, except the one listed
# --------------------------------------------------------------------------

TABLES = {"Contact", "c", "ContactIdentifier"}
# The statements allowed to read more rows than they return, and why.
ACCEPTED_SCANS = {
    # GET /contacts?email=...: on SQLite the "(filter IS NULL OR column = filter)" form
    # cannot use the email/phone index (SQLite plans it before seeing the value), so a
    # filtered page walks rows in id order from the cursor. The listing is an admin
    # tool, and SQLite the embedded default for local use and small tables (docs/testing.md).
    ("sqlite", "select_contacts"),
    # repair's whole-table passes: its progress bar's count, the walks of the email and
    # phone indexes (paged by value) that find identifiers shared by several customers, and
    # the count of every customer's rows that finds those past the limit (for an operator).
    *(
        (dialect, name)
        for dialect in ("sqlite", "mysql")
        for name in (
            "count_live_contacts",
            "select_shared_emails",
            "select_shared_phones",
            "select_large_customers",
        )
    ),
    # The console's "Customers past the limit": counts per stored customer, paged by primary
    # id; an operator's page, never a request's (docs/console.md).
    ("sqlite", "select_customers_past_limit"),
    ("mysql", "select_customers_past_limit"),
}
FILTERS = [
    {"email": "p10@x.io", "phone": None},
    {"email": None, "phone": "9123"},
    {"email": None, "phone": None},
]


def sqlite_plan(conn: sqlite3.Connection, name: str, values: dict[str, Any]) -> list[str]:
    sql, params = bind("sqlite", name, **values)
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]


@pytest.mark.parametrize("name", sorted(set(SQLITE) - set(TRANSACTION_CONTROL)))
def test_no_sqlite_statement_scans_a_table(sqlite_db: sqlite3.Connection, name: str) -> None:
    """Every access to a table is a SEARCH by key or index (a SCAN reads every row)."""
    for values in FILTERS:
        plan = sqlite_plan(sqlite_db, name, values)
        scans = [step for step in plan if re.match(r"SCAN (\w+)", step) and step.split()[1] in TABLES]
        if ("sqlite", name) in ACCEPTED_SCANS:
            continue
        assert not scans, (name, values, plan)


def test_the_accepted_sqlite_scan_is_what_the_list_says(sqlite_db: sqlite3.Connection) -> None:
    """select_contacts with a filter reads Contact by id range, not by the identifier index (listed above)."""
    plan = sqlite_plan(sqlite_db, "select_contacts", {"email": "p10@x.io", "phone": None})
    assert not any("Contact_email" in step for step in plan), plan  # when this fails, drop the entry


@pytest.mark.parametrize("name", sorted(set(MYSQL) - set(TRANSACTION_CONTROL)))
def test_no_mysql_statement_scans_a_table(mysql_conn: pymysql.connections.Connection, name: str) -> None:
    """At 3000 rows, no statement reads a table by a full scan (EXPLAIN type ALL), with any filter."""
    fill(mysql_conn, 1000)
    for values in FILTERS:
        plan = explain(mysql_conn, name, created_at="2024-01-01 00:00:00.000000", updated_at=None, **values)
        # An INSERT's own row (select_type INSERT) is the row it writes, not a read.
        reads = [step for step in plan if step["select_type"] != "INSERT"]
        scans = [step for step in reads if step["table"] in TABLES and step["type"] == "ALL"]
        assert ("mysql", name) in ACCEPTED_SCANS or not scans, (name, values, plan)
