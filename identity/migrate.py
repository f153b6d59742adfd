"""`flask --app fluxkart migrate` (SPEC, "Commands"; docs/switching.md): an existing Contact
table (such as the replaced implementation's) brought to this service's schema. Plans every
step before it changes anything, says what each rewrites or locks, and refuses a value that
would not fit its new column."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext

from identity.canonical import NormalizeReport, normalize_stored_identifiers
from identity.database import SCHEMA_VERSION, Database, Row, utcnow
from identity.errors import DatabaseMisconfigured, DatabaseUnavailable, RetryTransaction, database_problem
from identity.pool import new_database
from identity.progress import peak_rss_mib
from identity.settings import database_location
from identity.sql import MIGRATE_SQL, load_queries

# Contact's columns as information_schema describes a table that
# sql/mysql/schema.sql created: name -> (type, nullable, collation, extra).
# tests/test_migrate.py checks this against such a table.
MYSQL_CONTACT_COLUMNS: dict[str, tuple[str, str, str | None, str]] = {
    "id": ("int", "NO", None, "auto_increment"),
    "phoneNumber": ("varchar(32)", "YES", "utf8mb4_bin", ""),
    "email": ("varchar(255)", "YES", "utf8mb4_bin", ""),
    "linkedId": ("int", "YES", None, ""),
    "linkPrecedence": ("enum('primary','secondary')", "NO", "utf8mb4_bin", ""),
    "createdAt": ("datetime(6)", "NO", None, ""),
    "updatedAt": ("datetime(6)", "NO", None, ""),
    "deletedAt": ("datetime(6)", "YES", None, ""),
}
MYSQL_CONTACT_ENGINE = "InnoDB"
MYSQL_CONTACT_COLLATION = "utf8mb4_bin"
# The service's indexes on Contact (both dialects): name -> (column, the
# statement adding it on MySQL, the index the replaced implementation's
# `run.sh --indexes` made on that column, the statement renaming that one).
CONTACT_INDEXES = {
    "Contact_email": ("email", "add_contact_email_index", "idx_email", "rename_legacy_email_index"),
    "Contact_phoneNumber": (
        "phoneNumber",
        "add_contact_phone_index",
        "idx_phoneNumber",
        "rename_legacy_phone_index",
    ),
    "Contact_linkedId": (
        "linkedId",
        "add_contact_linked_id_index",
        "idx_linkedId",
        "rename_legacy_linked_id_index",
    ),
}
# CustomerHistory's columns that schema version 3 changed (MySQL: information_schema's
# COLUMN_TYPE): the kinds of merge protection's events, and the detail of ids and kinds.
MYSQL_HISTORY_KIND = "enum('created','linked','merged','repaired','imported','refused','split')"
# What migrate says of an ALTER that adds a column and an index online.
ONLINE_INDEX = (
    "adds the column and builds the index without blocking: ALGORITHM=INPLACE, LOCK=NONE (reads "
    "and writes go on; only the brief metadata locks every ALTER takes, at its start and end)"
)
# Schema versions this service wrote: a database at one of them holds the service's own data
# (migrate upgrades its tables; repair is not needed for it). Version 2 is the previous release's.
SERVICE_SCHEMAS = ("2", SCHEMA_VERSION)
# How many of the rows that would lose data migrate names (it also says how many there are).
MIGRATE_REFUSAL_LIST = 50
# How long migrate's ALTERs wait for Contact's metadata lock before giving up.
MIGRATE_LOCK_WAIT_S = 10
INT_DISPLAY_WIDTH = re.compile(r"^(tinyint|smallint|mediumint|int|bigint)\(\d+\)")
CREATE_TABLE_NAME = re.compile(r"^CREATE TABLE IF NOT EXISTS (\w+)", re.IGNORECASE)
CREATE_INDEX_NAME = re.compile(r"^CREATE INDEX IF NOT EXISTS (\w+)", re.IGNORECASE)


@dataclass
class MigrationStep:
    """One change migrate makes: what changes, what it rewrites or locks, and how."""

    change: str
    locking: str
    run: Callable[[Database], None]
    details: list[str] = field(default_factory=list)
    # True when the step changes Contact's values or column types (not only indexes or other tables).
    rewrites: bool = False


@dataclass
class MigrationPlan:
    """Everything migrate would do to this database, decided before it changes anything."""

    dialect: str
    server: str
    contact_rows: int = 0
    steps: list[MigrationStep] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Rows holding a value the new columns cannot hold: the first few, and how many in all.
    unconvertible: list[Row] = field(default_factory=list)
    unconvertible_total: int = 0


def schema_names(schema: list[str], pattern: re.Pattern[str]) -> list[str]:
    """The tables (or indexes) the schema's statements create, in file order."""
    return [m.group(1) for statement in schema if (m := pattern.match(statement))]


