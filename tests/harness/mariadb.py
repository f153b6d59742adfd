"""A throwaway MariaDB/MySQL server for the tests, started from the installed binaries.

The tests never touch a user's server: each session gets its own data
directory, port and socket under a temporary folder, and the fault tests can
stop, kill and start it at will.

Why not pytest-mysql? Its executor (a mirakuru process) can stop and start its
server too. We keep this small class because the suite needs a few things its
session fixtures are not shaped for: several servers in one session with
different settings (one per isolation level for the stress test, one per fault
test), a server killed with SIGKILL and started again on the same data
directory and port, a port from FLUXKART_TEST_PORTS with a fresh try when
another process took it, and a check that the server answering on the port is
ours (its @@datadir), not someone else's. It is also one dependency less.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pymysql

from tests.harness.processes import free_port, stop_process

SERVER_NAMES = ("mariadbd", "mysqld")
INSTALL_NAMES = ("mariadb-install-db", "mysql_install_db")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


def find_binary(names: tuple[str, ...]) -> str | None:
    for name in names:
        path = shutil.which(name, path=SEARCH_PATH)
        if path:
            return path
    return None


def server_binaries() -> tuple[str, str] | None:
    """(server, install-db) paths, or None when MariaDB/MySQL is not installed."""
    server, install = find_binary(SERVER_NAMES), find_binary(INSTALL_NAMES)
    return (server, install) if server and install else None


class Server:
    """Where a MySQL-compatible server answers, and how the tests and the app reach it."""

    host = "127.0.0.1"
    port = 3306
    user = "root"
    password = ""

    def connect(self, database: str | None = None) -> pymysql.connections.Connection:
        """An autocommit connection as the server's administrator (tuples, not dicts)."""
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=database,
            autocommit=True,
            connect_timeout=2,
        )

    def settings(self, database: str) -> dict[str, str]:
        """The app settings that point at `database` on this server."""
        return {
            "MYSQL_HOST": self.host,
            "MYSQL_PORT": str(self.port),
            "MYSQL_USER": self.user,
            "MYSQL_PASSWORD": self.password,
            "MYSQL_DATABASE": database,
        }


class MariaDBServer(Server):
    """One mariadbd process on 127.0.0.1 with its own data directory, run as root."""

    def __init__(self, base: Path, isolation: str = "REPEATABLE-READ", extra_args: Sequence[str] = ()):
        binaries = server_binaries()
        if binaries is None:
            raise RuntimeError("mariadbd/mysqld is not installed")
        self.server_bin, self.install_bin = binaries
        self.base = base
        self.datadir = base / "data"
        self.port = free_port()
        self.isolation = isolation
        # Appended to the command line at every launch (a Galera node's wsrep options; later wins).
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    def install(self) -> None:
        """Create the data directory (its output goes to install.log, quoted when it fails)."""
        log_path = self.base / "install.log"
        with open(log_path, "ab") as log:
            result = subprocess.run(
                [
                    self.install_bin,
                    "--no-defaults",
                    f"--datadir={self.datadir}",
                    "--user=root",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if result.returncode != 0:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.install_bin} failed ({result.returncode}):\n{tail}")

    def start(self, timeout: float = 30) -> None:
        """Start mariadbd; on a port another process grabbed meanwhile, try a new port."""
        if not self.datadir.exists():
            self.install()
        for _ in range(3):
            if self.launch(timeout):
                return
            self.port = free_port()
        raise RuntimeError(f"mariadbd did not start; see {self.base / 'server.log'}")

    def launch(self, timeout: float) -> bool:
        """One start attempt on self.port; False when the port turned out to be taken."""
        with open(self.base / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    self.server_bin,
                    "--no-defaults",
                    f"--datadir={self.datadir}",
                    f"--port={self.port}",
                    "--bind-address=127.0.0.1",
                    f"--socket={self.base / 'mysqld.sock'}",
                    f"--pid-file={self.base / 'mysqld.pid'}",
                    "--user=root",
                    "--skip-name-resolve",
                    "--skip-log-bin",
                    "--max-connections=1000",
                    f"--transaction-isolation={self.isolation}",
                    # A throwaway server: durability at commit buys the tests nothing.
                    "--innodb-flush-log-at-trx-commit=2",
                    "--innodb-buffer-pool-size=256M",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False  # most likely the port was taken between free_port() and bind
            try:
                conn = self.connect()
            except pymysql.err.OperationalError:
                time.sleep(0.1)
                continue
            with conn, conn.cursor() as cur:
                cur.execute("SELECT @@datadir")
                (datadir,) = cur.fetchone()
            if Path(datadir).resolve() == self.datadir.resolve():
                return True
            # Someone else's server answers on this port: ours cannot bind it.
            self.stop()
            return False
        self.stop()
        raise RuntimeError(f"mariadbd did not answer within {timeout}s; see {self.base / 'server.log'}")

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process(process, grace=30)


class ExistingServer(Server):
    """A server the developer names with FLUXKART_TEST_MYSQL_* (tests use their own databases on it)."""

    def __init__(self) -> None:
        env = os.environ
        self.host = env.get("FLUXKART_TEST_MYSQL_HOST", "127.0.0.1")
        self.port = int(env.get("FLUXKART_TEST_MYSQL_PORT", "3306"))
        self.user = env.get("FLUXKART_TEST_MYSQL_USER", "root")
        self.password = env.get("FLUXKART_TEST_MYSQL_PASSWORD", "")
