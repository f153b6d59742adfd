"""Fixtures: every API test runs against both backends through real HTTP.

backend -> settings -> app -> server (a real HTTP server on 127.0.0.1) -> api

SQLite gets a temporary file per test. MySQL gets a fresh database per test
on a throwaway MariaDB server that this session starts from the installed
binaries (or on the server named by FLUXKART_TEST_MYSQL_HOST/PORT/USER/
PASSWORD, in databases the tests create and drop). Without MariaDB installed
the MySQL tests skip locally and fail in CI (CI=true or FLUXKART_REQUIRE_MYSQL=1).

`galera` is a three-node Galera cluster (tests/harness/galera.py), one per test module that
uses it; without galera-4 and the rest it skips locally and fails in CI, likewise.

Fixtures and hooks only: what test files import (servers, clients, SQL helpers, the
gunicorn launcher, the checker, ...) lives in the harness, tests/harness/.

Ports: every server the suite starts listens on 127.0.0.1, on a port from
FLUXKART_TEST_PORTS=start-end when that is set (tests/harness/processes.py), so the
suite can run beside other services on a shared host.

`gunicorn(settings, ...)` starts the service under gunicorn as the Procfile does
(tests/harness/gunicorn.py); every one a test starts is stopped after it.
With FLUXKART_TEST_APP set (an app factory, e.g. 'tests.harness.patched:dropped_connection_500()')
it serves that instead (tests/harness/mutants.py uses this to show that the fault tests kill
a mutant).
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fluxkart import create_app
from identity.observability import JsonFormatter
from tests.harness.database import blank_settings, read_contacts
from tests.harness.galera import GaleraCluster
from tests.harness.gunicorn import Gunicorn, start_gunicorn
from tests.harness.mariadb import ExistingServer, MariaDBServer
from tests.harness.processes import SERVICE_DIR
from tests.harness.required import require_galera, require_mariadb
from tests.harness.servers import Api, LiveServer, LogLines

database_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def mysql_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer | ExistingServer]:
    """The session's MySQL server: a throwaway mariadbd, or the one the developer named."""
    if os.environ.get("FLUXKART_TEST_MYSQL_HOST"):
        yield ExistingServer()
        return
    require_mariadb("the MySQL tests")
    server = MariaDBServer(tmp_path_factory.mktemp("mariadb"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mysql_database(mysql_server: MariaDBServer | ExistingServer) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"fluxkart_test_{os.getpid()}_{next(database_numbers)}"
    conn = mysql_server.connect()
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        cur.execute(f"CREATE DATABASE `{name}`")
    yield name
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


@pytest.fixture(scope="module")
def galera(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GaleraCluster]:
    """Three Galera nodes for the module; skipped locally without the packages, failed in CI."""
    require_galera()
    started = time.monotonic()
    cluster = GaleraCluster(tmp_path_factory.mktemp("galera"))
    cluster.start()
    print(f"\nGalera cluster of 3 nodes up in {time.monotonic() - started:.1f}s, SQL ports {cluster.ports}")
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "mysql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """App settings for this test's own database on the chosen backend."""
    config = blank_settings()
    config["FLUXKART_SQLITE_PATH"] = str(tmp_path / "fluxkart.db")
    if backend == "mysql":
        server = request.getfixturevalue("mysql_server")
        config.update(server.settings(request.getfixturevalue("mysql_database")))
    config.update(getattr(request, "param", {}) or {})
    return config


@pytest.fixture
def app(settings: dict[str, Any]) -> Any:
    return create_app(settings)


@pytest.fixture
def server(app: Any) -> Iterator[LiveServer]:
    live = LiveServer(app)
    yield live
    live.close()


@pytest.fixture
def api(server: LiveServer) -> Iterator[Api]:
    client = Api(server.url)
    yield client
    client.session.close()


@pytest.fixture
def contacts(settings: dict[str, Any]) -> Any:
    """A function returning the Contact table as it is now."""
    return lambda: read_contacts(settings)


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Any]:
    """gunicorn(settings, workers=2, threads=4, worker_class="gthread", app_dir=..., ready_path=..., app=...).

    Starts the service (or a copy of it in app_dir, or the app factory `app`) under gunicorn on a free
    port, trying a new port up to three times when another process took it;
    every one started is stopped at the end of the test.
    """
    started: list[Gunicorn] = []

    def start(
        settings: dict[str, Any],
        workers: int = 2,
        threads: int = 4,
        worker_class: str = "gthread",
        app_dir: Path = SERVICE_DIR,
        ready_path: str = "/health/live",
        app: str | None = None,
    ) -> Gunicorn:
        # FLUXKART_TEST_APP serves a patched app instead (tests/harness/mutants.py's mutants).
        app = app or os.environ.get("FLUXKART_TEST_APP") or "fluxkart:create_app()"
        return start_gunicorn(
            settings, tmp_path, started, workers, threads, worker_class, app_dir, ready_path, app
        )

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def log_lines(app: Any) -> Iterator[LogLines]:
    """Everything the "fluxkart" loggers write during the test, as parsed JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("fluxkart")
    logger.addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logger.removeHandler(handler)