def plan_migration(db: Database) -> MigrationPlan:
    """Inspect the database and decide every step migrate takes (changes nothing).

    Out: the plan, whose `unconvertible` rows (when any) mean migrate must refuse.
    Errors: DatabaseUnavailable / RetryTransaction from the driver; ClickException
    when Contact lacks a column the service needs (not a table migrate knows).
    """
    version = db.one("select_server_version")
    plan = MigrationPlan(db.dialect, str(version["version"] if version else "?"))
    tables = {str(row["name"]) for row in db.all("select_table_names")}
    state: dict[str, str] = {}
    if "ServiceState" in tables:
        state = {row["name"]: row["value"] for row in db.all("select_service_state")}
    if "Contact" in tables:
        unconvertible = db.all("select_unconvertible_contacts", limit=MIGRATE_REFUSAL_LIST)
        if unconvertible:
            plan.unconvertible = unconvertible
            plan.unconvertible_total = int(unconvertible[0]["total"])
            return plan
        plan_fills(db, plan)
        if db.dialect == "mysql":
            plan_mysql_contact(db, plan)
        else:
            plan_sqlite_contact(db, plan, "sqlite_sequence" in tables)
    # Rows that needed filling or converting were written by something else, whatever
    # ServiceState says (e.g. a dump of the old table restored over a migrated one).
    adopting = "Contact" in tables and (
        state.get("schema") not in SERVICE_SCHEMAS or any(s.rewrites for s in plan.steps)
    )
    if "CustomerHistory" in tables:
        if db.dialect == "mysql":
            plan_mysql_history(db, plan)
        else:
            plan_sqlite_history(db, plan)
    if "CustomerErasure" in tables:
        if db.dialect == "mysql":
            plan_mysql_erasure(db, plan)
        else:
            plan_sqlite_erasure(db, plan)
    plan_schema(db, plan, tables)
    plan_service_state(plan, state, adopting)
    return plan


def plan_fills(db: Database, plan: MigrationPlan) -> None:
    """The step filling the NULLs a legacy table holds where the service's columns are NOT NULL."""
    counts = db.one("count_migrate_fills") or {}
    plan.contact_rows = int(counts.get("contact_rows") or 0)
    missing = {
        key: int(counts.get(key) or 0)
        for key in ("missing_link_precedence", "missing_created_at", "missing_updated_at")
    }
    if not any(missing.values()):
        return
    earliest = utcnow()
    if missing["missing_created_at"] or missing["missing_updated_at"]:
        earliest = (db.one("select_earliest_created_at") or {}).get("earliest") or earliest
    rules = {
        "missing_link_precedence": "linkPrecedence: 'secondary' where linkedId is set, else 'primary'",
        "missing_created_at": "createdAt: the row's updatedAt, else its deletedAt, else the oldest "
        f"createdAt in the table ({earliest})",
        "missing_updated_at": "updatedAt: the row's createdAt (as filled)",
    }
    locking = "one UPDATE: locks only the rows it changes, until it commits; no rewrite"
    if db.dialect == "sqlite":
        locking = "one UPDATE inside the migrate transaction (the database's write lock); no rewrite"
    plan.steps.append(
        MigrationStep(
            "fill the values the service's columns cannot leave NULL",
            locking,
            run_named("fill_missing_values", earliest=earliest),
            [f"{rules[key]}: {count:,} rows" for key, count in missing.items() if count],
            rewrites=True,
        )
    )


def run_named(*names: str, **params: Any) -> Callable[[Database], None]:
    """A step that runs these named statements in order."""

    def run(db: Database) -> None:
        for name in names:
            db.run(name, **params)

    return run


def describe_mysql_column(column: tuple[str, str, str | None, str]) -> str:
    """'varchar(32) utf8mb4_bin NULL' for the plan."""
    kind, nullable, collation, extra = column
    words = [kind, collation or "", "NULL" if nullable == "YES" else "NOT NULL", extra]
    return " ".join(word for word in words if word)


