"""The operators' commands, run through Flask's CLI runner on both backends (SPEC, "Commands")."""

from __future__ import annotations

from typing import Any

from fluxkart import create_app
from tests.harness.database import run_sql


def table_names(settings: dict[str, Any]) -> set[str]:
    """The tables of the test's database, read without the app."""
    if settings.get("MYSQL_HOST"):
        rows = run_sql(
            settings,
            "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = %s",
            (settings["MYSQL_DATABASE"],),
        )
    else:
        rows = run_sql(settings, "SELECT name FROM sqlite_master WHERE type = 'table'")
    return {row["name"] for row in rows}


def test_init_db_creates_the_schema_and_can_run_again(settings: dict[str, Any]) -> None:
    """init-db on an empty database creates the tables; a second run changes nothing and succeeds."""
    runner = create_app(settings).test_cli_runner()
    result = runner.invoke(args=["init-db"])
    assert result.exit_code == 0, result.output
    assert "schema ready" in result.output
    assert {"Contact", "ContactIdentifier"} <= table_names(settings)
    run_sql(
        settings,
        "INSERT INTO Contact (email, linkPrecedence, createdAt, updatedAt) VALUES (%s, 'primary', %s, %s)",
        ("kept@x", "2024-01-01 00:00:00", "2024-01-01 00:00:00"),
    )
    again = runner.invoke(args=["init-db"])
    assert again.exit_code == 0, again.output
    assert [row["email"] for row in run_sql(settings, "SELECT email FROM Contact")] == ["kept@x"]
