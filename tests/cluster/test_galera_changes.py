"""GET /changes on a three-node multi-primary Galera cluster (docs/changes.md).

One gunicorn instance of the service per node. Identify clients write through nodes 1 and 2,
erasures go to node 2, an import and a repair split run against nodes 1 and 2; the consumer
(docs/changes_consumer.py) reads the feed from node 3 only, so the feed's sequencer runs there
while the writers' auto-increment ids interleave (each node hands out its own residue).

- Replay equals state: the partition the consumer rebuilt equals the table's (read on node 3
  with causal reads), every change once, no merge before its customers.
- A smaller id committed later: a transaction on node 1 takes a history id and stays open
  while node 2 commits larger ids; the consumer on node 3 delivers it once it commits; the
  control (`id > cursor` on node 3) skips it.

    .venv/bin/pytest -s tests/cluster/test_galera_changes.py
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from pathlib import Path
from typing import Any

import pymysql
import pymysql.cursors
import pytest

from identity.database import utcnow
from tests.harness.changes import (
    FEED_KINDS,
    Recording,
    check_commands,
    check_replay,
    consumer,
    drain,
    flask_command,
    order,
    partition_of,
    run_beside_the_consumer,
)
from tests.harness.galera import GaleraCluster, GaleraNode
from tests.harness.gunicorn import Gunicorn
from tests.harness.servers import Api

pytestmark = pytest.mark.galera

TOKEN = "galera-changes-token-0123"
WORKERS = (2, 4, "gthread")
CLIENTS = 6
REQUESTS_PER_CLIENT = 100
ALPHABET = 100
ERASURES = 10
IMPORT_ORDERS = 200
BLOB_PHONE = "5550100777"
database_numbers = itertools.count(1)


def query(node: GaleraNode, database: str, sql: str, params: Any = ()) -> list[dict[str, Any]]:
    with node.causal_connection(database) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return list(cur.fetchall())


def start(galera: GaleraCluster, gunicorn: Any) -> tuple[str, list[dict[str, str]], list[Gunicorn]]:
    """A fresh database and one instance of the service per node."""
    database = f"fluxkart_changes_{next(database_numbers)}"
    galera.create_database(database)
    settings = [{**node, "FLUXKART_API_TOKEN": TOKEN} for node in galera.settings(database)]
    return database, settings, [gunicorn(s, *WORKERS, ready_path="/health/ready") for s in settings]


def client(url: str) -> Api:
    api = Api(url)
    api.session.headers["Authorization"] = f"Bearer {TOKEN}"
    return api


def test_replay_equals_state_reading_another_node(
    galera: GaleraCluster, gunicorn: Any, tmp_path: Path
) -> None:
    database, settings, instances = start(galera, gunicorn)
    writers = [client(instance.url) for instance in instances[:2]]
    reader = client(instances[2].url)
    for email in ("blob1@feed.test", "blob2@feed.test"):
        writers[0].identify(email, BLOB_PHONE)
    partition = Recording()
    consumer.start_from_beginning(partition)
    stop, lags, errors = threading.Event(), [0], []

    def follow() -> None:
        while not stop.is_set():
            try:
                consumer.poll(reader.base_url, TOKEN, partition, wait=1)
                lags.append(reader.get("/changes").json()["head"] - partition.cursor)
            except Exception as exc:
                errors.append(repr(exc))
                return

    def identify_client(seed: int) -> None:
        rng, api = random.Random(seed), client(instances[seed % 2].url)
        for _ in range(REQUESTS_PER_CLIENT):
            email, phone = order(rng, ALPHABET)
            response = api.post("/identify", json={"email": email, "phoneNumber": phone})
            if response.status_code != 200:
                errors.append(f"identify {response.status_code}")

    def eraser() -> None:
        rng, api = random.Random(99), client(instances[1].url)
        for _ in range(ERASURES):
            time.sleep(0.1)
            response = api.request(
                "DELETE", "/customers", params={"email": f"p{rng.randrange(ALPHABET)}@feed.test"}
            )
            if response.status_code not in (200, 404, 409):
                errors.append(f"erasure {response.status_code}")

    rng = random.Random(7)
    orders = tmp_path / "orders.csv"
    lines = [",".join(v or "" for v in order(rng, ALPHABET)) for _ in range(IMPORT_ORDERS)]
    orders.write_text("email,phoneNumber\n" + "\n".join(lines) + "\n")
    outcomes: dict[str, Any] = {}

    def import_and_split() -> None:
        outcomes["import"] = flask_command(settings[1], "import", str(orders), "--batch-size", "25")
        outcomes["block"] = flask_command(settings[0], "block", "add", BLOB_PHONE)
        outcomes["repair"] = flask_command(settings[0], "repair")

    threads = [threading.Thread(target=identify_client, args=(seed,)) for seed in range(CLIENTS)]
    threads += [threading.Thread(target=eraser), threading.Thread(target=import_and_split)]
    run_beside_the_consumer(follow, stop, threads)
    assert not errors, errors[:5]
    check_commands(outcomes)
    drain(reader, partition, TOKEN)
    rows = query(galera.nodes[2], database, "SELECT id, linkedId, deletedAt FROM Contact")
    check_replay(partition, partition_of(rows))
    kinds = {change["kind"] for change in partition.changes}
    assert FEED_KINDS <= kinds, kinds
    ids = [row["id"] for row in query(galera.nodes[2], database, "SELECT id FROM CustomerHistory")]
    residues = {i % 3 for i in ids}
    print(
        f"\n{len(partition.changes)} changes followed on node 3; history ids of residues {sorted(residues)}; "
        f"the consumer ran at most {max(lags)} behind the head"
    )


def test_a_smaller_id_committed_later_on_another_node_is_not_skipped(
    galera: GaleraCluster, gunicorn: Any
) -> None:
    database, settings, instances = start(galera, gunicorn)
    writer, reader = client(instances[1].url), client(instances[2].url)
    writer.identify("first@feed.test", "1")
    partition = Recording()
    consumer.start_from_beginning(partition)
    consumer.poll(reader.base_url, TOKEN, partition, wait=0)
    held = pymysql.connect(**node_args(galera.nodes[0], database), autocommit=False)
    at = utcnow().isoformat(sep=" ")
    with held.cursor() as cur:
        cur.execute(
            "INSERT INTO Contact (id, email, linkPrecedence, createdAt, updatedAt) "
            "VALUES (100000, 'late@feed.test', 'primary', %s, %s)",
            (at, at),
        )
        cur.execute(
            "INSERT INTO CustomerHistory (kind, createdAt, requestId, customerId, contactIds) "
            "VALUES ('created', %s, 'late', 100000, '[100000]')",
            (at,),
        )
        late_id = cur.lastrowid
    newest = 0
    for number in range(10):  # node 2 commits until one of its ids is above the held one
        writer.identify(f"n{number}@feed.test", f"2{number}")
        newest = query(galera.nodes[2], database, "SELECT MAX(id) AS top FROM CustomerHistory")[0]["top"]
        if newest > late_id:
            break
    assert newest > late_id
    consumer.poll(reader.base_url, TOKEN, partition, wait=0)
    control = newest  # the `id > cursor` reader on node 3 has read up to here
    assert 100000 not in partition.customer_of
    held.commit()
    held.close()
    consumer.poll(reader.base_url, TOKEN, partition, wait=1)
    assert partition.customer_of.get(100000) == 100000  # the feed delivered it
    after_control = query(
        galera.nodes[2], database, "SELECT id FROM CustomerHistory WHERE id > %s", (control,)
    )
    assert late_id not in [row["id"] for row in after_control]  # the control skips it
    rows = query(galera.nodes[2], database, "SELECT id, linkedId, deletedAt FROM Contact")
    assert partition.customer_of == partition_of(rows)


def node_args(node: GaleraNode, database: str) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": node.port, "user": "root", "password": "", "database": database}