def plan_mysql_contact(db: Database, plan: MigrationPlan) -> None:
    """Steps bringing Contact's columns, table options and indexes to sql/mysql/schema.sql's."""
    actual = {}
    for row in db.all("select_contact_columns"):
        kind = INT_DISPLAY_WIDTH.sub(r"\1", str(row["type"]).lower())  # MariaDB says int(11), MySQL 8 int
        extra = "auto_increment" if "auto_increment" in str(row["extra"] or "").lower() else ""
        actual[str(row["name"])] = (kind, str(row["nullable"]), row["collation"], extra)
    missing = [name for name in MYSQL_CONTACT_COLUMNS if name not in actual]
    if missing:
        raise click.ClickException(
            f"Contact has no column {', '.join(missing)}: it is not a table migrate knows how to adopt"
        )
    changes = [
        f"{name}: {describe_mysql_column(actual[name])} -> {describe_mysql_column(target)}"
        for name, target in MYSQL_CONTACT_COLUMNS.items()
        if actual[name] != target
    ]
    plan.notes += [
        f"column {name} is not the service's: left as it is"
        for name in actual
        if name not in MYSQL_CONTACT_COLUMNS
    ]
    table = db.one("select_contact_table") or {}
    if table.get("engine") != MYSQL_CONTACT_ENGINE:
        changes.append(f"storage engine: {table.get('engine')} -> {MYSQL_CONTACT_ENGINE}")
    if changes:
        if table.get("collation") != MYSQL_CONTACT_COLLATION:
            changes.append(f"table default collation: {table.get('collation')} -> {MYSQL_CONTACT_COLLATION}")
        plan.steps.append(
            MigrationStep(
                "convert Contact's columns to the service's types and collations (identifiers compare "
                "byte for byte from now on; repair re-links what the old collation joined)",
                "rewrites the table: ALGORITHM=COPY, LOCK=SHARED (reads go on; writes wait until it ends)",
                run_named("convert_contact_columns"),
                changes,
                rewrites=True,
            )
        )
    elif table.get("collation") != MYSQL_CONTACT_COLLATION:
        plan.steps.append(
            MigrationStep(
                f"set Contact's default collation: {table.get('collation')} -> {MYSQL_CONTACT_COLLATION}",
                "metadata only: ALGORITHM=INSTANT (only the brief metadata lock every ALTER takes)",
                run_named("set_contact_default_collation"),
            )
        )
    indexes = {str(row["name"]): str(row["column_list"]) for row in db.all("select_contact_indexes")}
    known = {"PRIMARY", *CONTACT_INDEXES}
    if not any(name in indexes or legacy in indexes for name, (_, _, legacy, _) in CONTACT_INDEXES.items()):
        # The reference's production shape: all three in one statement, one read of the table.
        plan.steps.append(
            MigrationStep(
                "add indexes " + ", ".join(f"{name} on {c[0]}" for name, c in CONTACT_INDEXES.items()),
                "builds the indexes in one read of the table, without rewriting it: ALGORITHM=INPLACE, "
                "LOCK=NONE (reads and writes go on)",
                run_named("add_contact_indexes"),
            )
        )
        indexes.update({name: column for name, (column, *_) in CONTACT_INDEXES.items()})
    for name, (column, add, legacy, rename) in CONTACT_INDEXES.items():
        if indexes.get(name) == column:
            continue
        if indexes.get(legacy) == column and name not in indexes:
            known.add(legacy)
            plan.steps.append(
                MigrationStep(
                    f"rename index {legacy} on {column} to {name}",
                    "metadata only: ALGORITHM=INSTANT (only the brief metadata lock every ALTER takes)",
                    run_named(rename),
                )
            )
        else:
            plan.steps.append(
                MigrationStep(
                    f"add index {name} on {column}",
                    "builds the index without rewriting the table: ALGORITHM=INPLACE, LOCK=NONE "
                    "(reads and writes go on)",
                    run_named(add),
                )
            )
    plan.notes += [
        f"index {name} on ({columns}) is not the service's: left as it is"
        for name, columns in indexes.items()
        if name not in known
    ]


