"""`flask --app fluxkart migrate` on a legacy Contact table, on both backends (SPEC, "Commands").

Each test builds the replaced implementation's table itself (tests/harness/legacy.py),
runs the real command (Flask's CLI runner, and once as a subprocess), and reads
the result straight from the database: column types, collations and indexes as
a table the schema file created has them, every row kept with its id and its
values (identifiers in canonical form, NULLs filled by the documented rules),
ServiceState written; a second run, a dry run and a refusal change nothing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest

import fluxkart
from identity import migrate as migrate_command
from identity.database import SCHEMA_VERSION
from identity.errors import ApiError
from identity.normalize import normalize_email, normalize_phone
from identity.sql import MIGRATE_SQL, load_queries, schema_statements
from tests.harness.database import blank_settings, run_sql
from tests.harness.legacy import (
    DELETED_TOP_ID,
    INSERT_CONTACT,
    LEGACY_INDEXES,
    LEGACY_ROWS,
    MYSQL_CONTACT,
    SQLITE_CONTACT,
    filled,
)
from tests.harness.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
# The oldest createdAt among LEGACY_ROWS: what a row without any timestamp gets.
EARLIEST = "2022-12-31 23:59:59"
COLUMNS = "id, phoneNumber, email, linkedId, linkPrecedence, createdAt, updatedAt, deletedAt"


def create_legacy(settings: dict[str, Any], rows: list[tuple[object, ...]], indexes: bool = False) -> None:
    """The reference's table with `rows`, and an id handed out and deleted above them."""
    run_sql(settings, MYSQL_CONTACT if settings["MYSQL_HOST"] else SQLITE_CONTACT)
    for statement in LEGACY_INDEXES if indexes else []:
        run_sql(settings, statement)
    if rows:
        run_sql(settings, INSERT_CONTACT, rows, many=True)
    run_sql(settings, INSERT_CONTACT, (DELETED_TOP_ID, "1", None, None, "primary", EARLIEST, EARLIEST, None))
    run_sql(settings, "DELETE FROM Contact WHERE id = %s", (DELETED_TOP_ID,))


def migrate(app: Any, *args: str, exit_code: int = 0) -> str:
    """Run the real command through Flask's CLI runner; returns its output."""
    result = app.test_cli_runner().invoke(args=["migrate", *args])
    assert result.exit_code == exit_code, result.output + repr(result.exception)
    return str(result.output)


def stamp(value: Any) -> str:
    """A timestamp as the service's fixed-width text, from either driver."""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="microseconds")
    return str(value)


def stored_rows(settings: dict[str, Any]) -> list[tuple[object, ...]]:
    rows = run_sql(settings, f"SELECT {COLUMNS} FROM Contact ORDER BY id")  # noqa: S608 (constant)
    return [
        tuple(stamp(v) if k.endswith("At") and v is not None else v for k, v in row.items()) for row in rows
    ]


def canonical(value: Any, normalize: Any) -> Any:
    """The value as the service's normalization stores it; an invalid one stays as it is."""
    try:
        return normalize(value)
    except ApiError:
        return value


