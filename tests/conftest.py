"""Fixtures: every API test runs against both backends through real HTTP.

backend -> settings -> app -> server (a real HTTP server on 127.0.0.1) -> api

SQLite gets a temporary file per test. MySQL gets a fresh database per test
on a throwaway MariaDB server that this session starts from the installed
binaries (or on the server named by FLUXKART_TEST_MYSQL_HOST/PORT/USER/
PASSWORD, in databases the tests create and drop). Without MariaDB installed
the MySQL tests skip locally and fail in CI (CI=true or FLUXKART_REQUIRE_MYSQL=1).

`galera` is a three-node Galera cluster (tests/harness/galera.py), one per test module that
uses it; without galera-4 and the rest it skips locally and fails in CI, likewise.

Ports: every server the suite starts listens on 127.0.0.1, on a port from
FLUXKART_TEST_PORTS=start-end when that is set (tests/harness/processes.py), so the
suite can run beside other services on a shared host.

`gunicorn(settings, ...)` starts the service under gunicorn as the Procfile does
(tests/harness/processes.py's Gunicorn); every one a test starts is stopped after it.
With FLUXKART_TEST_APP_DIR set it serves the copy of the service in that folder
(tests/harness/mutants.py uses this to show that the fault tests kill a mutant).
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymysql
import pymysql.cursors
import pytest
import requests
from werkzeug.serving import make_server

from fluxkart import SETTINGS, JsonFormatter, create_app
from tests.harness.galera import GaleraCluster, galera_missing
from tests.harness.mariadb import ExistingServer, MariaDBServer, server_binaries
from tests.harness.openapi_check import check_app_answer
from tests.harness.processes import SERVICE_DIR, Gunicorn, free_port, port_range

MYSQL_REQUIRED = bool(os.environ.get("CI") or os.environ.get("FLUXKART_REQUIRE_MYSQL"))
database_numbers = itertools.count(1)


def require_mariadb(who: str) -> None:
    """Skip (locally) or fail (in CI) when the MariaDB binaries are not installed."""
    if server_binaries() is None:
        message = f"MariaDB is not installed (apt-get install mariadb-server); {who} need it"
        if MYSQL_REQUIRED:
            pytest.fail(message)
        pytest.skip(message)


def blank_settings() -> dict[str, Any]:
    """Every setting explicitly empty, so no developer .env or environment leaks in."""
    return {name: "" for name in SETTINGS}


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
    why = galera_missing()
    if why:
        message = f"a Galera cluster needs packages that are missing ({why})"
        if MYSQL_REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
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


class LiveServer:
    """The app served over real HTTP on 127.0.0.1 by a threaded werkzeug server."""

    def __init__(self, app: Any):
        for attempt in range(3):
            try:
                # Port 0: any port the kernel offers, unless FLUXKART_TEST_PORTS narrows the choice.
                port = free_port() if port_range() else 0
                self.httpd = make_server("127.0.0.1", port, app, threaded=True)
                break
            except OSError:  # taken between free_port() and bind
                if attempt == 2:
                    raise
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        # serve_forever checks for shutdown() every poll_interval (0.5 s by default):
        # a short one keeps each test's teardown from costing half a second.
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Api:
    """requests against the live server: api.post("/identify", json=...)."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.session = requests.Session()
        # Every answer the app gives any test must match openapi.json.
        self.session.hooks["response"].append(check_app_answer)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return self.session.request(method, self.base_url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def identify(self, email: Any = None, phone: Any = None) -> dict[str, Any]:
        """POST /identify, asserting 200; returns the "contact" object."""
        response = self.post("/identify", json={"email": email, "phoneNumber": phone})
        assert response.status_code == 200, response.text
        return dict(response.json()["contact"])


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


def run_sql(settings: dict[str, Any], sql: str, params: Any = (), many: bool = False) -> list[dict[str, Any]]:
    """Run one statement on the test's database, bypassing the app; returns its rows as dicts.

    `sql` uses %s placeholders (rewritten to ? for SQLite); `many` runs it once per
    parameter tuple. SQLite timestamps come back as their stored text.
    """
    if settings.get("MYSQL_HOST"):
        conn = pymysql.connect(
            host=settings["MYSQL_HOST"],
            port=int(settings["MYSQL_PORT"]),
            user=settings["MYSQL_USER"],
            password=settings["MYSQL_PASSWORD"],
            database=settings["MYSQL_DATABASE"],
            autocommit=True,
            cursorclass=pymysql.cursors.DictCursor,
        )
        with conn, conn.cursor() as cur:
            if many:
                cur.executemany(sql, params)
            else:
                cur.execute(sql, params)
            return list(cur.fetchall())
    db = sqlite3.connect(settings["FLUXKART_SQLITE_PATH"])
    db.row_factory = sqlite3.Row
    try:
        with db:
            run = db.executemany if many else db.execute
            return [dict(row) for row in run(sql.replace("%s", "?"), params)]
    finally:
        db.close()


def read_contacts(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Every Contact row straight from the database (not through the app), by id."""
    return run_sql(
        settings,
        "SELECT id, phoneNumber, email, linkedId, linkPrecedence, createdAt, updatedAt, deletedAt "
        "FROM Contact ORDER BY id",
    )


@pytest.fixture
def contacts(settings: dict[str, Any]) -> Any:
    """A function returning the Contact table as it is now."""
    return lambda: read_contacts(settings)


def gunicorn_env(
    settings: dict[str, Any], workers: int, threads: int, worker_class: str, metrics_dir: Path
) -> dict[str, str]:
    """The environment of a gunicorn serving `settings`: nothing leaks in from the developer's shell."""
    env = {name: str(settings.get(name) or "") for name in SETTINGS}
    env.update(
        WEB_CONCURRENCY=str(workers),
        GUNICORN_THREADS=str(threads),
        GUNICORN_WORKER_CLASS=worker_class,
        LOG_LEVEL="info",
        # Our own folder (gunicorn.conf.py keeps one it is given): tests read which workers counted.
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    return env


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Any]:
    """gunicorn(settings, workers=2, threads=4, worker_class="gthread", app_dir=..., ready_path=...).

    Starts the service (or a copy of it in app_dir) under gunicorn on a free
    port, trying a new port up to three times when another process took it;
    every one started is stopped at the end of the test.
    """
    started: list[Gunicorn] = []

    def start(
        settings: dict[str, Any],
        workers: int = 2,
        threads: int = 4,
        worker_class: str = "gthread",
        app_dir: Path | None = None,
        ready_path: str = "/health/live",
    ) -> Gunicorn:
        # FLUXKART_TEST_APP_DIR serves a copy of the service instead (tests/harness/mutants.py's mutants).
        app_dir = app_dir or Path(os.environ.get("FLUXKART_TEST_APP_DIR") or SERVICE_DIR)
        failures = []
        for _ in range(3):
            port = free_port()
            metrics_dir = tmp_path / f"metrics-{port}"
            metrics_dir.mkdir(exist_ok=True)
            env = gunicorn_env(settings, workers, threads, worker_class, metrics_dir)
            server = Gunicorn(env, tmp_path, app_dir=app_dir, port=port)
            started.append(server)  # registered first, so a half-started one is stopped too
            try:
                server.start(ready_path=ready_path)
                return server
            except RuntimeError as exc:
                server.stop()
                failures.append(str(exc))
        raise RuntimeError("gunicorn would not start:\n" + "\n".join(failures))

    yield start
    for server in started:
        server.stop()


# The JSON lines the service logged, parsed: log_lines() at any point of a test.
LogLines = Callable[[], list[dict[str, Any]]]


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
