"""The read endpoints (SPEC "Reads"): status and health, the contact rows, the customer lookup."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from tests.harness.database import run_sql
from tests.harness.servers import Api

LORRAINE = "lorraine@hillvalley.edu"
MCFLY = "mcfly@hillvalley.edu"
GEORGE = "george@hillvalley.edu"
BIFF = "biffsucks@hillvalley.edu"
COLUMNS = ["id", "phoneNumber", "email", "linkedId", "linkPrecedence", "createdAt", "updatedAt", "deletedAt"]
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")


def ids(response: requests.Response) -> list[int]:
    """The ids of a 200 page of contacts."""
    assert response.status_code == 200, response.text
    return [row["id"] for row in response.json()]


def next_path(response: requests.Response) -> str | None:
    """The path of the Link rel="next" target, or None on the last page."""
    link = response.links.get("next")
    if link is None:
        assert "Link" not in response.headers, response.headers["Link"]
        return None
    url = urlsplit(urljoin(response.url, link["url"]))
    return f"{url.path}?{url.query}"


def seed(
    settings: dict[str, Any], rows: list[tuple[str | None, str | None]], deleted: frozenset[int] = frozenset()
) -> None:
    """Insert primary rows (email, phone) straight into the database, one microsecond apart.

    Much faster than identify for the thousand rows paging needs; row i (1-based) is
    soft-deleted when i is in `deleted`.
    """
    start = datetime(2024, 1, 1)
    params = []
    for number, (email, phone) in enumerate(rows, start=1):
        created = (start + timedelta(microseconds=number)).strftime("%Y-%m-%d %H:%M:%S.%f")
        params.append((email, phone, created, created, created if number in deleted else None))
    sql = (
        "INSERT INTO Contact (email, phoneNumber, linkPrecedence, createdAt, updatedAt, deletedAt)"
        " VALUES (%s, %s, 'primary', %s, %s, %s)"
    )
    run_sql(settings, sql, params, many=True)


@pytest.fixture
def many(api: Api, settings: dict[str, Any]) -> int:
    """1005 stored contacts (ids 1..1005): more than the largest page."""
    assert api.get("/health/ready").status_code == 200  # the app creates the schema
    seed(settings, [(f"c{n}@x.io", str(n)) for n in range(1, 1006)])
    return 1005


@pytest.fixture
def family(api: Api) -> dict[str, Any]:
    """Lorraine and McFly (one customer, phone 123456) and George (another): their identify answer."""
    api.identify(LORRAINE, "123456")
    answer = api.identify(MCFLY, "123456")
    api.identify(GEORGE, "919191")
    return answer


# --------------------------------------------------------------------------
# Status and health
# --------------------------------------------------------------------------


def test_status(api: Api) -> None:
    """GET / says the service is up, in a sentence a person can read."""
    response = api.get("/")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert isinstance(body["message"], str) and body["message"]


@pytest.mark.parametrize("path", ["/health/live", "/health/ready"])
def test_health(api: Api, path: str, backend: str) -> None:
    """Liveness, and readiness with the database up: 200 JSON saying so (readiness names the backend)."""
    response = api.get(path)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    expected = {"status": "ok"}
    if path == "/health/ready":
        expected["database"] = backend
    assert response.json() == expected


# --------------------------------------------------------------------------
# GET /contacts
# --------------------------------------------------------------------------


def test_contact_rows(api: Api, contacts: Any, family: dict[str, Any]) -> None:
    """Every column of every live row, ordered by id, timestamps ISO 8601 UTC with a Z."""
    response = api.get("/contacts")
    assert response.status_code == 200
    listed = response.json()
    stored = contacts()
    assert [list(row) for row in listed] == [COLUMNS] * 3
    assert [row["id"] for row in listed] == [1, 2, 3]
    for row, db_row in zip(listed, stored, strict=True):
        for column in ("id", "phoneNumber", "email", "linkedId", "linkPrecedence", "deletedAt"):
            assert row[column] == db_row[column]
        for column in ("createdAt", "updatedAt"):
            assert ISO_UTC.match(row[column]), row[column]
            db_value = db_row[column]
            if isinstance(db_value, str):  # SQLite keeps the text form
                db_value = datetime.fromisoformat(db_value)
            assert datetime.fromisoformat(row[column]) == db_value.replace(tzinfo=UTC)
        # UTC, not the host's local time: the row was written moments ago.
        age = datetime.now(UTC) - datetime.fromisoformat(row["createdAt"])
        assert timedelta(0) <= age < timedelta(minutes=5)
    assert listed[1]["linkedId"] == 1 and listed[1]["linkPrecedence"] == "secondary"


def test_no_contacts(api: Api) -> None:
    """An empty table is an empty page without a next link."""
    response = api.get("/contacts")
    assert response.json() == []
    assert next_path(response) is None


def test_default_limit_is_100(api: Api, many: int) -> None:
    """Without ?limit a page holds the first 100 rows, and a next link follows."""
    response = api.get("/contacts")
    assert ids(response) == list(range(1, 101))
    assert next_path(response) is not None


def test_limit_up_to_1000(api: Api, many: int) -> None:
    """?limit takes 1 to 1000 (above is a 400, see test_errors)."""
    assert ids(api.get("/contacts?limit=1000")) == list(range(1, 1001))
    assert ids(api.get("/contacts?limit=1")) == [1]
    assert api.get("/contacts?limit=1001").status_code == 400


def test_after_cursor(api: Api, many: int) -> None:
    """?after=<id> starts after that id, whatever ids exist."""
    assert ids(api.get("/contacts?after=100&limit=5")) == [101, 102, 103, 104, 105]
    assert ids(api.get("/contacts?after=0&limit=2")) == [1, 2]
    assert ids(api.get("/contacts?after=1005")) == []
    assert ids(api.get("/contacts?after=99999")) == []


@pytest.mark.parametrize(
    ("query", "expected_ids"),
    [
        ("?after=1000", [1001, 1002, 1003, 1004, 1005]),
        ("?after=1000&limit=5", [1001, 1002, 1003, 1004, 1005]),
    ],
    ids=["short last page", "last page exactly full"],
)
def test_last_page_has_no_next_link(api: Api, many: int, query: str, expected_ids: list[int]) -> None:
    """No Link rel="next" when no row follows, even when the last page is exactly full."""
    response = api.get("/contacts" + query)
    assert ids(response) == expected_ids
    assert next_path(response) is None


def test_next_link_is_the_following_page(api: Api, many: int) -> None:
    """The Link header names the same limit and the last id of this page as the cursor."""
    response = api.get("/contacts?limit=10&after=20")
    assert response.headers["Link"].endswith('; rel="next"')
    assert ids(api.get(next_path(response) or "")) == list(range(31, 41))


@pytest.mark.parametrize("limit", [100, 333, 1000])
def test_following_links_walks_every_row_once(api: Api, many: int, limit: int) -> None:
    """From the first page, following rel="next" visits every row exactly once, in id order."""
    seen: list[int] = []
    path: str | None = f"/contacts?limit={limit}"
    pages = 0
    while path is not None:
        response = api.get(path)
        page = ids(response)
        assert 0 < len(page) <= limit
        seen += page
        pages += 1
        path = next_path(response)
    assert seen == list(range(1, many + 1))
    assert pages == -(-many // limit)


def test_links_keep_the_filters(api: Api, settings: dict[str, Any]) -> None:
    """Paging a filtered list stays filtered: 10 matching rows among 40, 3 per page."""
    assert api.get("/health/ready").status_code == 200
    seed(settings, [(f"c{n}@x.io", "42" if n % 4 == 0 else str(n)) for n in range(1, 41)])
    seen: list[int] = []
    path: str | None = "/contacts?phoneNumber=4-2&limit=3"
    while path is not None:
        response = api.get(path)
        seen += ids(response)
        path = next_path(response)
    assert seen == list(range(4, 41, 4))


def test_deleted_rows_are_not_listed(api: Api, settings: dict[str, Any]) -> None:
    """A row with deletedAt set is not in the list, nor found by id or by filter."""
    assert api.get("/health/ready").status_code == 200
    seed(settings, [(LORRAINE, "1"), (MCFLY, "2"), (GEORGE, "3")], deleted=frozenset({2}))
    assert ids(api.get("/contacts")) == [1, 3]
    assert api.get("/contacts/2").status_code == 404
    assert ids(api.get("/contacts", params={"email": MCFLY})) == []
    assert api.get("/customers", params={"email": MCFLY}).status_code == 404


FILTERS = {  # query parameters -> ids (rows: 1 lorraine/123456, 2 mcfly/123456, 3 george/919191)
    "email": ({"email": MCFLY}, [2]),
    "email, trimmed and any case": ({"email": " MCFLY@HillValley.edu "}, [2]),
    "phone": ({"phoneNumber": "123456"}, [1, 2]),
    "phone with formatting": ({"phoneNumber": "12-34-56"}, [1, 2]),
    "phone with spaces and brackets": ({"phoneNumber": " (919) 191 "}, [3]),
    "both, same row": ({"email": LORRAINE, "phoneNumber": "123456"}, [1]),
    "both, different rows": ({"email": MCFLY, "phoneNumber": "919191"}, []),
    "unknown email": ({"email": BIFF}, []),
    "blank email is no filter": ({"email": " "}, [1, 2, 3]),
}


@pytest.mark.usefixtures("family")
@pytest.mark.parametrize(("params", "expected_ids"), FILTERS.values(), ids=FILTERS.keys())
def test_filters_are_normalized(api: Api, params: dict[str, str], expected_ids: list[int]) -> None:
    """The email and phoneNumber filters are normalized like identify's input, and combine with AND."""
    assert ids(api.get("/contacts", params=params)) == expected_ids