def expected_rows(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """LEGACY_ROWS as migrate must leave them: filled, timestamps in microseconds, and the
    identifiers of live rows in canonical form (updatedAt then set to the time of migrate)."""
    widened = []
    for row in rows:
        values = list(filled(row, EARLIEST))
        values = [f"{v}.000000" if i >= 5 and v is not None else v for i, v in enumerate(values)]
        if values[7] is None:  # deletedAt: deleted rows are never changed
            phone, email = (
                canonical(values[1], normalize_phone),
                canonical(values[2], normalize_email),
            )
            if (phone, email) != (values[1], values[2]):
                values[1:3], values[6] = [phone, email], ANY
        widened.append(tuple(values))
    return widened


def fingerprint(settings: dict[str, Any]) -> str:
    """Every table's definition and Contact's content (and its id counter), hashed."""
    if settings["MYSQL_HOST"]:
        tables = run_sql(settings, "SHOW TABLES")
        parts = [repr(tables)]
        for row in tables:
            name = next(iter(row.values()))
            parts.append(repr(run_sql(settings, f"SHOW CREATE TABLE `{name}`")))  # noqa: S608 (from SHOW TABLES)
        parts.append(repr(run_sql(settings, "CHECKSUM TABLE Contact")))
    else:
        parts = [repr(run_sql(settings, "SELECT type, name, sql FROM sqlite_master ORDER BY name"))]
        parts.append(repr(run_sql(settings, f"SELECT {COLUMNS} FROM Contact ORDER BY id")))  # noqa: S608
        parts.append(repr(run_sql(settings, "SELECT name, seq FROM sqlite_sequence ORDER BY name")))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def table_names(settings: dict[str, Any]) -> set[str]:
    sql = "SHOW TABLES" if settings["MYSQL_HOST"] else "SELECT name FROM sqlite_master WHERE type = 'table'"
    return {str(next(iter(row.values()))) for row in run_sql(settings, sql)}


def service_state(settings: dict[str, Any]) -> dict[str, str]:
    """ServiceState's schema and consistency facts (the phone region is repair's business)."""
    rows = run_sql(settings, "SELECT name, value FROM ServiceState")
    return {row["name"]: row["value"] for row in rows if row["name"] != "phone_region"}


def mysql_shape(settings: dict[str, Any]) -> dict[str, Any]:
    """Contact's columns, indexes and table options as information_schema describes them."""
    columns = run_sql(
        settings,
        "SELECT COLUMN_NAME, ORDINAL_POSITION, COLUMN_TYPE, IS_NULLABLE, CHARACTER_SET_NAME, COLLATION_NAME, "
        "EXTRA FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'Contact' "
        "ORDER BY ORDINAL_POSITION",
    )
    indexes = run_sql(
        settings,
        "SELECT INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, NON_UNIQUE FROM information_schema.STATISTICS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'Contact' ORDER BY INDEX_NAME, SEQ_IN_INDEX",
    )
    table = run_sql(
        settings,
        "SELECT ENGINE, TABLE_COLLATION FROM information_schema.TABLES "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'Contact'",
    )
    return {"columns": columns, "indexes": indexes, "table": table}


def sqlite_shape(settings: dict[str, Any]) -> dict[str, Any]:
    """Contact's columns (with declared types), indexes and definition as SQLite describes them."""
    definition = run_sql(settings, "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'Contact'")
    return {
        "columns": run_sql(settings, "SELECT * FROM pragma_table_xinfo('Contact')"),
        "indexes": run_sql(
            settings,
            'SELECT il.name, il."unique", ii.seqno, ii.name AS column_name '
            "FROM pragma_index_list('Contact') il JOIN pragma_index_info(il.name) ii "
            "ORDER BY il.name, ii.seqno",
        ),
        "definition": migrate_command.sqlite_definitions(definition[0]["sql"]),
    }


def fresh_schema_shape(settings: dict[str, Any], tmp_path: Path, mysql_server: Any = None) -> dict[str, Any]:
    """The shape of a Contact table that the service's schema file created, on this backend."""
    if settings["MYSQL_HOST"]:
        name = f"{settings['MYSQL_DATABASE']}_fresh"
        conn = mysql_server.connect()
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
        try:
            fresh = {**settings, "MYSQL_DATABASE": name}
            for statement in schema_statements("mysql"):
                run_sql(fresh, statement)
            return mysql_shape(fresh)
        finally:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE `{name}`")
            conn.close()
    fresh = {**settings, "FLUXKART_SQLITE_PATH": str(tmp_path / "fresh.db")}
    for statement in schema_statements("sqlite"):
        run_sql(fresh, statement)
    return sqlite_shape(fresh)


def shape(settings: dict[str, Any]) -> dict[str, Any]:
    return mysql_shape(settings) if settings["MYSQL_HOST"] else sqlite_shape(settings)


# --------------------------------------------------------------------------


def test_migrate_brings_legacy_table_to_the_schema(
    app: Any, settings: dict[str, Any], backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    create_legacy(settings, LEGACY_ROWS)
    output = migrate(app)

    server = request.getfixturevalue("mysql_server") if backend == "mysql" else None
    assert shape(settings) == fresh_schema_shape(settings, tmp_path, server)
    assert stored_rows(settings) == expected_rows(LEGACY_ROWS)
    assert service_state(settings) == {"schema": SCHEMA_VERSION, "consistent": "0"}
    assert {"Contact", "ContactIdentifier", "ServiceState"} <= table_names(settings)
    # Byte-exact from now on: the accented and the plain email are two values.
    assert [
        r["id"] for r in run_sql(settings, "SELECT id FROM Contact WHERE email = %s", ("rene@x.com",))
    ] == [4]
    # The id handed out before migrate (and deleted) is not handed out again.
    run_sql(settings, INSERT_CONTACT, (None, "1", None, None, "primary", EARLIEST, EARLIEST, None))
    assert run_sql(settings, "SELECT MAX(id) AS id FROM Contact")[0]["id"] == DELETED_TOP_ID + 1

    assert "linkPrecedence: 'secondary' where linkedId is set, else 'primary': 3 rows" in output
    assert f"else the oldest createdAt in the table ({EARLIEST}): 3 rows" in output
    assert "updatedAt: the row's createdAt (as filled): 3 rows" in output
    assert "then: normalize every stored email and phone number" in output
    assert "identifiers normalized: " in output
    assert "next: flask --app fluxkart repair" in output
    if backend == "mysql":
        assert "ALGORITHM=COPY, LOCK=SHARED" in output
        assert "phoneNumber: varchar(255) utf8mb4_general_ci NULL -> varchar(32) utf8mb4_bin NULL" in output
        assert "add indexes Contact_email on email, Contact_phoneNumber on phoneNumber" in output
        assert "ALGORITHM=INPLACE, LOCK=NONE" in output
    else:
        assert "rebuild Contact" in output
        assert "email: VARCHAR(255) COLLATE NOCASE NULL -> TEXT" in output


def test_second_run_changes_nothing_and_says_so(app: Any, settings: dict[str, Any]) -> None:
    create_legacy(settings, LEGACY_ROWS)
    migrate(app)
    before = fingerprint(settings)
    output = migrate(app)
    assert "nothing to change" in output
    assert fingerprint(settings) == before
    assert service_state(settings) == {"schema": SCHEMA_VERSION, "consistent": "0"}


def test_dry_run_prints_the_plan_and_changes_nothing(
    app: Any, settings: dict[str, Any], backend: str
) -> None:
    create_legacy(settings, LEGACY_ROWS, indexes=True)
    before = fingerprint(settings)
    output = migrate(app, "--dry-run")
    assert fingerprint(settings) == before
    assert table_names(settings) == {"Contact"} | ({"sqlite_sequence"} if backend == "sqlite" else set())
    assert "dry run:" in output and "nothing changed" in output
    assert "linkPrecedence: 'secondary' where linkedId is set, else 'primary': 3 rows" in output
    assert "create table ServiceState" in output
    assert f"record in ServiceState: schema={SCHEMA_VERSION}, consistent=0" in output
    if backend == "mysql":
        # run.sh --indexes made idx_email: renamed, not built again.
        assert "rename index idx_email on email to Contact_email" in output
        assert "ALGORITHM=INSTANT" in output
    else:
        assert (
            "index idx_email on (email) goes with the old table; the service's Contact_email replaces it"
            in (output)
        )
    # The real run does what the dry run printed.
    applied = migrate(app)
    assert applied.startswith(output.split("dry run:")[0])


def test_legacy_indexes_become_the_services(
    app: Any, settings: dict[str, Any], backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    create_legacy(settings, LEGACY_ROWS, indexes=True)
    migrate(app)
    server = request.getfixturevalue("mysql_server") if backend == "mysql" else None
    assert shape(settings) == fresh_schema_shape(settings, tmp_path, server)
    assert stored_rows(settings) == expected_rows(LEGACY_ROWS)


def unconvertible_rows(backend: str) -> list[tuple[object, ...]]:
    """Rows the new table cannot hold as they are: a phone longer than VARCHAR(32) on MySQL;
    on SQLite (TEXT has no length) a timestamp that is no timestamp and an unknown precedence."""
    if backend == "mysql":
        return [
            (
                30,
                "+1 (555) 000-0000 extension 12345 (ask for Bob)",
                "bob@x.io",
                None,
                "primary",
                EARLIEST,
                EARLIEST,
                None,
            ),
            (31, "0" * 33, None, None, "primary", EARLIEST, EARLIEST, None),
        ]
    return [
        (30, "5550030", "bob@x.io", None, "primary", "29/02/2024 10:00", EARLIEST, None),
        (31, "5550031", None, None, "Primary", EARLIEST, EARLIEST, None),
    ]


def test_refuses_values_that_do_not_fit_naming_the_rows(
    app: Any, settings: dict[str, Any], backend: str
) -> None:
    bad = unconvertible_rows(backend)
    if backend == "sqlite":
        # The legacy CHECK would refuse 'Primary'; a table without it is what holds such values.
        unchecked = SQLITE_CONTACT.replace(" CHECK (linkPrecedence IN ('primary', 'secondary'))", "")
        run_sql(settings, unchecked)
    create_legacy(settings, LEGACY_ROWS + bad)
    before = fingerprint(settings)
    for args in ([], ["--dry-run"]):
        output = migrate(app, *args, exit_code=1)
        assert "refusing to migrate, nothing was changed: 2 Contact rows" in output
        if backend == "mysql":
            assert "id 30: phoneNumber has 47 characters, the new column holds 32" in output
            assert "id 31: phoneNumber has 33 characters, the new column holds 32" in output
        else:
            assert "id 30: createdAt is not a timestamp" in output
            assert "id 31: linkPrecedence is neither primary nor secondary" in output
        assert fingerprint(settings) == before
    # Once the values are corrected, migrate goes ahead.
    run_sql(
        settings,
        "UPDATE Contact SET phoneNumber = %s, createdAt = %s, linkPrecedence = %s WHERE id >= 30",
        ("5550030", EARLIEST, "primary"),
    )
    migrate(app)
    assert service_state(settings)["schema"] == SCHEMA_VERSION


def test_empty_legacy_table_is_consistent(app: Any, settings: dict[str, Any]) -> None:
    create_legacy(settings, [])
    output = migrate(app)
    assert "Contact holds 0 rows" in output
    assert service_state(settings) == {"schema": SCHEMA_VERSION, "consistent": "1"}
    assert "next: flask --app fluxkart repair" not in output


def test_without_a_contact_table_creates_the_schema(
    app: Any, settings: dict[str, Any], backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    output = migrate(app)
    assert "create table Contact (new and empty)" in output
    server = request.getfixturevalue("mysql_server") if backend == "mysql" else None
    assert shape(settings) == fresh_schema_shape(settings, tmp_path, server)
    assert service_state(settings) == {"schema": SCHEMA_VERSION, "consistent": "1"}
    assert "nothing to change" in migrate(app)


def test_mysql_target_shape_is_the_schema_files(mysql_server: Any, mysql_database: str) -> None:
    """migrate's description of the target (MYSQL_CONTACT_COLUMNS) is what schema.sql creates."""
    settings = {**blank_settings(), **mysql_server.settings(mysql_database)}
    for statement in schema_statements("mysql"):
        run_sql(settings, statement)
    described = {
        row["COLUMN_NAME"]: (
            migrate_command.INT_DISPLAY_WIDTH.sub(r"\1", row["COLUMN_TYPE"]),
            row["IS_NULLABLE"],
            row["COLLATION_NAME"],
            row["EXTRA"],
        )
        for row in mysql_shape(settings)["columns"]
    }
    assert described == migrate_command.MYSQL_CONTACT_COLUMNS


def test_sqlite_rebuild_statement_is_the_schema_files() -> None:
    """sql/sqlite/migrate.sql's Contact_new is sql/sqlite/schema.sql's Contact, definition for definition."""
    schema = next(s for s in schema_statements("sqlite") if "TABLE IF NOT EXISTS Contact " in s)
    rebuild = load_queries("sqlite", MIGRATE_SQL)["create_contact_new"]
    assert migrate_command.sqlite_definitions(rebuild) == migrate_command.sqlite_definitions(schema)


def test_migrate_as_a_subprocess(settings: dict[str, Any], backend: str) -> None:
    """The command an operator types, with the settings in the environment."""
    create_legacy(settings, LEGACY_ROWS)
    env = {**os.environ, **{k: str(v) for k, v in settings.items()}}
    command = [sys.executable, "-m", "flask", "--app", "fluxkart", "migrate"]
    dry = subprocess.run(
        [*command, "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert dry.returncode == 0, dry.stderr
    assert "nothing changed" in dry.stdout
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "migrated in" in done.stdout
    assert service_state(settings) == {"schema": SCHEMA_VERSION, "consistent": "0"}


@pytest.mark.parametrize("backend", ["mysql"])
def test_partly_migrated_mysql_table_gets_only_what_it_lacks(
    app: Any, settings: dict[str, Any], tmp_path: Path, mysql_server: Any
) -> None:
    """The service's columns already, but the old default collation and one index missing:
    metadata-only and in-place steps, no table copy."""
    for statement in schema_statements("mysql"):
        run_sql(settings, statement)
    run_sql(settings, "ALTER TABLE Contact DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_general_ci")
    run_sql(settings, "DROP INDEX Contact_linkedId ON Contact")
    output = migrate(app)
    assert "set Contact's default collation: utf8mb4_general_ci -> utf8mb4_bin" in output
    assert "add index Contact_linkedId on linkedId" in output
    assert "COPY" not in output
    assert shape(settings) == fresh_schema_shape(settings, tmp_path, mysql_server)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_table_without_autoincrement(app: Any, settings: dict[str, Any], tmp_path: Path) -> None:
    """A legacy table with a plain INTEGER PRIMARY KEY has no sequence: ids continue after the largest."""
    run_sql(settings, SQLITE_CONTACT.replace(" AUTOINCREMENT", ""))
    run_sql(settings, INSERT_CONTACT, LEGACY_ROWS, many=True)
    migrate(app)
    assert shape(settings) == fresh_schema_shape(settings, tmp_path)
    assert stored_rows(settings) == expected_rows(LEGACY_ROWS)
    run_sql(settings, INSERT_CONTACT, (None, "1", None, None, "primary", EARLIEST, EARLIEST, None))
    assert run_sql(settings, "SELECT MAX(id) AS id FROM Contact")[0]["id"] == len(LEGACY_ROWS) + 1


@pytest.mark.parametrize("backend", ["mysql"])
def test_a_held_table_stops_migrate_with_what_to_do(
    app: Any, settings: dict[str, Any], mysql_server: Any
) -> None:
    """An open transaction on Contact (the old service still running): the ALTER gives up after
    migrate's lock wait instead of queueing every query behind it, and says what to do."""
    create_legacy(settings, LEGACY_ROWS)
    holder = mysql_server.connect(settings["MYSQL_DATABASE"])
    with holder.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SELECT COUNT(*) FROM Contact")
        output = migrate(app, exit_code=1)
        cur.execute("ROLLBACK")
    holder.close()
    assert "migrate stopped at step 2" in output
    assert "step 1 is done and stays done" in output
    assert "stop the writers and run migrate again" in output
    assert "ServiceState" not in table_names(settings)
    # Once the table is free, migrate finishes the job.
    assert "migrated in" in migrate(app)
    assert service_state(settings) == {"schema": SCHEMA_VERSION, "consistent": "0"}


def test_old_table_restored_over_a_migrated_one_needs_repair_again(
    app: Any, settings: dict[str, Any]
) -> None:
    """Going back (the dump restored: Contact legacy again, ServiceState left over from the switch)
    and forward again: migrate converts the table again and says the data needs repair."""
    create_legacy(settings, LEGACY_ROWS)
    migrate(app)
    run_sql(settings, "UPDATE ServiceState SET value = '1' WHERE name = 'consistent'")  # as repair leaves it
    run_sql(settings, "DROP TABLE Contact")
    create_legacy(settings, LEGACY_ROWS)
    output = migrate(app)
    assert "record in ServiceState: consistent=0" in output
    assert service_state(settings) == {"schema": SCHEMA_VERSION, "consistent": "0"}


def test_the_service_answers_on_the_migrated_table(app: Any, settings: dict[str, Any], api: Any) -> None:
    """After migrate, a new customer's order gets the next id the old table would have handed out."""
    create_legacy(settings, LEGACY_ROWS)
    migrate(app)
    answer = api.identify("first.after.switch@x.io", "5550999")
    assert answer["primaryContactId"] == DELETED_TOP_ID + 1
    assert answer["emails"] == ["first.after.switch@x.io"]


# --------------------------------------------------------------------------
# The commands say what is wrong with the database, without a traceback
# --------------------------------------------------------------------------


def test_a_dry_run_does_not_create_a_missing_database(settings: dict[str, Any], backend: str) -> None:
    """`migrate --dry-run` on a database that does not exist (a mistyped name) says so and
    creates nothing: no database, no SQLite file."""
    missing = dict(settings)
    if backend == "mysql":
        missing["MYSQL_DATABASE"] = settings["MYSQL_DATABASE"] + "_missing"
    else:
        missing["FLUXKART_SQLITE_PATH"] = settings["FLUXKART_SQLITE_PATH"] + ".missing"
    output = migrate(fluxkart.create_app(missing), "--dry-run", exit_code=1)
    assert "migrate could not inspect the database" in output
    assert ("Unknown database" in output) if backend == "mysql" else ("no SQLite database" in output)
    if backend == "mysql":
        found = run_sql(settings, "SHOW DATABASES LIKE %s", (missing["MYSQL_DATABASE"],))
        assert found == []
    else:
        assert not Path(missing["FLUXKART_SQLITE_PATH"]).exists()


def test_repair_and_import_on_a_table_not_migrated_say_so(settings: dict[str, Any]) -> None:
    """The reference's table before `migrate`: both commands stop with the reason, exit 1."""
    create_legacy(settings, LEGACY_ROWS)
    runner = fluxkart.create_app(settings).test_cli_runner()
    repaired = runner.invoke(args=["repair"])
    assert repaired.exit_code == 1 and isinstance(repaired.exception, SystemExit), repaired.output
    assert "repair stopped: the Contact table was not created by this service" in repaired.output
    assert "flask --app fluxkart migrate" in repaired.output
    imported = runner.invoke(args=["import", "-"], input="email\nx@y.io\n")
    assert imported.exit_code == 1 and isinstance(imported.exception, SystemExit), imported.output
    assert "refused: the Contact table was not created by this service" in imported.output


@pytest.mark.parametrize("backend", ["mysql"])  # an SQLite database is a file: no server to miss
def test_repair_and_import_without_a_database_server_say_so(settings: dict[str, Any]) -> None:
    """Nothing listens on the port: the driver's reason, exit 1, no traceback."""
    unreachable = {**settings, "MYSQL_PORT": str(free_port())}
    runner = fluxkart.create_app(unreachable).test_cli_runner()
    repaired = runner.invoke(args=["repair"])
    assert repaired.exit_code == 1 and isinstance(repaired.exception, SystemExit), repaired.output
    assert "repair stopped: MySQL error 2003" in repaired.output and "Can't connect" in repaired.output
    imported = runner.invoke(args=["import", "-"], input="email\nx@y.io\n")
    assert imported.exit_code == 1, imported.output
    assert "stopped: MySQL error 2003" in imported.output and "Nothing was imported" in imported.output