def sqlite_definitions(create_table: str) -> dict[str, str]:
    """A CREATE TABLE statement's column and constraint definitions, whitespace collapsed.

    Keyed by column name (unquoted); table constraints by their own text.
    """
    body = create_table[create_table.index("(") + 1 : create_table.rindex(")")]
    parts, depth, current = [], 0, ""
    for ch in body:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    definitions = {}
    for part in parts:
        text = " ".join(part.split())
        name, _, rest = text.partition(" ")
        if name.upper() in ("PRIMARY", "UNIQUE", "CHECK", "FOREIGN", "CONSTRAINT"):
            definitions[text] = text
        else:
            definitions[name.strip('"`[]')] = rest
    return definitions


def definition_changes(current: dict[str, str], target: dict[str, str]) -> list[str]:
    """'column: old -> new' for every definition (sqlite_definitions) that differs, target's first."""
    return [
        f"{name}: {current.get(name, '(none)')} -> {target.get(name, '(none)')}"
        for name in dict.fromkeys([*target, *current])
        if current.get(name) != target.get(name)
    ]


def plan_sqlite_contact(db: Database, plan: MigrationPlan, has_sequence: bool) -> None:
    """The rebuild step when Contact's definition differs from sql/sqlite/schema.sql's."""
    current = sqlite_definitions(str((db.one("select_contact_definition") or {})["sql"]))
    target = sqlite_definitions(db.queries["create_contact_new"])
    missing = [name for name in target if name not in current and not name.startswith(("CHECK", "PRIMARY"))]
    if missing:
        raise click.ClickException(
            f"Contact has no column {', '.join(missing)}: it is not a table migrate knows how to adopt"
        )
    changes = definition_changes(current, target)
    if not changes:
        return
    indexes = {str(row["name"]): str(row["column_list"]) for row in db.all("select_contact_indexes")}
    for name, columns in indexes.items():
        covered = [service for service, (column, *_) in CONTACT_INDEXES.items() if column == columns]
        if name in CONTACT_INDEXES:
            continue
        changes.append(
            f"index {name} on ({columns}) goes with the old table"
            + (f"; the service's {covered[0]} replaces it" if covered else "; recreate it if you need it")
        )
    sequence = "select_contact_sequence" if has_sequence else "select_contact_max_id"

    def rebuild(db: Database) -> None:
        seq = int((db.one(sequence) or {}).get("seq") or 0)
        for name in (
            "create_contact_new",
            "copy_contacts_to_new",
            "drop_legacy_contact",
            "rename_new_contact",
        ):
            db.run(name)
        db.run("forget_contact_sequence")
        db.run("set_contact_sequence", seq=seq)

    plan.steps.append(
        MigrationStep(
            "rebuild Contact with the service's columns (new table, copy every row with its id, drop "
            "the old one, rename; the AUTOINCREMENT counter is kept; timestamps widened to microseconds)",
            "rewrites the table inside the migrate transaction, which holds the database's write lock "
            "until it commits (readers go on; writers wait)",
            rebuild,
            changes,
            rewrites=True,
        )
    )


def plan_mysql_history(db: Database, plan: MigrationPlan) -> None:
    """Schema 2 to 3 on MySQL: CustomerHistory's kinds gain 'refused' and 'split' (merge
    protection's events) and it gains the nullable `detail` column; both metadata only."""
    columns = {str(row["name"]): str(row["type"]).lower() for row in db.all("select_history_columns")}
    instant = (
        "metadata only: ALGORITHM=INSTANT (no rewrite; only the brief metadata lock every ALTER "
        f"takes, which waits for open transactions on CustomerHistory, at most {MIGRATE_LOCK_WAIT_S} s)"
    )
    if columns.get("kind") != MYSQL_HISTORY_KIND:
        plan.steps.append(
            MigrationStep(
                "extend CustomerHistory's kinds with 'refused' and 'split' (merge protection's events)",
                instant,
                run_named("extend_history_kinds"),
                [f"kind: {columns.get('kind')} -> {MYSQL_HISTORY_KIND}"],
            )
        )
    if "detail" not in columns:
        plan.steps.append(
            MigrationStep(
                "add CustomerHistory.detail (a merge's evidence, what a refusal or a split concerned: "
                "ids and kinds), NULL for the events already recorded",
                instant,
                run_named("add_history_detail"),
            )
        )
    if "feedSeq" not in columns:
        plan.steps.append(
            MigrationStep(
                "add CustomerHistory.feedSeq and its index (each event's position in the feed of "
                "changes, docs/changes.md), NULL for the events already recorded: the feed numbers "
                "them, oldest first, when it is first read",
                ONLINE_INDEX,
                run_named("add_history_feed_seq"),
            )
        )