# --------------------------------------------------------------------------
# GET /contacts/<id>
# --------------------------------------------------------------------------


@pytest.mark.usefixtures("family")
def test_one_contact(api: Api) -> None:
    """Each row by id is the same object the list shows; an id past the end is a 404."""
    listed = api.get("/contacts").json()
    assert [row["id"] for row in listed] == [1, 2, 3]  # the family's rows: the loop below checks each
    for row in listed:
        response = api.get(f"/contacts/{row['id']}")
        assert response.status_code == 200
        assert response.json() == row
    response = api.get("/contacts/4")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


# --------------------------------------------------------------------------
# GET /customers: the read-only lookup
# --------------------------------------------------------------------------

LOOKUPS = {  # query parameters that find the Lorraine/McFly customer
    "primary's email": {"email": LORRAINE},
    "secondary's email": {"email": MCFLY},
    "email in another spelling": {"email": "  McFly@HILLVALLEY.edu"},
    "phone": {"phoneNumber": "123456"},
    "phone with formatting": {"phoneNumber": "(12) 34-56"},
    "email and phone": {"email": MCFLY, "phoneNumber": "123456"},
    "known email, unknown phone": {"email": LORRAINE, "phoneNumber": "777"},
}


@pytest.mark.parametrize("params", LOOKUPS.values(), ids=LOOKUPS.keys())
def test_lookup_answers_the_identify_shape(
    api: Api, contacts: Any, family: dict[str, Any], params: dict[str, str]
) -> None:
    """The lookup answers exactly what identify answered for the customer, and writes nothing."""
    before = contacts()
    response = api.get("/customers", params=params)
    assert response.status_code == 200, response.text
    assert response.json() == {"contact": family}
    assert contacts() == before


