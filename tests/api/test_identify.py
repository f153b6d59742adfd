"""POST /identify, rule by rule (SPEC "POST /identify"), on both backends.

Each case sends its requests in order to an empty database and checks the answer and
the whole Contact table as (id, email, phoneNumber, linkedId, linkPrecedence). Ids count
from 1 in each fresh database and requests are sent one at a time, so "oldest" is also
"smallest id" here; the tests that need the two to differ write rows straight into the
database with chosen createdAt values.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.harness.database import run_sql
from tests.harness.servers import Api

Request = tuple[str | int | None, str | int | None]  # (email, phoneNumber) as sent
Row = tuple[int, str | None, str | None, int | None, str]  # id, email, phone, linkedId, precedence

LORRAINE = "lorraine@hillvalley.edu"
MCFLY = "mcfly@hillvalley.edu"
GEORGE = "george@hillvalley.edu"
BIFF = "biffsucks@hillvalley.edu"
DOC = "doc@hillvalley.edu"
A, B, C, D = "a@x.io", "b@x.io", "c@x.io", "d@x.io"


def answer(primary: int, emails: list[str], phones: list[str], secondaries: list[int]) -> dict[str, Any]:
    """The "contact" object of an identify answer, with both spellings of the primary's id."""
    return {
        "primaryContactId": primary,
        "primaryContatctId": primary,
        "emails": emails,
        "phoneNumbers": phones,
        "secondaryContactIds": secondaries,
    }


def primary(id: int, email: str | None, phone: str | None) -> Row:
    """A primary row as the table helper reduces it."""
    return (id, email, phone, None, "primary")


def secondary(id: int, email: str | None, phone: str | None, linked_id: int) -> Row:
    """A secondary row linked to `linked_id`, as the table helper reduces it."""
    return (id, email, phone, linked_id, "secondary")


def table(rows: list[dict[str, Any]]) -> list[Row]:
    """The Contact table reduced to what the identify rules decide."""
    return [(r["id"], r["email"], r["phoneNumber"], r["linkedId"], r["linkPrecedence"]) for r in rows]


def assert_invariants(rows: list[dict[str, Any]]) -> None:
    """SPEC: every secondary points straight at a primary, and each primary is its cluster's oldest row."""
    by_id = {row["id"]: row for row in rows if row["deletedAt"] is None}
    for row in by_id.values():
        if row["linkPrecedence"] == "primary":
            assert row["linkedId"] is None, row
            continue
        head = by_id[row["linkedId"]]
        assert head["linkPrecedence"] == "primary", f"chain: {row['id']} -> {head['id']}"
        assert (head["createdAt"], head["id"]) < (row["createdAt"], row["id"]), (head, row)


# --------------------------------------------------------------------------
# Requests in, the last answer and the final table out
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    requests: list[Request]
    answer: dict[str, Any]
    table: list[Row] = field(default_factory=list)


