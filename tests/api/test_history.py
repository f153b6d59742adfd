"""The customer history (SPEC "History and erasure"), on both backends, through real HTTP.

identify records `created`, `linked` and `merged` events in its own transaction, exactly
when it changes the Contact table and never for a request that changes nothing;
`GET /customers/<id>/history` answers them oldest first, with the events of every customer
merged in, and a demoted primary's id leads to its survivor. The tables are read straight
from the database (run_sql), not through the app. Every answer is checked against
openapi.json by the Api fixture.
"""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from fluxkart import create_app
from identity.database import utcnow
from identity.history import record_imported, start_command_run
from identity.pool import get_db
from identity.transactions import in_transaction
from tests.harness.database import read_contacts, run_sql
from tests.harness.legacy import Seed, seed_rows
from tests.harness.servers import Api

TOKEN = "history-token-0123456789"
WITH_TOKEN = pytest.mark.parametrize("settings", [{"FLUXKART_API_TOKEN": TOKEN}], indirect=True)
EVENT_COLUMNS = "id, kind, createdAt, requestId, customerId, formerCustomerId, contactIds"


# The service's request id -> the X-Request-ID the test sent with it: history records the
# service's own id (SPEC, "History and erasure"), and the tests read events by the names they chose.
SENT_AS: dict[str, str] = {}


def identify(api: Api, email: str | None, phone: str | None, request_id: str) -> dict[str, Any]:
    """POST /identify with our own X-Request-ID; returns the "contact" object."""
    response = api.post(
        "/identify", json={"email": email, "phoneNumber": phone}, headers={"X-Request-ID": request_id}
    )
    assert response.status_code == 200, response.text
    assert response.headers["X-Client-Request-ID"] == request_id
    assert response.headers["X-Request-ID"] != request_id  # the service makes its own
    SENT_AS[response.headers["X-Request-ID"]] = request_id
    return dict(response.json()["contact"])


