"""Start-up (SPEC, "Start-up"; issue 22): a wrong setting stops gunicorn's master at start with
one line naming it and a non-zero exit; an unreachable database is waited for (readiness 503),
never a crash loop; the first line the service logs says which data it serves; no start and no
command creates a MySQL database, except `init-db --create-database`.

Controls: before this, a mistyped MYSQL_DATABASE started a new empty database (the refusal
tests find "Listening at" and no refusal line), bad credentials booted a healthy-looking
service, and a bad region printed two tracebacks after "Listening at".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import fluxkart
from tests.harness.database import blank_settings, run_sql
from tests.harness.gunicorn import Gunicorn, gunicorn_env
from tests.harness.legacy import MYSQL_CONTACT, SQLITE_CONTACT
from tests.harness.processes import free_port


def service_lines(logs: str) -> list[dict[str, Any]]:
    """The service's own JSON lines (gunicorn's plain lines left out)."""
    return [json.loads(line) for line in logs.splitlines() if line.startswith("{")]


def refused_start(settings: dict[str, Any], tmp_path: Path) -> tuple[int, str, list[dict[str, Any]]]:
    """Start gunicorn on `settings`, expecting it to stop at start: (exit status, logs, JSON lines)."""
    server = Gunicorn(gunicorn_env(settings, workers=1), tmp_path)
    try:
        with pytest.raises(RuntimeError, match="gunicorn exited"):
            server.start(timeout=30)
        assert server.process is not None
        status = server.process.returncode
    finally:
        server.stop()
    logs = server.logs()
    return status, logs, service_lines(logs)


def assert_one_line_naming(setting: str, status: int, logs: str, lines: list[dict[str, Any]]) -> str:
    assert status != 0, logs
    assert "Traceback" not in logs, logs
    assert "Listening at" not in logs, logs  # stopped before it bound the port
    assert [line["level"] for line in lines] == ["CRITICAL"], logs  # one line
    message = str(lines[0]["message"])
    assert setting in message, message
    return message


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> dict[str, Any]:
    return {**blank_settings(), "FLUXKART_SQLITE_PATH": str(tmp_path / "fluxkart.db")}


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("FLUXKART_PHONE_REGION", "XX"),
        ("FLUXKART_MAX_CUSTOMER_IDENTIFIERS", "1"),
        ("FLUXKART_SQLITE_PATH", "/no/such/folder/fluxkart.db"),
    ],
)
def test_a_wrong_setting_stops_the_start_in_one_line(
    sqlite_settings: dict[str, Any], tmp_path: Path, setting: str, value: str
) -> None:
    status, logs, lines = refused_start({**sqlite_settings, setting: value}, tmp_path)
    assert_one_line_naming(setting, status, logs, lines)


def mysql_settings(mysql_server: Any, database: str) -> dict[str, Any]:
    return {**blank_settings(), **mysql_server.settings(database)}


def databases_named(mysql_server: Any, name: str) -> list[Any]:
    conn = mysql_server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW DATABASES LIKE %s", (name,))
            return list(cur.fetchall())
    finally:
        conn.close()


def test_a_mistyped_database_stops_the_start_and_is_not_created(mysql_server: Any, tmp_path: Path) -> None:
    settings = mysql_settings(mysql_server, "nc_typo")
    status, logs, lines = refused_start(settings, tmp_path)
    message = assert_one_line_naming("MYSQL_DATABASE='nc_typo'", status, logs, lines)
    assert "init-db --create-database" in message  # the fix
    assert databases_named(mysql_server, "nc_typo") == []


def test_wrong_credentials_stop_the_start(mysql_server: Any, mysql_database: str, tmp_path: Path) -> None:
    settings = {**mysql_settings(mysql_server, mysql_database), "MYSQL_PASSWORD": "wrong"}
    status, logs, lines = refused_start(settings, tmp_path)
    message = assert_one_line_naming("MYSQL_PASSWORD", status, logs, lines)
    assert "(1045," not in message  # words, not the driver's tuple


@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
def test_a_table_that_needs_migrate_stops_the_start(
    backend: str, request: pytest.FixtureRequest, sqlite_settings: dict[str, Any], tmp_path: Path
) -> None:
    if backend == "mysql":
        server = request.getfixturevalue("mysql_server")
        settings = mysql_settings(server, request.getfixturevalue("mysql_database"))
    else:
        settings = sqlite_settings
    run_sql(settings, MYSQL_CONTACT if backend == "mysql" else SQLITE_CONTACT)
    status, logs, lines = refused_start(settings, tmp_path)
    assert_one_line_naming("migrate", status, logs, lines)


def test_an_unreachable_database_is_waited_for_not_a_crash(tmp_path: Path) -> None:
    """A closed port: the master starts, liveness 200, readiness 503; the first line says so."""
    settings = {
        **blank_settings(),
        "MYSQL_HOST": "127.0.0.1",
        "MYSQL_PORT": str(free_port()),
        "MYSQL_DATABASE": "Fluxkart",
    }
    server = Gunicorn(gunicorn_env(settings, workers=1), tmp_path)
    try:
        server.start(timeout=60)
        assert server.answers("/health/ready") == 503
        assert server.process is not None and server.process.poll() is None
    finally:
        server.stop()
    first = service_lines(server.logs())[0]
    assert first["event"] == "start" and first["level"] == "WARNING"
    assert first["schema"] == "unknown (unreachable)" and first["contacts"] is None
    assert first["host"] == f"127.0.0.1:{settings['MYSQL_PORT']}" and first["database"] == "Fluxkart"


@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
def test_the_first_line_names_what_is_served(
    backend: str, request: pytest.FixtureRequest, sqlite_settings: dict[str, Any], tmp_path: Path
) -> None:
    if backend == "mysql":
        server = request.getfixturevalue("mysql_server")
        database = request.getfixturevalue("mysql_database")
        settings = mysql_settings(server, database)
    else:
        settings = sqlite_settings
    client = fluxkart.create_app(settings).test_client()
    for email in ("a@x.io", "b@x.io"):
        assert client.post("/identify", json={"email": email}).status_code == 200
    service = Gunicorn(gunicorn_env(settings, workers=1), tmp_path)
    try:
        service.start(timeout=60, ready_path="/health/ready")
    finally:
        service.stop()
    first = service_lines(service.logs())[0]
    print("first log line:", json.dumps(first))
    assert first["event"] == "start" and first["backend"] == backend
    assert first["schema"] == "current (3)" and first["contacts"] == 2
    if backend == "mysql":
        assert first["host"] == f"{settings['MYSQL_HOST']}:{settings['MYSQL_PORT']}"
        assert first["database"] == database
    else:
        assert first["host"] is None and first["database"] == str(Path(settings["FLUXKART_SQLITE_PATH"]))


def test_commands_never_create_a_database_but_init_db_when_asked(mysql_server: Any) -> None:
    name = f"fluxkart_created_{free_port()}"
    settings = mysql_settings(mysql_server, name)
    runner = fluxkart.create_app(settings).test_cli_runner()
    try:
        for command in (["init-db"], ["repair", "--dry-run"], ["migrate", "--dry-run"], ["migrate"]):
            result = runner.invoke(args=command)
            assert result.exit_code == 1, (command, result.output)
            assert "Traceback" not in result.output
            assert f"MYSQL_DATABASE='{name}'" in result.output, (command, result.output)
            assert databases_named(mysql_server, name) == [], command
        created = runner.invoke(args=["init-db", "--create-database"])
        assert created.exit_code == 0, created.output
        assert databases_named(mysql_server, name) != []
    finally:
        conn = mysql_server.connect()
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


def test_a_command_names_wrong_credentials_in_one_line(mysql_server: Any, mysql_database: str) -> None:
    settings = {**mysql_settings(mysql_server, mysql_database), "MYSQL_PASSWORD": "wrong"}
    runner = fluxkart.create_app(settings).test_cli_runner()
    for command in (["init-db"], ["migrate", "--dry-run"], ["repair"]):
        result = runner.invoke(args=command)
        assert result.exit_code == 1, (command, result.output)
        errors = [line for line in result.output.splitlines() if "MYSQL_PASSWORD" in line]
        assert len(errors) == 1, (command, result.output)
        assert "(1045," not in result.output, (command, result.output)


def test_a_command_names_a_bad_region_in_one_line(sqlite_settings: dict[str, Any]) -> None:
    """The flask CLI builds the app first: a ConfigurationError is one 'Error:' line, exit 1."""
    from click.testing import CliRunner
    from flask.cli import FlaskGroup

    cli = FlaskGroup(
        create_app=lambda: fluxkart.create_app({**sqlite_settings, "FLUXKART_PHONE_REGION": "XX"})
    )
    result = CliRunner().invoke(cli, ["init-db"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.exception is not None
    assert "FLUXKART_PHONE_REGION='XX'" in result.output
