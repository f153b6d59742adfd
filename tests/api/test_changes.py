"""GET /changes, the feed of changes (docs/changes.md), on both backends over real HTTP.

The consumer is docs/changes_consumer.py itself (the file the docs show), loaded here.

- Replay equals state: the consumer follows the feed while identify clients, erasures, an
  import (`flask import`, another process) and a split by repair (`block add`, `repair`) run;
  at the end the partition it rebuilt (contact id -> primary id) equals the table's, every
  change came once (positions strictly increasing), and no merge came before the changes
  that made the customers it merges.
- A change that takes a smaller history id and commits after a larger one is not skipped;
  the control, a reader by `id > cursor`, skips it. MySQL: a transaction held open on a second
  connection. SQLite has one writer, so ids are taken in commit order: there the late
  smaller id is written by SQL.
- Erasure: the consumer's copy drops the erased customer's ids.
- 410 for a cursor older than the retention (and one past the head); erased ids are cleared
  after the retention; the setting is checked.
- Long polling answers when a change commits (control: without a change it answers empty).
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from identity.changes import FEED_WAITING
from identity.database import utcnow
from identity.errors import ConfigurationError
from identity.settings import load_settings
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
from tests.harness.database import mysql_connect, read_contacts, run_sql
from tests.harness.servers import Api

TOKEN = "changes-token-0123456789"
WITH_TOKEN = pytest.mark.parametrize("settings", [{"FLUXKART_API_TOKEN": TOKEN}], indirect=True)


def table_partition(settings: dict[str, Any]) -> dict[int, int]:
    """contact id -> primary id of every live row, straight from the table."""
    return partition_of(read_contacts(settings))


@pytest.fixture
def authorized(api: Api) -> Api:
    api.session.headers["Authorization"] = f"Bearer {TOKEN}"
    return api


# --------------------------------------------------------------------------
# Replay equals state, under concurrent identify, erasure, import and repair
# --------------------------------------------------------------------------

CLIENTS = 4
REQUESTS_PER_CLIENT = 150
ALPHABET = 120  # emails and phone numbers: enough customers to create, link and merge
ERASURES = 12
IMPORT_ORDERS = 300
BLOB_PHONE = "5550100999"


@WITH_TOKEN
def test_replay_equals_state_under_concurrent_traffic(
    authorized: Api, settings: dict[str, Any], tmp_path: Path
) -> None:
    api = authorized
    for email in ("blob1@feed.test", "blob2@feed.test"):  # one customer through a shared phone
        api.identify(email, BLOB_PHONE)
    partition = Recording()
    consumer.start_from_beginning(partition)
    stop, lags, errors = threading.Event(), [0], []

    def follow() -> None:
        while not stop.is_set():
            try:
                consumer.poll(api.base_url, TOKEN, partition, wait=1)
                head = api.get("/changes").json()["head"]
                lags.append(head - partition.cursor)
            except Exception as exc:  # reported by the test, not lost in the thread
                errors.append(repr(exc))
                return

    def identify_client(seed: int) -> None:
        rng, client = random.Random(seed), Api(api.base_url)
        client.session.headers["Authorization"] = f"Bearer {TOKEN}"
        for _ in range(REQUESTS_PER_CLIENT):
            email, phone = order(rng, ALPHABET)
            response = client.post("/identify", json={"email": email, "phoneNumber": phone})
            if response.status_code != 200:
                errors.append(f"identify {response.status_code}")

    def eraser() -> None:
        rng, client = random.Random(99), Api(api.base_url)
        client.session.headers["Authorization"] = f"Bearer {TOKEN}"
        for _ in range(ERASURES):
            time.sleep(0.05)
            response = client.request(
                "DELETE", "/customers", params={"email": f"p{rng.randrange(ALPHABET)}@feed.test"}
            )
            if response.status_code not in (200, 404, 409):
                errors.append(f"erasure {response.status_code}")

    rng = random.Random(7)
    orders = tmp_path / "orders.csv"
    lines = ["email,phoneNumber"] + [
        ",".join(v or "" for v in order(rng, ALPHABET)) for _ in range(IMPORT_ORDERS)
    ]
    orders.write_text("\n".join(lines) + "\n")
    outcomes: dict[str, subprocess.CompletedProcess[str]] = {}

    def import_and_split() -> None:
        outcomes["import"] = flask_command(settings, "import", str(orders), "--batch-size", "25")
        outcomes["block"] = flask_command(settings, "block", "add", BLOB_PHONE)
        outcomes["repair"] = flask_command(settings, "repair")

    workers = [threading.Thread(target=identify_client, args=(seed,)) for seed in range(CLIENTS)]
    workers += [threading.Thread(target=eraser), threading.Thread(target=import_and_split)]
    run_beside_the_consumer(follow, stop, workers)
    assert not errors, errors[:5]
    check_commands(outcomes)
    drain(api, partition, TOKEN)
    check_replay(partition, table_partition(settings))
    kinds = {change["kind"] for change in partition.changes}
    assert FEED_KINDS <= kinds, kinds
    print(
        f"\n{len(partition.changes)} changes followed; the consumer ran at most {max(lags)} behind the head"
    )


# --------------------------------------------------------------------------
# A smaller id committed later
# --------------------------------------------------------------------------

LATE_EMAIL = "late@feed.test"


def insert_late_change(settings: dict[str, Any], contact_id: int, event_id: int | None) -> Any:
    """A new customer's row and `created` event, as identify writes them, left uncommitted on MySQL
    (returns the open connection) or written at once on SQLite with the explicit smaller ids."""
    at = utcnow().isoformat(sep=" ")
    contact = (
        "INSERT INTO Contact (id, email, linkPrecedence, createdAt, updatedAt) "
        "VALUES (%s, %s, 'primary', %s, %s)"
    )
    event = (
        "INSERT INTO CustomerHistory (id, kind, createdAt, requestId, customerId, contactIds) "
        "VALUES (%s, 'created', %s, 'late', %s, %s)"
    )
    if settings["MYSQL_HOST"]:
        conn = mysql_connect(settings, autocommit=False)
        with conn.cursor() as cur:
            cur.execute(contact, (contact_id, LATE_EMAIL, at, at))
            cur.execute(event, (event_id, at, contact_id, f"[{contact_id}]"))
        return conn
    run_sql(settings, contact, (contact_id, LATE_EMAIL, at, at))
    run_sql(settings, event, (event_id, at, contact_id, f"[{contact_id}]"))
    return None


def history_ids_after(settings: dict[str, Any], cursor: int) -> list[int]:
    """The control: a reader that follows CustomerHistory by `id > cursor`."""
    rows = run_sql(settings, "SELECT id FROM CustomerHistory WHERE id > %s ORDER BY id", (cursor,))
    return [row["id"] for row in rows]


def test_a_smaller_id_committed_later_is_not_skipped(api: Api, settings: dict[str, Any]) -> None:
    api.identify("first@feed.test", "1")
    partition = Recording()
    consumer.start_from_beginning(partition)
    consumer.poll(api.base_url, None, partition, wait=0)
    control = max(history_ids_after(settings, 0))
    if settings["MYSQL_HOST"]:
        held = insert_late_change(settings, 1000, None)  # takes the next history id, holds it
        late_event = None
    else:
        run_sql(settings, "UPDATE sqlite_sequence SET seq = seq + 10 WHERE name = 'CustomerHistory'")
        held, late_event = None, control + 5
    second = api.identify("second@feed.test", "2")["primaryContactId"]
    consumer.poll(api.base_url, None, partition, wait=0)
    assert partition.customer_of == {1: 1, second: second}
    seen_by_control = history_ids_after(settings, control)
    control = max(seen_by_control)
    if held is not None:
        held.commit()
        held.close()
    else:
        insert_late_change(settings, 1000, late_event)
    late_id = run_sql(settings, "SELECT id FROM CustomerHistory WHERE requestId = 'late'")[0]["id"]
    assert late_id < control  # the late change's id is below what both readers had seen

    consumer.poll(api.base_url, None, partition, wait=0)
    assert partition.customer_of == {1: 1, second: second, 1000: 1000}  # the feed delivered it
    assert late_id not in history_ids_after(settings, control)  # `id > cursor` skips it for good
    assert partition.customer_of == table_partition(settings)


# --------------------------------------------------------------------------
# Erasure, retention, long polling
# --------------------------------------------------------------------------


@WITH_TOKEN
def test_the_consumer_drops_an_erased_customer(authorized: Api, settings: dict[str, Any]) -> None:
    api = authorized
    api.identify("gone@feed.test", "11")
    api.identify("gone2@feed.test", "11")
    kept = api.identify("kept@feed.test", "22")["primaryContactId"]
    partition = Recording()
    consumer.start_from_beginning(partition)
    consumer.poll(api.base_url, TOKEN, partition, wait=0)
    assert set(partition.customer_of) == {1, 2, kept}
    erased = api.request("DELETE", "/customers", params={"email": "gone@feed.test"}).json()
    consumer.poll(api.base_url, TOKEN, partition, wait=0)
    assert partition.customer_of == {kept: kept} == table_partition(settings)
    last = partition.changes[-1]
    assert (last["kind"], last["customerId"], last["contactIds"]) == ("erased", 1, erased["contactIds"])
    # A consumer that starts after the erasure never sees the erased customer's changes.
    late = Recording()
    consumer.start_from_beginning(late)
    consumer.poll(api.base_url, TOKEN, late, wait=0)
    assert late.customer_of == {kept: kept}
    assert not {1, 2} & late.introduced


def backdate(settings: dict[str, Any], days: int) -> None:
    """A created event (and an erasure record) from `days` ago, as a long-lived database holds."""
    at = (utcnow() - timedelta(days=days)).isoformat(sep=" ")
    run_sql(
        settings,
        "INSERT INTO CustomerHistory (kind, createdAt, requestId, customerId, contactIds) "
        "VALUES ('created', %s, 'old', 500, '[500]')",
        (at,),
    )
    run_sql(
        settings,
        "INSERT INTO CustomerErasure (erasedAt, requestId, contacts, identifiers, historyEvents, "
        "customerIds) "
        "VALUES (%s, 'old', 1, 1, 1, '[501]')",
        (at,),
    )


def test_a_cursor_older_than_the_retention_is_gone(api: Api, settings: dict[str, Any]) -> None:
    assert api.get("/health/ready").status_code == 200  # the schema is made
    backdate(settings, 40)
    # Control: a service keeping changes 60 days serves them (and numbers them).
    longer = create_app_with(settings, FLUXKART_CHANGES_RETENTION_DAYS="60").test_client()
    served = longer.get("/changes?after=0", headers={"Authorization": ""}).json
    assert [(c["kind"], c["contactIds"]) for c in served["changes"]] == [
        ("created", [500]),
        ("erased", [501]),
    ]
    gone = api.get("/changes", params={"after": 0})
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "cursor_expired"
    assert "/contacts" in gone.json()["error"]["message"]
    # Resync: the head, then follow from it.
    head = api.get("/changes").json()
    assert head == {"changes": [], "cursor": 2, "head": 2}
    api.identify("new@feed.test", "3")
    page = api.get("/changes", params={"after": head["cursor"]}).json()
    assert [change["kind"] for change in page["changes"]] == ["created"]
    assert api.get("/changes", params={"after": 99}).status_code == 410  # past the head
    # That read numbered the new change and cleared the erased ids past the retention: from
    # now on even the longer-keeping service refuses the cursor that would need them.
    assert run_sql(settings, "SELECT customerIds FROM CustomerErasure") == [{"customerIds": None}]
    assert longer.get("/changes?after=1").status_code == 410


def create_app_with(settings: dict[str, Any], **changes: str) -> Any:
    from fluxkart import create_app

    return create_app({**settings, **changes})


@pytest.mark.parametrize("value", ["0", "-1", "thirty", "3651", "1.5"])
def test_the_retention_setting_is_checked(value: str) -> None:
    with pytest.raises(ConfigurationError, match="FLUXKART_CHANGES_RETENTION_DAYS"):
        load_settings({"FLUXKART_CHANGES_RETENTION_DAYS": value})
    assert load_settings({})["FLUXKART_CHANGES_RETENTION_DAYS"] == 30


def test_long_polling_answers_when_a_change_commits(api: Api) -> None:
    api.identify("before@feed.test", "1")
    head = api.get("/changes").json()["cursor"]
    answers: list[Any] = []
    waiting_before = FEED_WAITING._value.get()
    poller = threading.Thread(
        target=lambda: answers.append(api.get("/changes", params={"after": head, "wait": 25}, timeout=60))
    )
    poller.start()
    deadline = time.monotonic() + 20
    while FEED_WAITING._value.get() == waiting_before and time.monotonic() < deadline:
        time.sleep(0.01)  # until the request is held open
    assert FEED_WAITING._value.get() == waiting_before + 1
    created = api.identify("during@feed.test", "2")["primaryContactId"]
    poller.join()
    changes = answers[0].json()["changes"]
    assert [(c["kind"], c["customerId"]) for c in changes] == [("created", created)]
    # Control: without a change the held request ends empty at its wait.
    quiet = api.get("/changes", params={"after": changes[-1]["seq"], "wait": 1}).json()
    assert quiet["changes"] == [] and quiet["cursor"] == changes[-1]["seq"]


def test_bad_parameters_are_400(api: Api) -> None:
    for params in ({"after": "-1"}, {"limit": "0"}, {"limit": "1001"}, {"wait": "31"}, {"after": "x"}):
        assert api.get("/changes", params=params).status_code == 400, params
