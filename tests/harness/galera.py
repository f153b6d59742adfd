"""A throwaway three-node MariaDB Galera cluster on 127.0.0.1, for tests and by hand.

    python3 -m tests.harness.galera          # starts one, prints the three SQL ports; Ctrl-C stops it

Each node is a tests.mariadb.MariaDBServer (its own data directory under a
temporary folder, its own SQL port) started with the wsrep options of a
multi-primary cluster: its own replication (gmcast), IST and SST ports, all on
127.0.0.1. Node 1 bootstraps the cluster (--wsrep-new-cluster); nodes 2 and 3
join it one after the other by state transfer (rsync SST), and start() returns
when wsrep_cluster_size is 3 and every node is Synced.

Needs Debian's mariadb-server and galera-4 (and rsync and ss, which the rsync
SST script runs). Failure detection is tuned down from Galera's defaults
(a silent node is suspected after 2 s instead of 5 s) so that a node killed by a test
leaves the cluster in seconds; nothing else differs from a production cluster.
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pymysql
import pymysql.cursors

from tests.harness.mariadb import MariaDBServer, server_binaries
from tests.harness.processes import free_port

PROVIDER_PATHS = (
    "/usr/lib/galera/libgalera_smm.so",
    "/usr/lib/galera-4/libgalera_smm.so",
    "/usr/lib64/galera-4/libgalera_smm.so",
    "/usr/lib/libgalera_smm.so",
)
CLUSTER_NAME = "fluxkart-test"


def galera_provider() -> str | None:
    """Path of libgalera_smm.so (package galera-4), or None when it is not installed."""
    return next((path for path in PROVIDER_PATHS if Path(path).exists()), None)


def galera_missing() -> str | None:
    """Why a cluster cannot start here (what to apt-get install), or None when it can."""
    missing = []
    if server_binaries() is None:
        missing.append("mariadb-server")
    if galera_provider() is None:
        missing.append("galera-4")
    for tool, package in (("rsync", "rsync"), ("ss", "iproute2")):
        if not any(Path(d, tool).exists() for d in ("/usr/bin", "/bin", "/usr/sbin", "/sbin")):
            missing.append(package)
    return f"apt-get install {' '.join(missing)}" if missing else None


def distinct_free_ports(count: int) -> list[int]:
    """`count` different free ports of 127.0.0.1 (free_port alone may repeat one)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class GaleraNode(MariaDBServer):
    """One node: a MariaDBServer whose command line carries the wsrep options."""

    def __init__(self, base: Path, number: int, provider: str, gcomm_port: int, ist_port: int, sst_port: int):
        super().__init__(base, isolation="READ-COMMITTED")
        self.number = number
        self.provider = provider
        self.gcomm_port, self.ist_port, self.sst_port = gcomm_port, ist_port, sst_port

    def causal_connection(self, database: str) -> pymysql.connections.Connection:
        """A connection to this node whose reads wait until it has applied everything the
        cluster committed before them (wsrep_sync_wait = 1)."""
        conn = pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user="root",
            password="",
            database=database,
            autocommit=True,
            cursorclass=pymysql.cursors.DictCursor,
            connect_timeout=5,
        )
        with conn.cursor() as cur:
            cur.execute("SET SESSION wsrep_sync_wait = 1")
        return conn

    def wsrep_args(self, cluster_address: str, bootstrap: bool) -> list[str]:
        """The node's Galera options; `bootstrap` starts a new cluster from this node alone."""
        provider_options = ";".join(
            [
                f"gmcast.listen_addr=tcp://127.0.0.1:{self.gcomm_port}",
                f"ist.recv_addr=127.0.0.1:{self.ist_port}",
                # Enough write sets kept for a killed node to catch up by IST, not a full SST.
                "gcache.size=128M",
                # Declare a dead node gone in ~2-6 s (defaults: 5 s and 15 s): the
                # cluster pauses commits until then. Not shorter: on a busy 2-core
                # machine a rejoining node then fails to install the new view.
                "evs.keepalive_period=PT0.5S",
                "evs.suspect_timeout=PT2S",
                "evs.inactive_timeout=PT6S",
                "evs.install_timeout=PT5S",
                # A single killed node rejoins the running cluster; restoring its last
                # view from disk (for a whole-cluster restart) only confuses that.
                "pc.recovery=false",
            ]
        )
        args = [
            "--wsrep-on=ON",
            f"--wsrep-provider={self.provider}",
            f"--wsrep-cluster-name={CLUSTER_NAME}",
            f"--wsrep-cluster-address={cluster_address}",
            "--wsrep-node-address=127.0.0.1",
            f"--wsrep-node-name=node{self.number}",
            f"--wsrep-provider-options={provider_options}",
            "--wsrep-sst-method=rsync",
            f"--wsrep-sst-receive-address=127.0.0.1:{self.sst_port}",
            "--wsrep-slave-threads=2",
            # What Galera requires of every node.
            "--binlog-format=ROW",
            "--innodb-autoinc-lock-mode=2",
            "--default-storage-engine=InnoDB",
            # Three nodes on one small machine.
            "--innodb-buffer-pool-size=128M",
        ]
        return [*args, "--wsrep-new-cluster"] if bootstrap else args

    def prepare_joiner(self) -> None:
        """A data directory the rsync SST can fill, should the node need a full state transfer.

        The rsync SST script runs an rsync daemon that, started by root, drops to
        "nobody" before writing: as root, that user must own the directory and
        whatever an earlier run left in it.
        """
        self.datadir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            for path in [self.datadir, *self.datadir.rglob("*")]:
                os.chown(path, nobody.pw_uid, nobody.pw_gid, follow_symlinks=False)

    def recover_position(self, cluster_address: str) -> str | None:
        """After a crash, the last committed position ("uuid:seqno") read from InnoDB, else None.

        A node killed without a clean shutdown leaves seqno -1 in grastate.dat;
        without its real position it would ask for a full SST instead of an IST.
        This is what the packaged galera_recovery script does with --wsrep-recover.
        """
        grastate = self.datadir / "grastate.dat"
        if not (self.datadir / "ibdata1").exists() or not grastate.exists():
            return None
        if not re.search(r"^seqno:\s+-1\s*$", grastate.read_text(), re.MULTILINE):
            return None  # a clean shutdown saved the position
        log = self.base / "recover.log"
        with open(log, "wb") as out:
            subprocess.run(
                [
                    self.server_bin,
                    "--no-defaults",
                    f"--datadir={self.datadir}",
                    "--user=root",
                    "--skip-networking",
                    f"--socket={self.base / 'recover.sock'}",
                    f"--pid-file={self.base / 'recover.pid'}",
                    *self.wsrep_args(cluster_address, bootstrap=False),
                    "--wsrep-recover",
                ],
                check=False,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=120,
            )
        found = re.findall(r"Recovered position: ([0-9a-f-]{36}:-?\d+)", log.read_text(errors="replace"))
        return found[-1] if found else None

    def status(self) -> dict[str, str]:
        """SHOW GLOBAL STATUS LIKE 'wsrep%' as {name: value}; {} when the node does not answer."""
        try:
            conn = self.connect()
        except pymysql.err.MySQLError:
            return {}
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW GLOBAL STATUS LIKE 'wsrep%%'")
                return {str(name): str(value) for name, value in cur.fetchall()}
        except pymysql.err.MySQLError:
            return {}
        finally:
            conn.close()

    def kill(self) -> None:
        """SIGKILL: the node dies as in a crash (no clean leave, no flush)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(30)

    def log(self) -> str:
        path = self.base / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


class GaleraCluster:
    """Three Galera nodes on 127.0.0.1 under `base`; start() and stop() them, kill and restart one."""

    def __init__(self, base: Path, size: int = 3):
        provider = galera_provider()
        if provider is None:
            raise RuntimeError("galera-4 is not installed (apt-get install galera-4)")
        ports = distinct_free_ports(3 * size)
        self.nodes = [
            GaleraNode(base / f"node{i + 1}", i + 1, provider, *ports[3 * i : 3 * i + 3]) for i in range(size)
        ]
        self.address = "gcomm://" + ",".join(f"127.0.0.1:{node.gcomm_port}" for node in self.nodes)

    @property
    def ports(self) -> list[int]:
        """The nodes' SQL ports, node 1 first."""
        return [node.port for node in self.nodes]

    def start(self, timeout: float = 120) -> None:
        """Bootstrap node 1, join the others one by one, wait until all are Synced."""
        try:
            first, *others = self.nodes
            first.base.mkdir(parents=True, exist_ok=True)
            first.extra_args = first.wsrep_args(self.address, bootstrap=True)
            first.start(timeout)
            self.wait_synced([first], timeout)
            for node in others:
                self.start_node(node, timeout)
            self.wait_synced(self.nodes, timeout)
        except BaseException:
            self.stop()
            raise

    def start_node(self, node: GaleraNode, timeout: float = 120) -> None:
        """(Re)start one node as a member joining the running cluster (IST when it can, else SST)."""
        node.prepare_joiner()
        position = node.recover_position(self.address)
        node.extra_args = node.wsrep_args(self.address, bootstrap=False)
        if position:
            node.extra_args.append(f"--wsrep-start-position={position}")
        node.start(timeout)

    def wait_synced(self, nodes: list[GaleraNode] | None = None, timeout: float = 120) -> None:
        """Until each of `nodes` (default all) is Synced in a primary component of every node."""
        nodes = self.nodes if nodes is None else nodes
        deadline = time.monotonic() + timeout
        while True:
            states = [node.status() for node in nodes]
            if all(
                state.get("wsrep_local_state_comment") == "Synced"
                and state.get("wsrep_cluster_status") == "Primary"
                and state.get("wsrep_cluster_size") == str(len(nodes))
                for state in states
            ):
                return
            if time.monotonic() > deadline:
                summary = [
                    (node.number, s.get("wsrep_local_state_comment"), s.get("wsrep_cluster_size"))
                    for node, s in zip(nodes, states, strict=True)
                ]
                raise RuntimeError(
                    f"Galera nodes not Synced within {timeout}s: {summary}; "
                    f"see the server.log files under {self.nodes[0].base.parent}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop every node cleanly (SIGTERM, then SIGKILL if one lingers), the bootstrap node last."""
        for node in reversed(self.nodes):
            node.stop()

    def settings(self, database: str) -> list[dict[str, str]]:
        """App settings pointing at `database` on each node, node 1 first."""
        return [node.settings(database) for node in self.nodes]

    def create_database(self, name: str) -> None:
        """CREATE DATABASE on node 1 (replicated to the others, as DDL is by Galera)."""
        with self.nodes[0].connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")

    def __enter__(self) -> GaleraCluster:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main() -> int:
    """Start a cluster in a temporary folder, print its ports, stop it on Ctrl-C."""
    why = galera_missing()
    if why:
        print(f"cannot start a Galera cluster: {why}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="fluxkart-galera-") as base:
        cluster = GaleraCluster(Path(base))
        started = time.monotonic()
        cluster.start()
        print(f"Galera cluster up in {time.monotonic() - started:.1f}s (data in {base})")
        for node in cluster.nodes:
            print(f"  node{node.number}: mysql -h 127.0.0.1 -P {node.port} -u root")
        print("Ctrl-C stops it.", flush=True)
        try:
            signal.pause() if os.name != "nt" else time.sleep(10**9)
        except KeyboardInterrupt:
            pass
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