@pytest.mark.parametrize(
    "params",
    [{"email": BIFF}, {"phoneNumber": "717171"}, {"email": BIFF, "phoneNumber": "717171"}],
    ids=["unknown email", "unknown phone", "both unknown"],
)
def test_lookup_of_an_unknown_customer(
    api: Api, contacts: Any, family: dict[str, Any], params: dict[str, str]
) -> None:
    """404 in the error shape, and the unknown identifiers are not stored."""
    before = contacts()
    response = api.get("/customers", params=params)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert contacts() == before


@pytest.mark.usefixtures("family")
@pytest.mark.parametrize(
    "params", [{}, {"email": ""}, {"email": " ", "phoneNumber": ""}], ids=["none", "empty", "blank"]
)
def test_lookup_needs_an_identifier(api: Api, params: dict[str, str]) -> None:
    """No identifier after normalization: 400, as for identify."""
    response = api.get("/customers", params=params)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "missing_identifier"


def test_lookup_of_two_customers_is_a_conflict(api: Api, contacts: Any, family: dict[str, Any]) -> None:
    """An email and a phone of different customers: 409 naming both, and no merge (identify's job)."""
    before = contacts()
    response = api.get("/customers", params={"email": LORRAINE, "phoneNumber": "919191"})
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "several_customers"
    # Names both primaries by id: whole numbers in the message, not digits inside other numbers.
    assert {1, 3} <= {int(number) for number in re.findall(r"\d+", error["message"])}, error["message"]
    assert contacts() == before


def test_lookup_of_rows_without_a_primary_answers_the_whole_customer(
    api: Api, settings: dict[str, Any], contacts: Any
) -> None:
    """Rows written behind the service's back (a chain to a missing row) are answered as identify would
    repair them (SPEC, "Data the service did not write"), and the lookup writes nothing."""
    assert api.get("/health/ready").status_code == 200  # the app creates the schema
    created = "2024-01-01 00:00:00.000001"
    run_sql(
        settings,
        "INSERT INTO Contact (id, email, phoneNumber, linkedId, linkPrecedence, createdAt, updatedAt)"
        " VALUES (%s, %s, %s, %s, 'secondary', %s, %s)",
        [(7, "chain@x.io", "70", 8, created, created), (8, "link@x.io", "80", 9, created, created)],
        many=True,
    )
    before = contacts()
    for params in ({"email": "chain@x.io"}, {"phoneNumber": "80"}):
        response = api.get("/customers", params=params)
        assert response.status_code == 200, response.text
        assert response.json()["contact"] == {
            "primaryContactId": 7,
            "primaryContatctId": 7,
            "emails": ["chain@x.io", "link@x.io"],
            "phoneNumbers": ["70", "80"],
            "secondaryContactIds": [8],
        }
    assert contacts() == before


def test_lookup_after_a_merge(api: Api, contacts: Any) -> None:
    """After identify merged two customers, the lookup by either side's identifiers finds the survivor."""
    api.identify(GEORGE, "919191")
    api.identify(BIFF, "717171")
    merged = api.identify(GEORGE, "717171")
    before = contacts()
    for params in ({"email": BIFF}, {"phoneNumber": "919191"}, {"email": GEORGE, "phoneNumber": "717171"}):
        assert api.get("/customers", params=params).json() == {"contact": merged}
    assert contacts() == before