def history_rows(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The whole CustomerHistory table, straight from the database, by id."""
    rows = run_sql(settings, f"SELECT {EVENT_COLUMNS} FROM CustomerHistory ORDER BY id")  # noqa: S608
    for row in rows:
        row["contactIds"] = json.loads(row["contactIds"])
    return rows


def history(api: Api, customer_id: int, **params: Any) -> dict[str, Any]:
    response = api.get(f"/customers/{customer_id}/history", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def shape(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Events reduced to (kind, customerId, contactIds, demoted/former primary, requestId)."""
    return [
        (
            e["kind"],
            e["customerId"],
            e["contactIds"],
            e.get("demotedPrimaryId", e.get("formerPrimaryId")),
            SENT_AS.get(e["requestId"], e["requestId"]),
        )
        for e in events
    ]


# --------------------------------------------------------------------------
# Each kind of event, with its ids
# --------------------------------------------------------------------------


def test_a_new_customer_records_created(api: Api, settings: dict[str, Any]) -> None:
    """One `created` event naming the new primary, with the request's id and the row's time."""
    identify(api, "lorraine@hv.edu", "1", "req-created")
    body = history(api, 1)
    assert body["customerId"] == 1 and body["nextAfter"] is None
    assert shape(body["events"]) == [("created", 1, [1], None, "req-created")]
    stored = read_contacts(settings)[0]["createdAt"]
    stored = datetime.fromisoformat(stored) if isinstance(stored, str) else stored
    assert datetime.fromisoformat(body["events"][0]["at"].removesuffix("Z")) == stored  # the row's own time


def test_a_new_identifier_records_linked(api: Api) -> None:
    identify(api, "lorraine@hv.edu", "1", "r1")
    identify(api, "mcfly@hv.edu", "1", "r2")
    identify(api, "mcfly@hv.edu", "2", "r3")
    assert shape(history(api, 1)["events"]) == [
        ("created", 1, [1], None, "r1"),
        ("linked", 1, [2], None, "r2"),
        ("linked", 1, [3], None, "r3"),
    ]


def test_a_merge_records_merged_with_the_rows_that_moved(api: Api) -> None:
    """The demoted primary and every row that pointed at it, in one `merged` event under the survivor."""
    identify(api, "george@hv.edu", "1", "r1")  # 1
    identify(api, "doc@hv.edu", "1", "r2")  # 2 -> 1
    identify(api, "biff@hv.edu", "2", "r3")  # 3
    identify(api, "marty@hv.edu", "2", "r4")  # 4 -> 3
    identify(api, "george@hv.edu", "2", "r5")  # customer 3 folds into 1, no new row
    assert shape(history(api, 1)["events"]) == [
        ("created", 1, [1], None, "r1"),
        ("linked", 1, [2], None, "r2"),
        ("created", 3, [3], None, "r3"),
        ("linked", 3, [4], None, "r4"),
        ("merged", 1, [3, 4], 3, "r5"),
    ]


def test_repeat_orders_record_nothing(api: Api, settings: dict[str, Any]) -> None:
    """A request whose identifiers are all known (any subset, any row) writes no event."""
    for number, (email, phone) in enumerate(
        [("a@x.io", "1"), ("b@x.io", "1"), ("c@x.io", "2"), ("a@x.io", "2")]
    ):
        identify(api, email, phone, f"setup-{number}")
    before = history_rows(settings)
    assert [row["kind"] for row in before] == ["created", "linked", "created", "merged"]
    repeats = [
        ("a@x.io", "1"),
        ("b@x.io", "1"),
        ("a@x.io", None),
        (None, "2"),
        ("c@x.io", "1"),
        ("b@x.io", "2"),
    ]
    for number, (email, phone) in enumerate(repeats * 2):
        identify(api, email, phone, f"repeat-{number}")
    assert history_rows(settings) == before


def test_events_follow_every_change_of_the_table(api: Api, settings: dict[str, Any]) -> None:
    """Over a random sequence of orders, the events of each request are exactly its diff of the table.

    New rows <-> `created`/`linked` naming them; rows whose link changed <-> `merged` naming
    them (with the demoted primary, a primary before); no change <-> no event. Every event
    is under the answer's primary and carries the request's id.
    """
    assert api.get("/health/ready").status_code == 200  # the first connection creates the schema
    rng = random.Random(10)
    emails = [f"e{i}@seq.test" for i in range(5)]
    phones = [f"55{i}" for i in range(5)]
    kinds_seen: set[str] = set()
    for number in range(40):
        email = rng.choice(emails) if rng.random() > 0.15 else None
        phone = rng.choice(phones) if rng.random() > 0.15 or email is None else None
        before = {row["id"]: row for row in read_contacts(settings)}
        seen_events = len(history_rows(settings))
        request_id = f"seq-{number}"
        answer = identify(api, email, phone, request_id)
        after = {row["id"]: row for row in read_contacts(settings)}
        events = history_rows(settings)[seen_events:]
        kinds_seen.update(event["kind"] for event in events)

        inserted = sorted(set(after) - set(before))
        relinked = sorted(
            id
            for id in before
            if (before[id]["linkedId"], before[id]["linkPrecedence"])
            != (after[id]["linkedId"], after[id]["linkPrecedence"])
        )
        label = f"request {number} ({email}, {phone})"
        if not inserted and not relinked:
            assert events == [], label
            continue
        assert {SENT_AS.get(event["requestId"]) for event in events} == {request_id}, label
        assert {event["customerId"] for event in events} == {answer["primaryContactId"]}, label
        made = [event for event in events if event["kind"] in ("created", "linked")]
        assert sorted(id for event in made for id in event["contactIds"]) == inserted, label
        for event in made:
            expected = "created" if after[event["contactIds"][0]]["linkPrecedence"] == "primary" else "linked"
            assert event["kind"] == expected, label
        merged = [event for event in events if event["kind"] == "merged"]
        assert sorted(id for event in merged for id in event["contactIds"]) == relinked, label
        for event in merged:
            assert before[event["formerCustomerId"]]["linkPrecedence"] == "primary", label
            assert event["contactIds"][0] == event["formerCustomerId"], label
        assert len(made) + len(merged) == len(events), label
    assert kinds_seen == {"created", "linked", "merged"}  # the sequence exercised every kind


# --------------------------------------------------------------------------
# The history of a customer, across merges
# --------------------------------------------------------------------------


def chain_of_merges(api: Api) -> None:
    """C (1) is the oldest, then B (2, with 4), then A (3, with 5); A merges into B, then B into C."""
    identify(api, "c@chain.test", "1", "c-created")  # 1
    identify(api, "b@chain.test", "2", "b-created")  # 2
    identify(api, "a@chain.test", "3", "a-created")  # 3
    identify(api, "b2@chain.test", "2", "b-linked")  # 4 -> 2
    identify(api, "a2@chain.test", "3", "a-linked")  # 5 -> 3
    identify(api, "a@chain.test", "2", "a-into-b")  # 3, 5 -> 2
    identify(api, "b@chain.test", "1", "b-into-c")  # 2, 3, 4, 5 -> 1


CHAIN_EVENTS = [
    ("created", 1, [1], None, "c-created"),
    ("created", 2, [2], None, "b-created"),
    ("created", 3, [3], None, "a-created"),
    ("linked", 2, [4], None, "b-linked"),
    ("linked", 3, [5], None, "a-linked"),
    ("merged", 2, [3, 5], 3, "a-into-b"),
    ("merged", 1, [2, 3, 4, 5], 2, "b-into-c"),  # the demoted primary, then by age
]


def test_a_chain_of_merges_shows_every_event_under_the_survivor(api: Api) -> None:
    """A into B, then B into C: C's history holds A's and B's events, oldest first."""
    chain_of_merges(api)
    body = history(api, 1)
    assert body["customerId"] == 1
    assert shape(body["events"]) == CHAIN_EVENTS
    stamps = [(event["at"], event["id"]) for event in body["events"]]
    assert stamps == sorted(stamps)


@pytest.mark.parametrize("demoted", [2, 3, 4, 5])
def test_a_demoted_primary_leads_to_its_survivor(api: Api, demoted: int) -> None:
    """A's id, B's id (and their rows' ids) answer C's history, naming C in the body and a Link."""
    chain_of_merges(api)
    response = api.get(f"/customers/{demoted}/history")
    assert response.status_code == 200
    assert response.json()["customerId"] == 1
    assert shape(response.json()["events"]) == CHAIN_EVENTS
    assert response.headers["Link"] == '</customers/1/history>; rel="canonical"'


def test_the_survivor_has_no_canonical_link(api: Api) -> None:
    chain_of_merges(api)
    assert "Link" not in api.get("/customers/1/history").headers


def test_a_deleted_demoted_primary_still_leads_to_its_survivor(api: Api, settings: dict[str, Any]) -> None:
    """Once a privacy process soft-deletes B's row, B's id still leads to C, through the merge event."""
    chain_of_merges(api)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    run_sql(settings, "UPDATE Contact SET deletedAt = %s WHERE id IN (2, 3)", (now,))
    for demoted in (2, 3):
        body = history(api, demoted)
        assert body["customerId"] == 1
        assert shape(body["events"]) == CHAIN_EVENTS


def test_history_pages_follow_the_link(api: Api) -> None:
    """limit/after as on /contacts: the pages, followed by their Link rel="next", are the whole history."""
    chain_of_merges(api)
    whole = history(api, 1)["events"]
    pages, path = [], "/customers/3/history?limit=2"
    while path:
        response = api.get(path)
        assert response.status_code == 200, response.text
        pages.append(response.json()["events"])
        links = dict(
            (rel, url) for url, rel in re.findall(r'<([^>]+)>; rel="(\w+)"', response.headers.get("Link", ""))
        )
        assert links.get("canonical") in (None, "/customers/1/history")
        path = links.get("next", "")
        if path:
            assert response.json()["nextAfter"] == pages[-1][-1]["id"]
    assert [len(page) for page in pages] == [2, 2, 2, 1]
    assert [event for page in pages for event in page] == whole


def test_unknown_ids_and_cursors_are_404(api: Api) -> None:
    identify(api, "only@x.io", "1", "r1")
    for path in ("/customers/2/history", "/customers/0/history", f"/customers/{2**63}/history"):
        response = api.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
    response = api.get("/customers/1/history", params={"after": 999})
    assert response.status_code == 404
    response = api.get("/customers/1/history", params={"limit": 0})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_parameter"


def test_the_history_holds_no_identifier(api: Api, settings: dict[str, Any]) -> None:
    """Ids only: no email and no phone number sent appears anywhere in the history table."""
    sent = [("george@hv.edu", "919191"), ("biff@hv.edu", "717171"), ("george@hv.edu", "717171")]
    for number, (email, phone) in enumerate(sent):
        identify(api, email, phone, f"r{number}")
    text = json.dumps(run_sql(settings, "SELECT * FROM CustomerHistory"), default=str)
    for email, phone in sent:
        assert email not in text and email.split("@")[0] not in text and phone not in text


def test_the_import_hook_records_imported(app: Any, api: Api) -> None:
    """record_imported (for the import command) appends an `imported` event under the command's run id."""
    identify(api, "imp@x.io", "1", "r1")
    run_id = start_command_run("import-run-1")
    with app.app_context():
        in_transaction(get_db(), lambda db: record_imported(db, {1: [1]}, utcnow()), "import")
    events = history(api, 1)["events"]
    assert shape(events) == [("created", 1, [1], None, "r1"), ("imported", 1, [1], None, run_id)]


@WITH_TOKEN
def test_the_history_needs_the_token(api: Api) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert api.post("/identify", json={"email": "t@x.io"}, headers=auth).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = api.get("/customers/1/history", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
    assert api.get("/customers/1/history", headers=auth).status_code == 200


# --------------------------------------------------------------------------
# repaired: a healing identify and the repair command, on data the service did not write
# --------------------------------------------------------------------------


# (id, email, phoneNumber, linkedId, linkPrecedence, createdAt second, deleted)
def seed_legacy(api: Api, settings: dict[str, Any], rows: list[Seed]) -> None:
    """Rows written behind the service's back, the table marked not known to be consistent."""
    assert api.get("/health/ready").status_code == 200  # the service creates its schema
    seed_rows(settings, rows)


def test_healing_a_chain_records_repaired(api: Api, settings: dict[str, Any]) -> None:
    """3 -> 2 -> 1: identify re-points 3 at 1, one `repaired` event naming the row it pointed at."""
    seed_legacy(
        api,
        settings,
        [(1, "a@l.io", "1", None, "primary", 1, False), (2, "b@l.io", "1", 1, "secondary", 2, False)]
        + [(3, "c@l.io", "2", 2, "secondary", 3, False)],
    )
    assert identify(api, "c@l.io", "2", "heal-chain")["secondaryContactIds"] == [2, 3]
    assert shape(history(api, 1)["events"]) == [("repaired", 1, [3], 2, "heal-chain")]
    identify(api, "c@l.io", "2", "heal-again")  # healed: nothing more to record
    assert len(history_rows(settings)) == 1


def test_healing_a_deleted_primary_records_repaired_and_its_id_leads_on(
    api: Api, settings: dict[str, Any]
) -> None:
    """Primary 1 was soft-deleted: row 2 becomes primary, 3 points at it; 1's id leads to 2."""
    seed_legacy(
        api,
        settings,
        [(1, "a@l.io", "1", None, "primary", 1, True), (2, "b@l.io", "1", 1, "secondary", 2, False)]
        + [(3, "c@l.io", "1", 1, "secondary", 3, False)],
    )
    assert identify(api, "b@l.io", "1", "heal-deleted")["primaryContactId"] == 2
    expected = [("repaired", 2, [2, 3], 1, "heal-deleted")]
    assert shape(history(api, 2)["events"]) == expected
    response = api.get("/customers/1/history")
    assert response.status_code == 200
    assert response.json()["customerId"] == 2 and shape(response.json()["events"]) == expected
    assert response.headers["Link"] == '</customers/2/history>; rel="canonical"'


def test_healing_two_primaries_of_one_customer_records_merged(api: Api, settings: dict[str, Any]) -> None:
    """Two primaries sharing an email (the old service's race): the newer is demoted, as in a merge."""
    seed_legacy(
        api,
        settings,
        [(1, "a@l.io", "1", None, "primary", 1, False), (2, "a@l.io", "2", None, "primary", 2, False)]
        + [(3, "b@l.io", "2", 2, "secondary", 3, False)],
    )
    identify(api, "a@l.io", None, "heal-two")
    assert shape(history(api, 1)["events"]) == [("merged", 1, [2, 3], 2, "heal-two")]


def test_the_repair_command_records_its_changes_under_its_run_id(api: Api, settings: dict[str, Any]) -> None:
    seed_legacy(
        api,
        settings,
        [(1, "a@l.io", "1", None, "primary", 1, False), (2, "b@l.io", "1", 1, "secondary", 2, False)]
        + [(3, "c@l.io", "2", 2, "secondary", 3, False), (4, "d@l.io", "9", None, "primary", 4, False)]
        + [(5, "d@l.io", "8", None, "primary", 5, False)],
    )
    result = create_app(settings).test_cli_runner().invoke(args=["repair"])
    assert result.exit_code == 0, result.output
    events = history_rows(settings)
    assert sorted((e["kind"], e["customerId"], e["contactIds"], e["formerCustomerId"]) for e in events) == [
        ("merged", 4, [5], 5),
        ("repaired", 1, [3], 2),
    ]
    run_ids = {event["requestId"] for event in events}
    assert len(run_ids) == 1 and run_ids.pop().startswith("run-")
    again = create_app(settings).test_cli_runner().invoke(args=["repair"])
    assert (
        again.exit_code == 0 and len(history_rows(settings)) == 2
    )  # nothing left to repair, nothing recorded