def plan_mysql_erasure(db: Database, plan: MigrationPlan) -> None:
    """The feed of changes on MySQL: CustomerErasure gains the erased ids and the feed position."""
    columns = {str(row["name"]) for row in db.all("select_erasure_columns")}
    if "feedSeq" not in columns:
        plan.steps.append(
            MigrationStep(
                "add CustomerErasure.customerIds and feedSeq with its index (the feed's `erased` "
                "changes name the ids erased; older records did not keep them: NULL)",
                ONLINE_INDEX,
                run_named("add_erasure_feed_columns"),
            )
        )


def plan_sqlite_history(db: Database, plan: MigrationPlan) -> None:
    """Schema 2 to 3 on SQLite: CustomerHistory rebuilt with schema.sql's definition (a CHECK
    constraint cannot be altered), every event kept with its id, its indexes made again."""
    current = sqlite_definitions(str((db.one("select_history_definition") or {})["sql"]))
    target = sqlite_definitions(db.queries["create_history_new"])
    changes = definition_changes(current, target)
    if not changes:
        return
    indexes = [s for s in db.schema if CREATE_INDEX_NAME.match(s) and " ON CustomerHistory " in s]

    copy = "copy_history_with_detail_to_new" if "detail" in current else "copy_history_to_new"

    def rebuild(db: Database) -> None:
        seq = int((db.one("select_history_sequence") or {}).get("seq") or 0)
        for name in ("create_history_new", copy, "drop_old_history", "rename_new_history"):
            db.run(name)
        db.run("forget_history_sequence")
        db.run("set_history_sequence", seq=seq)
        cur = db.connect().cursor()
        for statement in indexes:  # the schema file's own CREATE INDEX IF NOT EXISTS
            cur.execute(statement)

    plan.steps.append(
        MigrationStep(
            "rebuild CustomerHistory with kinds 'refused' and 'split', the `detail` column and the "
            "feed's `feedSeq` (new table, copy every event with its id, drop the old one, rename, "
            "make its indexes again)",
            "rewrites CustomerHistory inside the migrate transaction, which holds the database's write "
            "lock until it commits (readers go on; writers wait)",
            rebuild,
            changes,
        )
    )


def plan_sqlite_erasure(db: Database, plan: MigrationPlan) -> None:
    """The feed of changes on SQLite: CustomerErasure rebuilt with schema.sql's definition (its
    feed index is a table constraint), every record kept with its id."""
    current = sqlite_definitions(str((db.one("select_erasure_definition") or {})["sql"]))
    target = sqlite_definitions(db.queries["create_erasure_new"])
    changes = definition_changes(current, target)
    if not changes:
        return

    def rebuild(db: Database) -> None:
        seq = int((db.one("select_erasure_sequence") or {}).get("seq") or 0)
        for name in ("create_erasure_new", "copy_erasures_to_new", "drop_old_erasure", "rename_new_erasure"):
            db.run(name)
        db.run("forget_erasure_sequence")
        db.run("set_erasure_sequence", seq=seq)

    plan.steps.append(
        MigrationStep(
            "rebuild CustomerErasure with the feed's `customerIds` and `feedSeq` (new table, copy "
            "every record with its id, drop the old one, rename; older records did not keep the "
            "erased ids: NULL)",
            "rewrites CustomerErasure inside the migrate transaction, which holds the database's "
            "write lock until it commits (readers go on; writers wait)",
            rebuild,
            changes,
        )
    )


def plan_schema(db: Database, plan: MigrationPlan, tables: set[str]) -> None:
    """The step creating the tables (SQLite: and indexes) the schema has and this database lacks."""
    changes = [
        f"create table {name} (new and empty)"
        for name in schema_names(db.schema, CREATE_TABLE_NAME)
        if name not in tables
    ]
    if db.dialect == "sqlite" and "Contact" in tables:
        rebuilt = any(step.change.startswith("rebuild") for step in plan.steps)
        present = set() if rebuilt else {str(r["name"]) for r in db.all("select_contact_indexes")}
        changes += [
            f"add index {name} on {CONTACT_INDEXES[name][0]} (holds the write lock while it builds)"
            for name in schema_names(db.schema, CREATE_INDEX_NAME)
            if name in CONTACT_INDEXES and name not in present
        ]
    if changes:
        plan.steps.append(
            MigrationStep(
                "create what the service's schema has and this database lacks (the schema file's "
                "CREATE ... IF NOT EXISTS statements)",
                "new tables lock nothing else",
                create_schema,
                changes,
            )
        )


