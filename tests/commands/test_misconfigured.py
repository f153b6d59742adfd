"""Errors retrying cannot fix (SPEC, "Errors"): reported as what they are, never retried as a 503.

A throwaway MariaDB whose binary log is in STATEMENT format refuses every write at READ
COMMITTED (error 1665). The service sets ROW for its own sessions where its user may
(root here: identify works); a user without that right gets readiness 503 naming the
setting and the fix, and identify answers 500 server_misconfigured at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fluxkart import create_app
from tests.harness.database import blank_settings
from tests.harness.mariadb import MariaDBServer
from tests.harness.required import require_mariadb
from tests.harness.servers import Api, LiveServer


@pytest.fixture(scope="module")
def statement_binlog_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    require_mariadb("the binary-log test")
    server = MariaDBServer(
        tmp_path_factory.mktemp("binlog"), extra_args=["--log-bin=binlog", "--binlog-format=STATEMENT"]
    )
    server.start()
    yield server
    server.stop()


def serve(settings: dict[str, Any]) -> tuple[LiveServer, Api]:
    live = LiveServer(create_app(settings))
    return live, Api(live.url)


def test_root_gets_row_format_for_its_sessions(statement_binlog_server: MariaDBServer) -> None:
    conn = statement_binlog_server.connect()
    with conn.cursor() as cur:  # the service never creates a database (SPEC, "Start-up")
        cur.execute("CREATE DATABASE IF NOT EXISTS `binlog_root`")
    conn.close()
    settings = {**blank_settings(), **statement_binlog_server.settings("binlog_root")}
    live, api = serve(settings)
    try:
        assert api.get("/health/ready").status_code == 200
        assert api.identify("row@format.io", "1")["primaryContactId"] == 1
    finally:
        api.session.close()
        live.close()


class Remember(logging.Handler):
    """Keeps the service's log messages in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_user_who_cannot_set_row_format_gets_the_reason(statement_binlog_server: MariaDBServer) -> None:
    database = "binlog_user"
    conn = statement_binlog_server.connect()
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        cur.execute("CREATE USER IF NOT EXISTS 'svc'@'%' IDENTIFIED BY 'pw'")
        cur.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER ON `{database}`.* TO 'svc'@'%'")
    conn.close()
    settings = {
        **blank_settings(),
        **statement_binlog_server.settings(database),
        "MYSQL_USER": "svc",
        "MYSQL_PASSWORD": "pw",
    }
    live, api = serve(settings)
    remember = Remember()
    logging.getLogger("fluxkart").addHandler(remember)
    try:
        ready = api.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "server_misconfigured"
        assert "binlog_format" in ready.json()["error"]["message"]
        answer = api.post("/identify", json={"email": "stmt@format.io"})
        assert answer.status_code == 500, answer.text
        assert answer.json()["error"]["code"] == "server_misconfigured"
        assert "Retry-After" not in answer.headers
        assert api.get("/health/live").status_code == 200
    finally:
        logging.getLogger("fluxkart").removeHandler(remember)
        api.session.close()
        live.close()
    logged = "\n".join(remember.messages)
    assert "binlog_format=ROW" in logged  # the log names the setting and the fix
    assert "retrying" not in logged


def test_bad_credentials_are_a_setting_to_fix(statement_binlog_server: MariaDBServer, tmp_path: Path) -> None:
    settings = {**blank_settings(), **statement_binlog_server.settings("x"), "MYSQL_PASSWORD": "wrong"}
    live, api = serve(settings)
    try:
        ready = api.get("/health/ready")
        assert ready.status_code == 503
        assert "MYSQL_PASSWORD" in ready.json()["error"]["message"]
    finally:
        api.session.close()
        live.close()