CASES: dict[str, Case] = {
    # Rule 1: nothing matches -> a new primary with the request's identifiers.
    "new customer, email and phone": Case(
        [(LORRAINE, "123456")],
        answer(1, [LORRAINE], ["123456"], []),
        [primary(1, LORRAINE, "123456")],
    ),
    "new customer, email only": Case(
        [(LORRAINE, None)],
        answer(1, [LORRAINE], [], []),
        [primary(1, LORRAINE, None)],
    ),
    "new customer, phone only": Case(
        [(None, "123456")],
        answer(1, [], ["123456"], []),
        [primary(1, None, "123456")],
    ),
    "unrelated customers stay apart": Case(
        [(LORRAINE, "1"), (GEORGE, "2")],
        answer(2, [GEORGE], ["2"], []),
        [primary(1, LORRAINE, "1"), primary(2, GEORGE, "2")],
    ),
    "a phone-only order for an unknown phone is a new customer": Case(
        [(LORRAINE, "1"), (None, "2")],
        answer(2, [], ["2"], []),
        [primary(1, LORRAINE, "1"), primary(2, None, "2")],
    ),
    # Rule 3: a new identifier on a known customer -> one secondary linked to the primary.
    "new email on a known phone (SPEC example 1)": Case(
        [(LORRAINE, "123456"), (MCFLY, "123456")],
        answer(1, [LORRAINE, MCFLY], ["123456"], [2]),
        [primary(1, LORRAINE, "123456"), secondary(2, MCFLY, "123456", 1)],
    ),
    "new phone on a known email": Case(
        [(LORRAINE, "1"), (LORRAINE, "2")],
        answer(1, [LORRAINE], ["1", "2"], [2]),
        [primary(1, LORRAINE, "1"), secondary(2, LORRAINE, "2", 1)],
    ),
    "new phone on a customer known by email only": Case(
        [(LORRAINE, None), (LORRAINE, "1")],
        answer(1, [LORRAINE], ["1"], [2]),
        [primary(1, LORRAINE, None), secondary(2, LORRAINE, "1", 1)],
    ),
    "new email on a customer known by phone only": Case(
        [(None, "1"), (LORRAINE, "1")],
        answer(1, [LORRAINE], ["1"], [2]),
        [primary(1, None, "1"), secondary(2, LORRAINE, "1", 1)],
    ),
    "new phone on an email that only a secondary carries": Case(
        [(LORRAINE, "1"), (MCFLY, "1"), (MCFLY, "2")],
        answer(1, [LORRAINE, MCFLY], ["1", "2"], [2, 3]),
        [primary(1, LORRAINE, "1"), secondary(2, MCFLY, "1", 1), secondary(3, MCFLY, "2", 1)],
    ),
    # Rule 3: every identifier known -> nothing is written.
    "repeating a request is idempotent": Case(
        [(LORRAINE, "1"), (LORRAINE, "1"), (LORRAINE, "1")],
        answer(1, [LORRAINE], ["1"], []),
        [primary(1, LORRAINE, "1")],
    ),
    "email only, on a known customer": Case(
        [(LORRAINE, "1"), (LORRAINE, None)],
        answer(1, [LORRAINE], ["1"], []),
        [primary(1, LORRAINE, "1")],
    ),
    "phone only, on a known customer": Case(
        [(LORRAINE, "1"), (None, "1")],
        answer(1, [LORRAINE], ["1"], []),
        [primary(1, LORRAINE, "1")],
    ),
    "a secondary's email alone": Case(
        [(LORRAINE, "1"), (MCFLY, "1"), (MCFLY, None)],
        answer(1, [LORRAINE, MCFLY], ["1"], [2]),
        [primary(1, LORRAINE, "1"), secondary(2, MCFLY, "1", 1)],
    ),
    "known email and known phone from different rows of one customer": Case(
        [(LORRAINE, "1"), (MCFLY, "1"), (MCFLY, "2"), (LORRAINE, "2")],
        answer(1, [LORRAINE, MCFLY], ["1", "2"], [2, 3]),
        [primary(1, LORRAINE, "1"), secondary(2, MCFLY, "1", 1), secondary(3, MCFLY, "2", 1)],
    ),
    # Rule 2: two customers meet -> the older primary stays, the newer becomes its secondary.
    "two primaries merge, the older stays (SPEC example 2)": Case(
        [(GEORGE, "919191"), (BIFF, "717171"), (GEORGE, "717171")],
        answer(1, [GEORGE, BIFF], ["919191", "717171"], [2]),
        [primary(1, GEORGE, "919191"), secondary(2, BIFF, "717171", 1)],
    ),
    "two primaries merge from the newer one's email": Case(
        [(GEORGE, "919191"), (BIFF, "717171"), (BIFF, "919191")],
        answer(1, [GEORGE, BIFF], ["919191", "717171"], [2]),
        [primary(1, GEORGE, "919191"), secondary(2, BIFF, "717171", 1)],
    ),
    "a phone-only customer and an email-only customer merge": Case(
        [(None, "1"), (LORRAINE, None), (LORRAINE, "1")],
        answer(1, [LORRAINE], ["1"], [2]),
        [primary(1, None, "1"), secondary(2, LORRAINE, None, 1)],
    ),
    "the newer primary's secondaries are re-pointed, no chains": Case(
        [(GEORGE, "1"), (BIFF, "2"), (MCFLY, "2"), (LORRAINE, "2"), (GEORGE, "2")],
        answer(1, [GEORGE, BIFF, MCFLY, LORRAINE], ["1", "2"], [2, 3, 4]),
        [
            primary(1, GEORGE, "1"),
            secondary(2, BIFF, "2", 1),
            secondary(3, MCFLY, "2", 1),
            secondary(4, LORRAINE, "2", 1),
        ],
    ),
    "both customers have secondaries": Case(
        [(GEORGE, "1"), (DOC, "1"), (BIFF, "2"), (MCFLY, "2"), (DOC, "2")],
        answer(1, [GEORGE, DOC, BIFF, MCFLY], ["1", "2"], [2, 3, 4]),
        [
            primary(1, GEORGE, "1"),
            secondary(2, DOC, "1", 1),
            secondary(3, BIFF, "2", 1),
            secondary(4, MCFLY, "2", 1),
        ],
    ),
    "customers meet through a secondary on each side": Case(
        [(GEORGE, "1"), (DOC, "1"), (BIFF, "2"), (BIFF, "6"), (DOC, "6")],
        answer(1, [GEORGE, DOC, BIFF], ["1", "2", "6"], [2, 3, 4]),
        [
            primary(1, GEORGE, "1"),
            secondary(2, DOC, "1", 1),
            secondary(3, BIFF, "2", 1),
            secondary(4, BIFF, "6", 1),
        ],
    ),
    "new information after a merge links to the survivor": Case(
        [(GEORGE, "1"), (BIFF, "2"), (GEORGE, "2"), (MCFLY, "2")],
        answer(1, [GEORGE, BIFF, MCFLY], ["1", "2"], [2, 3]),
        [primary(1, GEORGE, "1"), secondary(2, BIFF, "2", 1), secondary(3, MCFLY, "2", 1)],
    ),
    # Chains of merges: whatever the order, the oldest primary wins and nothing chains.
    "three customers, the newer pair merged first": Case(
        [(A, "1"), (B, "2"), (C, "3"), (B, "3"), (A, "2")],
        answer(1, [A, B, C], ["1", "2", "3"], [2, 3]),
        [primary(1, A, "1"), secondary(2, B, "2", 1), secondary(3, C, "3", 1)],
    ),
    "three customers, the older pair merged first": Case(
        [(A, "1"), (B, "2"), (C, "3"), (A, "2"), (C, "2")],
        answer(1, [A, B, C], ["1", "2", "3"], [2, 3]),
        [primary(1, A, "1"), secondary(2, B, "2", 1), secondary(3, C, "3", 1)],
    ),
    "three customers, the middle one absorbs the newest, then is absorbed": Case(
        [(A, "1"), (B, "2"), (C, "3"), (C, "2"), (A, "3")],
        answer(1, [A, B, C], ["1", "2", "3"], [2, 3]),
        [primary(1, A, "1"), secondary(2, B, "2", 1), secondary(3, C, "3", 1)],
    ),
    "four customers merged newest first": Case(
        [(A, "1"), (B, "2"), (C, "3"), (D, "4"), (D, "3"), (C, "2"), (B, "1")],
        answer(1, [A, B, C, D], ["1", "2", "3", "4"], [2, 3, 4]),
        [primary(1, A, "1"), secondary(2, B, "2", 1), secondary(3, C, "3", 1), secondary(4, D, "4", 1)],
    ),
    "four customers merged in pairs, then the pairs": Case(
        [(A, "1"), (B, "2"), (C, "3"), (D, "4"), (A, "2"), (C, "4"), (B, "4")],
        answer(1, [A, B, C, D], ["1", "2", "3", "4"], [2, 3, 4]),
        [primary(1, A, "1"), secondary(2, B, "2", 1), secondary(3, C, "3", 1), secondary(4, D, "4", 1)],
    ),
    "four customers, the newest reaches the oldest directly": Case(
        [(A, "1"), (B, "2"), (C, "3"), (D, "4"), (B, "3"), (D, "1"), (C, "4")],
        answer(1, [A, B, C, D], ["1", "2", "3", "4"], [2, 3, 4]),
        [primary(1, A, "1"), secondary(2, B, "2", 1), secondary(3, C, "3", 1), secondary(4, D, "4", 1)],
    ),
    # Rule 4: answer order (primary's values first, then by row age, distinct).
    "merged lists follow row age, not customer": Case(
        [(GEORGE, "1"), (BIFF, "2"), (DOC, "1"), (GEORGE, "2")],
        answer(1, [GEORGE, BIFF, DOC], ["1", "2"], [2, 3]),
        [primary(1, GEORGE, "1"), secondary(2, BIFF, "2", 1), secondary(3, DOC, "1", 1)],
    ),
    "values are listed once": Case(
        [(LORRAINE, "1"), (MCFLY, "1"), (LORRAINE, "2"), (MCFLY, "2")],
        answer(1, [LORRAINE, MCFLY], ["1", "2"], [2, 3]),
        [primary(1, LORRAINE, "1"), secondary(2, MCFLY, "1", 1), secondary(3, LORRAINE, "2", 1)],
    ),
    "a primary without an email lists its secondaries' emails by age": Case(
        [(None, "1"), (MCFLY, "1"), (LORRAINE, "1")],
        answer(1, [MCFLY, LORRAINE], ["1"], [2, 3]),
        [primary(1, None, "1"), secondary(2, MCFLY, "1", 1), secondary(3, LORRAINE, "1", 1)],
    ),
    # A phone sent as a JSON number is the same identifier as its digits in a string.
    "phone as a JSON number equals the same digits as a string": Case(
        [(LORRAINE, 123456), (MCFLY, "123456"), (None, 123456)],
        answer(1, [LORRAINE, MCFLY], ["123456"], [2]),
        [primary(1, LORRAINE, "123456"), secondary(2, MCFLY, "123456", 1)],
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_identify(api: Api, contacts: Any, case: Case) -> None:
    """The last answer and the final table are what the SPEC's rules produce."""
    for email, phone in case.requests:
        last = api.identify(email, phone)
    assert last == case.answer
    rows = contacts()
    assert table(rows) == case.table
    assert_invariants(rows)


# --------------------------------------------------------------------------
# Every answer along the way
# --------------------------------------------------------------------------

LORRAINE_ANSWER = answer(1, [LORRAINE, MCFLY], ["123456"], [2])

STEPS: dict[str, list[tuple[Request, dict[str, Any]]]] = {
    # SPEC example 1: once both rows exist, any of the customer's identifiers answers the same.
    "lorraine and mcfly": [
        ((LORRAINE, "123456"), answer(1, [LORRAINE], ["123456"], [])),
        ((MCFLY, "123456"), LORRAINE_ANSWER),
        ((MCFLY, "123456"), LORRAINE_ANSWER),
        ((None, "123456"), LORRAINE_ANSWER),
        ((LORRAINE, None), LORRAINE_ANSWER),
        ((MCFLY, None), LORRAINE_ANSWER),
        ((LORRAINE, "123456"), LORRAINE_ANSWER),
    ],
    # SPEC example 2: two customers, then the order that joins them.
    "george and biff": [
        ((GEORGE, "919191"), answer(1, [GEORGE], ["919191"], [])),
        ((BIFF, "717171"), answer(2, [BIFF], ["717171"], [])),
        ((GEORGE, "717171"), answer(1, [GEORGE, BIFF], ["919191", "717171"], [2])),
        ((BIFF, None), answer(1, [GEORGE, BIFF], ["919191", "717171"], [2])),
        ((None, "717171"), answer(1, [GEORGE, BIFF], ["919191", "717171"], [2])),
    ],
    # Three customers folded into the oldest, one merge at a time.
    "a chain of merges": [
        ((A, "1"), answer(1, [A], ["1"], [])),
        ((B, "2"), answer(2, [B], ["2"], [])),
        ((C, "3"), answer(3, [C], ["3"], [])),
        ((C, "2"), answer(2, [B, C], ["2", "3"], [3])),
        ((B, "1"), answer(1, [A, B, C], ["1", "2", "3"], [2, 3])),
        ((C, None), answer(1, [A, B, C], ["1", "2", "3"], [2, 3])),
    ],
}


@pytest.mark.parametrize("steps", STEPS.values(), ids=STEPS.keys())
def test_every_answer(api: Api, contacts: Any, steps: list[tuple[Request, dict[str, Any]]]) -> None:
    """Each request of a sequence gets the answer the SPEC gives at that point."""
    for (email, phone), expected in steps:
        assert api.identify(email, phone) == expected, (email, phone)
    assert_invariants(contacts())


def test_answer_shape(api: Api) -> None:
    """The answer is {"contact": {...}} with exactly the SPEC's five keys; both id spellings agree."""
    response = api.post("/identify", json={"email": LORRAINE, "phoneNumber": "123456"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["contact"]
    contact = body["contact"]
    assert set(contact) == {
        "primaryContactId",
        "primaryContatctId",
        "emails",
        "phoneNumbers",
        "secondaryContactIds",
    }
    assert contact["primaryContactId"] == contact["primaryContatctId"] == 1


def test_unknown_keys_are_ignored(api: Api, contacts: Any) -> None:
    """SPEC: unknown keys in the body are ignored."""
    response = api.post(
        "/identify", json={"email": LORRAINE, "phoneNumber": "1", "name": "Lorraine", "id": 99}
    )
    assert response.status_code == 200
    assert response.json()["contact"] == answer(1, [LORRAINE], ["1"], [])
    assert table(contacts()) == [primary(1, LORRAINE, "1")]


# --------------------------------------------------------------------------
# Timestamps
# --------------------------------------------------------------------------


def test_updated_at_changes_on_demoted_and_repointed_rows(api: Api, contacts: Any) -> None:
    """A merge sets updatedAt on the demoted primary and its re-pointed rows, and on nothing else."""
    for email, phone in [(GEORGE, "1"), (DOC, "1"), (BIFF, "2"), (MCFLY, "2")]:
        api.identify(email, phone)
    before = {row["id"]: row for row in contacts()}
    time.sleep(0.01)
    api.identify(GEORGE, "2")  # customer 3 (rows 3 and 4) folds into customer 1
    after = {row["id"]: row for row in contacts()}

    for id in (1, 2):  # the survivor's rows are untouched
        assert after[id] == before[id]
    for id in (3, 4):
        assert after[id]["updatedAt"] > before[id]["updatedAt"]
        assert after[id]["createdAt"] == before[id]["createdAt"]
        assert after[id]["linkedId"] == 1
    assert after[3]["updatedAt"] == after[4]["updatedAt"]  # one merge, one moment


def test_new_rows_have_created_equal_updated(api: Api, contacts: Any) -> None:
    """A row that was never changed has updatedAt = createdAt, for primaries and secondaries."""
    api.identify(LORRAINE, "1")
    api.identify(MCFLY, "1")
    rows = contacts()
    assert [row["linkPrecedence"] for row in rows] == ["primary", "secondary"]
    for row in rows:
        assert row["updatedAt"] == row["createdAt"]


# --------------------------------------------------------------------------
# Rows written straight into the database: "oldest" and deletedAt
# --------------------------------------------------------------------------


def stamp(moment: datetime) -> str:
    """A timestamp as both schemas store it: UTC, microseconds."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def insert_row(
    settings: dict[str, Any],
    row: Row,
    created: datetime,
    deleted: datetime | None = None,
) -> None:
    """Write one Contact row with chosen timestamps, as if another host or an old import made it."""
    id, email, phone, linked_id, precedence = row
    run_sql(
        settings,
        "INSERT INTO Contact"
        " (id, email, phoneNumber, linkedId, linkPrecedence, createdAt, updatedAt, deletedAt)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (id, email, phone, linked_id, precedence, stamp(created), stamp(created), deleted and stamp(deleted)),
    )


@pytest.fixture
def db_ready(api: Api) -> None:
    """The app creates its schema on first connection; the readiness probe makes one."""
    assert api.get("/health/ready").status_code == 200


NOW = datetime.now(UTC).replace(tzinfo=None)


@pytest.mark.usefixtures("db_ready")
def test_oldest_means_created_at_not_id(api: Api, contacts: Any, settings: dict[str, Any]) -> None:
    """SPEC: "oldest" is the smallest (createdAt, id), never id alone.

    Row 1 has the larger id's createdAt: it is the newest customer, so it is the one demoted,
    and the answer lists values and secondaries by createdAt.
    """
    hour = timedelta(hours=1)
    insert_row(settings, primary(1, A, "1"), NOW - 1 * hour)
    insert_row(settings, primary(2, B, "2"), NOW - 3 * hour)
    insert_row(settings, secondary(3, C, "2", 2), NOW - 2 * hour)

    assert api.identify(A, "2") == answer(2, [B, C, A], ["2", "1"], [3, 1])
    assert table(contacts()) == [secondary(1, A, "1", 2), primary(2, B, "2"), secondary(3, C, "2", 2)]


@pytest.mark.usefixtures("db_ready")
def test_equal_created_at_falls_back_to_id(api: Api, contacts: Any, settings: dict[str, Any]) -> None:
    """Two primaries created in the same microsecond: the smaller id is the older."""
    insert_row(settings, primary(1, A, "1"), NOW)
    insert_row(settings, primary(2, B, "2"), NOW)
    assert api.identify(B, "1") == answer(1, [A, B], ["1", "2"], [2])
    assert table(contacts()) == [primary(1, A, "1"), secondary(2, B, "2", 1)]


@pytest.mark.usefixtures("db_ready")
def test_new_secondary_is_never_older_than_its_primary(
    api: Api, contacts: Any, settings: dict[str, Any]
) -> None:
    """A primary stamped in the future (another host's clock ran ahead): its new secondary is still newer."""
    insert_row(settings, primary(1, LORRAINE, "1"), NOW + timedelta(hours=1))
    assert api.identify(MCFLY, "1") == answer(1, [LORRAINE, MCFLY], ["1"], [2])
    rows = contacts()
    assert table(rows) == [primary(1, LORRAINE, "1"), secondary(2, MCFLY, "1", 1)]
    assert rows[1]["createdAt"] > rows[0]["createdAt"]
    assert_invariants(rows)


def test_secondaries_are_created_after_their_primary(api: Api, contacts: Any) -> None:
    """In ordinary use too, every secondary's createdAt is at or after its primary's."""
    for email, phone in [(A, "1"), (B, "1"), (C, "2"), (C, "1"), (D, "2")]:
        api.identify(email, phone)
    rows = contacts()
    created = {row["id"]: row["createdAt"] for row in rows}
    secondaries = [row for row in rows if row["linkPrecedence"] == "secondary"]
    assert len(secondaries) == 3
    for row in secondaries:
        assert row["createdAt"] >= created[row["linkedId"]]


@pytest.mark.usefixtures("db_ready")
def test_deleted_rows_are_ignored(api: Api, contacts: Any, settings: dict[str, Any]) -> None:
    """SPEC: a row with deletedAt set is ignored everywhere: it matches nothing and is never listed."""
    hour = timedelta(hours=1)
    insert_row(settings, primary(1, LORRAINE, "1"), NOW - 2 * hour, deleted=NOW - hour)
    insert_row(settings, primary(2, GEORGE, "2"), NOW - 2 * hour)
    insert_row(settings, secondary(3, BIFF, "2", 2), NOW - 2 * hour, deleted=NOW - hour)

    # Lorraine's only row is deleted: she is a new customer.
    assert api.identify(LORRAINE, "1") == answer(4, [LORRAINE], ["1"], [])
    # George's deleted secondary is not listed, and Biff's email is unknown again.
    assert api.identify(GEORGE, None) == answer(2, [GEORGE], ["2"], [])
    assert api.identify(BIFF, "2") == answer(2, [GEORGE, BIFF], ["2"], [5])
    assert table(contacts()) == [
        primary(1, LORRAINE, "1"),
        primary(2, GEORGE, "2"),
        secondary(3, BIFF, "2", 2),
        primary(4, LORRAINE, "1"),
        secondary(5, BIFF, "2", 2),
    ]