def create_schema(db: Database) -> None:
    """A step running the schema file's CREATE ... IF NOT EXISTS statements."""
    db.connect()
    db.ensure_schema()


def plan_service_state(plan: MigrationPlan, state: dict[str, str], adopting: bool) -> None:
    """The last step: ServiceState says the schema is the service's, and whether the data needs repair."""
    writes: dict[str, str] = {}
    if state.get("schema") != SCHEMA_VERSION:
        writes["schema"] = SCHEMA_VERSION
    if adopting or "consistent" not in state:
        writes["consistent"] = "0" if plan.contact_rows else "1"
    if not writes:
        return
    meaning = {
        ("schema", SCHEMA_VERSION): "the database has the service's schema",
        ("consistent", "1"): "the table is empty, so every customer satisfies the rules",
        ("consistent", "0"): f"the {plan.contact_rows:,} rows were written by something else: "
        "run `flask --app fluxkart repair` next (the service may serve meanwhile)",
    }
    plan.steps.append(
        MigrationStep(
            "record in ServiceState: " + ", ".join(f"{name}={value}" for name, value in writes.items()),
            "one-row writes to ServiceState",
            write_service_state(writes),
            [f"{name}={value}: {meaning[(name, value)]}" for name, value in writes.items()],
        )
    )


def write_service_state(writes: dict[str, str]) -> Callable[[Database], None]:
    """A step that sets these ServiceState rows."""

    def run(db: Database) -> None:
        for name, value in writes.items():
            db.run("upsert_service_state", key=name, value=value)

    return run


def echo_plan(plan: MigrationPlan) -> None:
    """Print the plan: every step, what it changes, and what it rewrites or locks."""
    engine = "MySQL/MariaDB" if plan.dialect == "mysql" else "SQLite"
    click.echo(f"migrate: {engine} {plan.server}; Contact holds {plan.contact_rows:,} rows")
    if plan.dialect == "sqlite" and plan.steps:
        click.echo(
            "  all steps run in one transaction holding the database's write lock until it commits: "
            "readers go on, writers wait"
        )
    for note in plan.notes:
        click.echo(f"  note: {note}")
    for number, step in enumerate(plan.steps, 1):
        click.echo(f"  {number}. {step.change}")
        for detail in step.details:
            click.echo(f"       {detail}")
        click.echo(f"     locks: {step.locking}")
    if plan.steps and plan.contact_rows:
        click.echo(
            "  then: normalize every stored email and phone number with the API's own functions "
            "(repair's first pass), so orders find rows stored as sent from the first request on"
        )
        click.echo(
            "     locks: reads the table a page at a time; writes in short transactions that take "
            "identify's locks on the rows they change"
        )


def refusal_message(plan: MigrationPlan) -> str:
    """Why migrate changes nothing: the rows that would lose data, by id."""
    lines = [
        f"refusing to migrate, nothing was changed: {plan.unconvertible_total:,} Contact rows hold "
        "values the new columns cannot hold without losing data:"
    ]
    lines += [f"  id {row['id']}: {row['problem']}" for row in plan.unconvertible]
    if plan.unconvertible_total > len(plan.unconvertible):
        lines.append(f"  ... and {plan.unconvertible_total - len(plan.unconvertible):,} more")
    lines.append("Correct or clear these values (UPDATE Contact ... WHERE id = ...), then run migrate again.")
    return "\n".join(lines)


def apply_migration(db: Database, plan: MigrationPlan) -> None:
    """Run the plan's steps in order, printing each and how long it took.

    MySQL commits each step on its own (DDL commits anyway); SQLite runs them
    all in one transaction, so a failure leaves the file as it was.
    Errors: DatabaseUnavailable / RetryTransaction with the driver's error as __cause__.
    """
    if db.dialect == "mysql":
        db.run("set_migrate_session", lock_wait_s=MIGRATE_LOCK_WAIT_S)
    else:
        db.begin()
    number = 0
    try:
        for number, step in enumerate(plan.steps, 1):
            started = time.perf_counter()
            step.run(db)
            click.echo(f"  step {number} done in {time.perf_counter() - started:.1f} s")
        if db.dialect == "sqlite":
            db.commit()
    except (DatabaseUnavailable, DatabaseMisconfigured, RetryTransaction) as exc:
        db.rollback()
        raise click.ClickException(migrate_failure(db.dialect, number, exc)) from exc
    except BaseException:
        db.rollback()
        raise


