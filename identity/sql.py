"""Named SQL statements from sql/*.sql (`-- name: x` blocks), in each driver's parameter style."""

from __future__ import annotations

import re
from pathlib import Path

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
NAME_LINE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
PYMYSQL_PARAM = re.compile(r"%\((\w+)\)s")
FORCE_INDEX = re.compile(r"FORCE INDEX \((\w+)\)")


def parse_queries(text: str) -> dict[str, str]:
    """Split a file of `-- name: x` blocks into {name: statement}."""
    parts = NAME_LINE.split(text)
    queries = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        queries[name] = "\n".join(lines).strip()
    return queries


# The service's statements: the portable ones (the console's and the feed's in their own
# files), then the dialect's own.
SERVICE_SQL = ("contacts.sql", "console.sql", "changes.sql", "{dialect}/queries.sql")
# The migrate command's: the fills both dialects share, then the dialect's inspection and DDL.
MIGRATE_SQL = ("migrate.sql", "{dialect}/migrate.sql")
# A MySQL connection's session set-up (identity/database.py).
CONNECTION_SQL = ("mysql/connection.sql",)


def load_queries(dialect: str, files: tuple[str, ...] = SERVICE_SQL) -> dict[str, str]:
    """The statements of `files` (later files win), in the dialect's parameter style."""
    queries: dict[str, str] = {}
    for name in files:
        queries.update(parse_queries((SQL_DIR / name.format(dialect=dialect)).read_text()))
    if dialect == "sqlite":
        # sqlite3 binds :name; it has no row locks (BEGIN IMMEDIATE is the lock), and
        # names the index a SELECT must use with INDEXED BY.
        queries = {
            name: FORCE_INDEX.sub(
                r"INDEXED BY \1", PYMYSQL_PARAM.sub(r":\1", sql).replace("\nFOR UPDATE", "")
            )
            for name, sql in queries.items()
        }
    return queries


def check_dialects_agree() -> None:
    """Fail fast when one dialect lacks a statement the other has."""
    mysql = set(parse_queries((SQL_DIR / "mysql" / "queries.sql").read_text()))
    sqlite = set(parse_queries((SQL_DIR / "sqlite" / "queries.sql").read_text()))
    if mysql != sqlite:
        raise RuntimeError(f"sql/mysql and sql/sqlite name different statements: {mysql ^ sqlite}")


def schema_statements(dialect: str) -> list[str]:
    """The dialect's schema file as separate statements, comments removed."""
    text = (SQL_DIR / dialect / "schema.sql").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [statement.strip() for statement in code.split(";") if statement.strip()]