def migrate_failure(dialect: str, number: int, exc: Exception) -> str:
    """What went wrong at step `number`, what is already done, and what to do."""
    cause = database_problem(exc)
    if dialect == "sqlite" or number == 1:
        done = "nothing was changed" + (" (one transaction)" if dialect == "sqlite" else "")
    elif number == 2:
        done = "step 1 is done and stays done"
    else:
        done = f"steps 1 to {number - 1} are done and stay done"
    hint = ""
    if isinstance(exc, RetryTransaction) and exc.reason in ("lock_wait_timeout", "database_locked"):
        hint = (
            "; another connection held Contact longer than migrate waits for it (an open transaction, "
            "or the old service still writing): stop the writers and run migrate again"
        )
    return f"migrate stopped at step {number}: {cause}; {done}{hint}"


def migration_database(dry_run: bool) -> Database:
    """migrate's own connection to the app's database, not the thread's shared one.

    It knows the migrate statements too, creates no table on connecting (migrate
    inspects first), no database on a dry run (it changes nothing), adopts a table
    without ServiceState, and has no read timeout (an ALTER of a large table runs
    for minutes).
    """
    return new_database(
        load_queries(current_app.config["FLUXKART_DIALECT"], MIGRATE_SQL),
        create_schema=False,
        create_database=False if dry_run else None,
        serving=False,
        read_timeout=None,
    )


def normalize_after_migration(db: Database) -> None:
    """Repair's first pass, run by migrate once the schema is the service's.

    Orders find rows stored as sent ('Doc@Example.com', '555 0101') from the
    first request on; repair (next) merges the customers this reveals.
    """
    started = time.perf_counter()
    report = NormalizeReport()
    try:
        normalize_stored_identifiers(db, current_app.config["FLUXKART_PHONE_REGION"], report, False)
    except (DatabaseUnavailable, DatabaseMisconfigured, RetryTransaction) as exc:
        raise click.ClickException(
            f"migrate stopped while normalizing identifiers: {database_problem(exc)}; the schema steps "
            "are done; `flask --app fluxkart repair` starts with the same pass"
        ) from exc
    click.echo(
        f"  identifiers normalized: {report.normalized:,} rows in {time.perf_counter() - started:.1f} s "
        f"(invalid values left as they are: {report.invalid_count:,}; repair lists them)"
    )


@click.command("migrate")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@with_appcontext
def migrate_command(dry_run: bool) -> None:
    """Bring an existing Contact table (e.g. the replaced implementation's) to this service's schema.

    Prints each change and what it rewrites or locks, refuses (changing
    nothing) when a value would not fit its new column, upgrades a database
    of the previous release (schema 2), and records ServiceState
    schema=SCHEMA_VERSION last. Idempotent. See docs/switching.md.
    """
    db = migration_database(dry_run)
    started = time.perf_counter()
    click.echo(f"migrate: {database_location(current_app.config)}")
    try:
        try:
            plan = plan_migration(db)
        except (DatabaseUnavailable, DatabaseMisconfigured, RetryTransaction) as exc:
            raise click.ClickException(
                f"migrate could not inspect the database: {database_problem(exc)}"
            ) from exc
        if plan.unconvertible:
            raise click.ClickException(refusal_message(plan))
        echo_plan(plan)
        if not plan.steps:
            click.echo("nothing to change: Contact already has the service's schema")
            return
        if dry_run:
            click.echo(f"dry run: {len(plan.steps)} steps planned, nothing changed")
            return
        click.echo("applying:")
        apply_migration(db, plan)
        if plan.contact_rows:
            normalize_after_migration(db)
    finally:
        db.close()
    click.echo(f"migrated in {time.perf_counter() - started:.1f} s; peak memory: {peak_rss_mib():.0f} MiB")
    if plan.contact_rows:
        click.echo(
            f"next: flask --app fluxkart repair (the {plan.contact_rows:,} rows still need it; "
            "see docs/switching.md)"
        )
