"""Merge protection through the API (SPEC, "Merge protection"), on both backends over real HTTP.

- Blocked values: the default list is ignored in identify (200, "ignored" with reason
  "blocked", nothing stored for it), refused when nothing else is left (422
  blocked_identifier, nothing written), after validation (400 stays 400), in the lookup and
  the /contacts filters too; a blocked value connects nothing; values a real customer may
  have are never blocked; a region does not unblock a repeated digit.
- Limits (FLUXKART_MAX_CUSTOMER_IDENTIFIERS = LIMIT here; the default 50 once): a request
  that would take a customer past the limit is applied without its phone ("ignored", reason
  "limit"; a `refused` event with kind and customer ids, never the value); a merge past the
  limit is refused; a few hundred orders sharing one phone, blocked or not, make no customer
  past the limit, every answer stays small, and the table passes tests/harness/checker.py
  with the blocked values and the limit.
- A blob written behind the service's back (BLOB_ROWS rows by SQL sharing one phone):
  identify, the lookup and the history answer it bounded ("partial"), nothing grows it,
  erasure is refused (409 customer_past_limit), and unrelated customers' requests are not
  slowed by requests for it (a latency ratio measured in the same test; no absolute timing).

Controls: the same orders with the limit at its maximum make one customer the checker flags
past the limit; the same blob within a raised limit slows unrelated customers past the
ratio the test allows.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from identity.protection import DEFAULT_BLOCKED, BlockList
from tests.harness.checker import check_answers, check_invariants, violation_kinds
from tests.harness.database import lock_customer, run_sql
from tests.harness.servers import Api, LiveServer

LIMIT = 5
TOKEN = "merge-protection-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMITED = pytest.mark.parametrize(
    "settings", [{"FLUXKART_MAX_CUSTOMER_IDENTIFIERS": str(LIMIT)}], indirect=True
)
# With a token: erasure is refused (403) on an open service.
LIMITED_WITH_TOKEN = pytest.mark.parametrize(
    "settings",
    [{"FLUXKART_MAX_CUSTOMER_IDENTIFIERS": str(LIMIT), "FLUXKART_API_TOKEN": TOKEN}],
    indirect=True,
)
DEFAULTS = BlockList(DEFAULT_BLOCKED)


def blocked(kind: str, value: str) -> bool:
    """The shipped defaults: what the service blocks in a new database."""
    return DEFAULTS.blocks(kind, value)


def post(api: Api, email: Any = None, phone: Any = None) -> requests.Response:
    return api.post("/identify", json={"email": email, "phoneNumber": phone})


def identify(api: Api, email: Any = None, phone: Any = None) -> dict[str, Any]:
    """POST /identify, asserting 200; the whole body (contact, and ignored or partial)."""
    response = post(api, email, phone)
    assert response.status_code == 200, response.text
    return dict(response.json())


def count(settings: dict[str, Any], table: str) -> int:
    return int(run_sql(settings, f"SELECT COUNT(*) AS n FROM {table}")[0]["n"])  # noqa: S608


def pairs(rows: list[dict[str, Any]]) -> list[tuple[Any, Any, Any]]:
    return [(row["email"], row["phoneNumber"], row["linkPrecedence"]) for row in rows]


def error_code(response: requests.Response) -> str:
    return str(response.json()["error"]["code"])


@pytest.fixture
def ready(api: Api) -> Api:
    """The app makes its schema (and seeds the default blocked values) on first use. The
    client sends the token (ignored when the service has none)."""
    api.session.headers.update(AUTH)
    assert api.get("/health/ready").status_code == 200
    return api


# --------------------------------------------------------------------------
# Blocked values
# --------------------------------------------------------------------------

# As sent; each is blocked once normalized.
BLOCKED_PHONES = [
    "0000000000",
    "0000000",  # seven digits
    "00000000000000000000",  # twenty
    9999999999,  # a JSON integer
    "999-999-9999",  # formatted
    "+1 111 111 1111",
    "1234567890",
    "0123456789",
]
BLOCKED_EMAILS = [
    "test@test.com",
    " TEST@Test.COM ",
    "none@none.com",
    "noreply@shop.example",
    "no-reply@mail.shop.example",
    "NoReply@Shop.Example",
]
# What a real customer may have: never blocked by default.
REAL_PHONES = ["123456", "717171", "919191", "999999", "1111112", "12345678901", "9876543210"]
REAL_EMAILS = ["test@test.co", "test@test.com.au", "mynoreply@x.io", "noreplyfan@x.io", "none@nonE.org"]


def test_the_default_list_blocks_the_specs_minimum_and_nothing_real() -> None:
    """The expectations below are the SPEC's, checked against the shipped list itself."""
    assert all(DEFAULTS.blocks("phone", str(p).replace("-", "").replace(" ", "")) for p in BLOCKED_PHONES)
    assert all(DEFAULTS.blocks("email", e.strip().lower()) for e in BLOCKED_EMAILS)
    assert not any(DEFAULTS.blocks("phone", p) for p in REAL_PHONES)
    assert not any(DEFAULTS.blocks("email", e.lower()) for e in REAL_EMAILS)


def test_a_blocked_phone_is_ignored_and_stored_nowhere(ready: Api, contacts: Any) -> None:
    for number, phone in enumerate(BLOCKED_PHONES):
        email = f"buyer{number}@x.io"
        body = identify(ready, email, phone)
        assert body["ignored"] == [{"field": "phoneNumber", "reason": "blocked"}], (phone, body)
        assert body["contact"]["emails"] == [email] and body["contact"]["phoneNumbers"] == [], (phone, body)
        assert "partial" not in body
    # Every order its own customer, none with a phone number.
    assert pairs(contacts()) == [(f"buyer{n}@x.io", None, "primary") for n in range(len(BLOCKED_PHONES))]


def test_a_blocked_email_is_ignored_and_stored_nowhere(ready: Api, contacts: Any) -> None:
    for number, email in enumerate(BLOCKED_EMAILS):
        phone = f"55501{number:02d}"
        body = identify(ready, email, phone)
        assert body["ignored"] == [{"field": "email", "reason": "blocked"}], (email, body)
        assert body["contact"]["emails"] == [] and body["contact"]["phoneNumbers"] == [phone], (email, body)
    assert pairs(contacts()) == [(None, f"55501{n:02d}", "primary") for n in range(len(BLOCKED_EMAILS))]


def test_values_a_real_customer_may_have_are_never_blocked(ready: Api, contacts: Any) -> None:
    for number, phone in enumerate(REAL_PHONES):
        body = identify(ready, None, phone)
        assert "ignored" not in body and body["contact"]["phoneNumbers"] == [phone], (phone, body)
        email = REAL_EMAILS[number % len(REAL_EMAILS)]
        body = identify(ready, email, phone)
        assert "ignored" not in body and email.lower() in body["contact"]["emails"], (email, body)
    rows = contacts()
    assert {row["email"] for row in rows} - {None} == {email.lower() for email in REAL_EMAILS}
    assert {row["phoneNumber"] for row in rows} == set(REAL_PHONES)


def test_only_blocked_identifiers_is_422_and_writes_nothing(ready: Api, settings: dict[str, Any]) -> None:
    before = {table: count(settings, table) for table in ("Contact", "ContactIdentifier", "CustomerHistory")}
    for body in (
        {"phoneNumber": "0000000000"},
        {"email": "test@test.com"},
        {"email": "noreply@shop.example", "phoneNumber": 1234567890},
        {"email": "none@none.com", "phoneNumber": ""},
    ):
        response = ready.post("/identify", json=body)
        assert response.status_code == 422, (body, response.text)
        assert error_code(response) == "blocked_identifier"
        assert response.json()["error"]["message"]
    after = {table: count(settings, table) for table in before}
    assert after == before == {"Contact": 0, "ContactIdentifier": 0, "CustomerHistory": 0}


def test_validation_comes_before_blocking(ready: Api) -> None:
    """An invalid value is a 400 even beside a blocked one: the client has a bug to fix."""
    for body in (
        {"email": "not-an-email", "phoneNumber": "0000000000"},
        {"email": "test@test.com", "phoneNumber": "12ab"},
        {"email": "test@test.com", "phoneNumber": -1},
        {"email": "test@test.com", "phoneNumber": "1" * 21},
        {"email": 5, "phoneNumber": "0000000000"},
    ):
        response = ready.post("/identify", json=body)
        assert response.status_code == 400, (body, response.text)
    for params in ({"phoneNumber": "12ab"}, {"email": "x", "phoneNumber": "0000000000"}):
        assert ready.get("/customers", params=params).status_code == 400, params
        assert ready.get("/contacts", params=params).status_code == 400, params


def test_the_lookup_and_the_contacts_filters_refuse_blocked_values(ready: Api) -> None:
    identify(ready, "lookup@x.io", "5550199")
    for params in ({"phoneNumber": "0000000000"}, {"email": "test@test.com"}, {"email": "no-reply@x.io"}):
        for path in ("/customers", "/contacts"):
            response = ready.get(path, params=params)
            assert response.status_code == 422, (path, params, response.text)
            assert error_code(response) == "blocked_identifier"
    response = ready.get("/customers", params={"email": "lookup@x.io", "phoneNumber": "000-000-0000"})
    assert response.status_code == 200, response.text
    assert response.json()["ignored"] == [{"field": "phoneNumber", "reason": "blocked"}]
    assert response.json()["contact"]["emails"] == ["lookup@x.io"]


def test_a_blocked_value_connects_nothing(ready: Api, contacts: Any) -> None:
    """Two orders sharing only 0000000000 are two customers; sharing 5550100 (control), one."""
    first, second = identify(ready, "one@x.io", "0000000000"), identify(ready, "two@x.io", "0000000000")
    assert first["contact"]["primaryContactId"] != second["contact"]["primaryContactId"]
    assert second["contact"]["emails"] == ["two@x.io"] and second["contact"]["secondaryContactIds"] == []
    # Control: the same two orders sharing a value that is not blocked make one customer.
    identify(ready, "three@x.io", "5550100")
    linked = identify(ready, "four@x.io", "5550100")["contact"]
    assert linked["emails"] == ["three@x.io", "four@x.io"]
    # The blocked value identifies nobody afterwards either.
    assert ready.get("/customers", params={"phoneNumber": "0000000000"}).status_code == 422
    assert pairs(contacts())[:2] == [("one@x.io", None, "primary"), ("two@x.io", None, "primary")]


@pytest.mark.parametrize("settings", [{"FLUXKART_PHONE_REGION": "IN"}], indirect=True)
def test_a_region_does_not_unblock_a_repeated_digit(ready: Api, contacts: Any) -> None:
    """With FLUXKART_PHONE_REGION=IN a valid-looking number is stored in E.164 form; a
    repeated digit is blocked in that form too, and a real number still links."""
    for number, phone in enumerate(
        ["9999999999", "+91 99999 99999", "099999 99999", "0000000000", "8888888"]
    ):
        body = identify(ready, f"in{number}@x.io", phone)
        assert body["ignored"] == [{"field": "phoneNumber", "reason": "blocked"}], (phone, body)
    assert all(row["phoneNumber"] is None for row in contacts())
    body = identify(ready, "real@x.io", "+91 98765 43210")
    assert "ignored" not in body and body["contact"]["phoneNumbers"] == ["+919876543210"]


# --------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------


def history(api: Api, customer_id: int) -> list[dict[str, Any]]:
    response = api.get(f"/customers/{customer_id}/history", headers=AUTH, params={"limit": 1000})
    assert response.status_code == 200, response.text
    return list(response.json()["events"])


def full_customer(api: Api) -> int:
    """A customer of exactly LIMIT identifiers (a@f.io, b@f.io, 5550201-3), its primary id."""
    identify(api, "a@f.io", "5550201")
    identify(api, "a@f.io", "5550202")
    identify(api, "b@f.io", "5550202")
    contact = identify(api, "b@f.io", "5550203")["contact"]
    assert len(contact["emails"]) + len(contact["phoneNumbers"]) == LIMIT
    return int(contact["primaryContactId"])


@LIMITED
def test_a_new_phone_past_the_limit_is_left_out(ready: Api, contacts: Any, settings: dict[str, Any]) -> None:
    primary = full_customer(ready)
    before = contacts()
    body = identify(ready, "a@f.io", "5550299")
    assert body["ignored"] == [{"field": "phoneNumber", "reason": "limit"}]
    assert body["contact"]["primaryContactId"] == primary
    assert "5550299" not in body["contact"]["phoneNumbers"]
    assert contacts() == before  # nothing written
    refused = [event for event in history(ready, primary) if event["kind"] == "refused"]
    assert len(refused) == 1, refused
    assert refused[0]["identifier"] == "phone" and refused[0]["reason"] == "limit"
    assert refused[0]["customerIds"] == []  # the phone belonged to nobody yet
    # Ids and kinds only, in the answer and in the table.
    assert "5550299" not in json.dumps(refused)
    stored = run_sql(settings, "SELECT detail, contactIds FROM CustomerHistory")
    assert "5550299" not in json.dumps(stored, default=str)


@LIMITED
def test_the_phone_goes_first_the_email_is_kept(ready: Api, contacts: Any) -> None:
    """A new email with the full customer's phone: applied without the phone, a new customer."""
    primary = full_customer(ready)
    body = identify(ready, "new@f.io", "5550201")
    assert body["ignored"] == [{"field": "phoneNumber", "reason": "limit"}]
    contact = body["contact"]
    assert contact["primaryContactId"] != primary
    assert contact["emails"] == ["new@f.io"] and contact["phoneNumbers"] == []
    assert ("new@f.io", None, "primary") in pairs(contacts())
    refused = [e for e in history(ready, contact["primaryContactId"]) if e["kind"] == "refused"]
    assert [(e["identifier"], e["customerIds"]) for e in refused] == [("phone", [primary])]
    # The full customer is as it was.
    assert len(identify(ready, "a@f.io")["contact"]["phoneNumbers"]) == 3


@LIMITED
def test_a_merge_past_the_limit_is_refused(ready: Api, contacts: Any) -> None:
    identify(ready, "x@m.io", "5550301")
    x = identify(ready, "x@m.io", "5550302")["contact"]["primaryContactId"]
    identify(ready, "y@m.io", "5550303")
    y = identify(ready, "y@m.io", "5550304")["contact"]["primaryContactId"]
    before = contacts()
    # Control: within the limit the same kind of request merges (one identifier each side).
    body = identify(ready, "x@m.io", "5550303")  # would hold x, y, 4 phones: 6 > 5
    assert body["ignored"] == [{"field": "phoneNumber", "reason": "limit"}]
    assert body["contact"]["primaryContactId"] == x
    assert body["contact"]["phoneNumbers"] == ["5550301", "5550302"]
    assert contacts() == before
    refused = [e for e in history(ready, x) if e["kind"] == "refused"]
    assert [(e["identifier"], e["customerIds"]) for e in refused] == [("phone", [y])]
    assert identify(ready, "y@m.io")["contact"]["primaryContactId"] == y


@LIMITED
def test_a_merge_within_the_limit_still_merges(ready: Api) -> None:
    """The control of the test above: 2 + 2 identifiers merge into 4 <= LIMIT."""
    x = identify(ready, "x@m.io", "5550301")["contact"]["primaryContactId"]
    identify(ready, "y@m.io", "5550303")
    body = identify(ready, "x@m.io", "5550303")
    assert "ignored" not in body
    assert body["contact"]["primaryContactId"] == x and body["contact"]["emails"] == ["x@m.io", "y@m.io"]


def test_the_default_limit_is_50(ready: Api, contacts: Any) -> None:
    for number in range(49):
        body = identify(ready, "big@d.io", f"55504{number:02d}")
        assert "ignored" not in body, (number, body)
    contact = body["contact"]
    assert len(contact["emails"]) + len(contact["phoneNumbers"]) == 50
    body = identify(ready, "big@d.io", "5550499")
    assert body["ignored"] == [{"field": "phoneNumber", "reason": "limit"}]
    assert len(contacts()) == 49


# --------------------------------------------------------------------------
# Blob prevention: a few hundred orders sharing one phone
# --------------------------------------------------------------------------

SHARED_ORDERS = 300
MAX_ANSWER_BYTES = 512  # an answer of LIMIT identifiers (and what it ignored) is well under this


def shared_orders(tag: str, phone: str, size: int = SHARED_ORDERS) -> list[tuple[str, str]]:
    return [(f"u{number}@{tag}.io", phone) for number in range(size)]


def send_all(api: Api, orders: list[tuple[str, str]]) -> list[tuple[dict[str, Any], requests.Response]]:
    sent = []
    for email, phone in orders:
        response = post(api, email, phone)
        assert response.status_code == 200, (email, phone, response.text)
        body = response.json()
        sent.append(({"email": email, "phoneNumber": phone, "ignored": body.get("ignored", [])}, response))
    return sent


@LIMITED
def test_orders_sharing_a_phone_make_no_customer_past_the_limit(ready: Api, contacts: Any) -> None:
    exchanges = send_all(
        ready, shared_orders("plain", "5550500") + shared_orders("placeholder", "0000000000")
    )
    sizes = [len(response.content) for _, response in exchanges]
    assert max(sizes) < MAX_ANSWER_BYTES, max(sizes)
    sent = [request for request, _ in exchanges]
    rows = contacts()
    violations = check_invariants(rows, sent, blocked, LIMIT)
    violations += check_answers(
        rows, [(request, response.json()["contact"]) for request, response in exchanges], blocked
    )
    assert not violations, "\n".join(violations[:20])
    # Where the rules put each identifier: the shared phone with the first LIMIT - 1 emails,
    # every later email its own customer; the placeholder nowhere, every email alone.
    ignored = [request["ignored"] for request in sent]
    plain, placeholder = ignored[:SHARED_ORDERS], ignored[SHARED_ORDERS:]
    assert plain[: LIMIT - 1] == [[]] * (LIMIT - 1)
    assert plain[LIMIT - 1 :] == [[{"field": "phoneNumber", "reason": "limit"}]] * (SHARED_ORDERS - LIMIT + 1)
    assert placeholder == [[{"field": "phoneNumber", "reason": "blocked"}]] * SHARED_ORDERS
    emails = {row["email"] for row in rows}
    assert emails == {email for email, _ in shared_orders("plain", "") + shared_orders("placeholder", "")}
    with_phone = [row for row in rows if row["phoneNumber"] is not None]
    assert [row["email"] for row in with_phone] == [f"u{n}@plain.io" for n in range(LIMIT - 1)]
    assert {row["phoneNumber"] for row in with_phone} == {"5550500"}
    assert len([row for row in rows if row["linkPrecedence"] == "primary"]) == 2 * SHARED_ORDERS - (LIMIT - 2)


CONTROL_ORDERS = 40


@pytest.mark.parametrize("settings", [{"FLUXKART_MAX_CUSTOMER_IDENTIFIERS": "10000"}], indirect=True)
def test_control_without_a_practical_limit_the_orders_make_a_blob(ready: Api, contacts: Any) -> None:
    """The test above can fail: with the limit out of reach the same orders join one customer,
    whose answers grow with it and which the checker flags past a limit of LIMIT."""
    exchanges = send_all(ready, shared_orders("plain", "5550500", CONTROL_ORDERS))
    sent = [request for request, _ in exchanges]
    assert all(not request["ignored"] for request in sent)
    kinds = violation_kinds(check_invariants(contacts(), sent, blocked, LIMIT))
    assert kinds == {"past-limit": 1}, kinds
    last = exchanges[-1][1]
    assert len(last.json()["contact"]["emails"]) == CONTROL_ORDERS
    assert len(last.content) > MAX_ANSWER_BYTES


# --------------------------------------------------------------------------
# A blob written behind the service's back
# --------------------------------------------------------------------------

BLOB_ROWS = 3000
BLOB_PHONE = "5550600"


def write_blob(settings: dict[str, Any]) -> int:
    """BLOB_ROWS rows sharing BLOB_PHONE, each its own email, all linked to the first; its id."""
    start = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=30)
    stamp = [(start + timedelta(seconds=n)).strftime("%Y-%m-%d %H:%M:%S.%f") for n in range(BLOB_ROWS)]
    run_sql(
        settings,
        "INSERT INTO Contact (email, phoneNumber, linkPrecedence, createdAt, updatedAt) "
        "VALUES (%s, %s, 'primary', %s, %s)",
        ("b0@blob.io", BLOB_PHONE, stamp[0], stamp[0]),
    )
    primary = int(run_sql(settings, "SELECT id FROM Contact WHERE email = %s", ("b0@blob.io",))[0]["id"])
    run_sql(
        settings,
        "INSERT INTO Contact (email, phoneNumber, linkedId, linkPrecedence, createdAt, updatedAt) "
        "VALUES (%s, %s, %s, 'secondary', %s, %s)",
        [(f"b{n}@blob.io", BLOB_PHONE, primary, stamp[n], stamp[n]) for n in range(1, BLOB_ROWS)],
        many=True,
    )
    return primary


def assert_bounded(body: dict[str, Any], size: int) -> None:
    contact = body["contact"]
    assert body.get("partial") is True, body
    assert len(contact["emails"]) + len(contact["phoneNumbers"]) <= LIMIT + 1, contact
    assert len(contact["secondaryContactIds"]) < LIMIT, contact
    assert size < MAX_ANSWER_BYTES, size


@LIMITED_WITH_TOKEN
def test_a_blob_is_answered_partially_and_never_grows(
    ready: Api, contacts: Any, settings: dict[str, Any]
) -> None:
    primary = write_blob(settings)
    before = contacts()
    for email, phone in (("b17@blob.io", None), (None, BLOB_PHONE), ("b17@blob.io", BLOB_PHONE)):
        response = post(ready, email, phone)
        assert response.status_code == 200, response.text
        assert_bounded(response.json(), len(response.content))
        assert response.json()["contact"]["primaryContactId"] == primary
    # A new identifier for it: left out, never linked.
    body = identify(ready, "b17@blob.io", "5550699")
    assert_bounded(body, 0)
    assert body["ignored"] == [{"field": "phoneNumber", "reason": "limit"}]
    # A new email with its phone: a new customer of that email alone.
    body = identify(ready, "stranger@x.io", BLOB_PHONE)
    assert body["ignored"] == [{"field": "phoneNumber", "reason": "limit"}]
    assert body["contact"]["emails"] == ["stranger@x.io"] and "partial" not in body
    after = contacts()
    assert after[: len(before)] == before  # the blob unchanged
    assert pairs(after[len(before) :]) == [("stranger@x.io", None, "primary")]
    # The lookup and the history stay bounded too.
    for params in ({"phoneNumber": BLOB_PHONE}, {"email": "b2999@blob.io"}):
        response = ready.get("/customers", params=params)
        assert response.status_code == 200, response.text
        assert_bounded(response.json(), len(response.content))
    response = ready.get(f"/customers/{primary}/history", headers=AUTH)
    assert response.status_code == 200, response.text
    assert len(response.content) < 50_000 and len(response.json()["events"]) <= 100
    # Erasure: one person's request must not erase thousands.
    for dry_run in ("true", "false"):
        response = ready.request(
            "DELETE", "/customers", params={"email": "b5@blob.io", "dryRun": dry_run}, headers=AUTH
        )
        assert response.status_code == 409, response.text
        assert error_code(response) == "customer_past_limit"
    assert contacts()[: len(before)] == before


def unrelated_latencies(url: str, tag: str, count_: int, statuses: list[int]) -> list[float]:
    """Seconds per request for `count_` unrelated orders (a new customer, then a link), one at
    a time (`tag` "a" or "b"); an answer other than 200 counts as never answered (inf), and its
    status is kept."""
    seconds = []
    with requests.Session() as session:
        for number in range(count_):
            # Every order writes: a new customer, then a new phone number for it.
            prefix = "5552" if tag == "a" else "5553"
            email, phone = f"{tag}{number // 2}@other.io", f"{prefix}{number // 2:03d}{number % 2}"
            started = time.perf_counter()
            response = session.post(
                url + "/identify", json={"email": email, "phoneNumber": phone}, timeout=120
            )
            statuses.append(response.status_code)
            ok = response.status_code == 200
            seconds.append(time.perf_counter() - started if ok else float("inf"))
    return seconds


def with_background(
    url: str, phone: str, tag: str, measure: Callable[[], list[float]], statuses: list[int]
) -> list[float]:
    """Run `measure` while two clients keep sending orders with `phone` (new emails each)."""
    stop = threading.Event()

    def client(number: int) -> None:
        with requests.Session() as session:
            sent = 0
            while not stop.is_set():
                email = f"{tag}{number}-{sent}@load.io"
                response = session.post(
                    url + "/identify", json={"email": email, "phoneNumber": phone}, timeout=120
                )
                statuses.append(response.status_code)
                sent += 1

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    try:
        return measure()
    finally:
        stop.set()
        for thread in threads:
            thread.join(130)


UNRELATED = 30
DELAY_RATIO = 3.0  # generous: the medians are about equal when the blob costs what a customer costs


def delay_ratio(
    url: str,
    settings: dict[str, Any],
    statuses: list[int],
    make_blob: Callable[[dict[str, Any]], int] = lambda settings: write_blob(settings),
) -> tuple[float, float, float]:
    """Unrelated orders' median latency while others order with a small customer's phone, then
    while they order with the blob's phone (written in between): (ratio, median without, with).
    Every status answered, to anyone, is appended to `statuses`."""
    identify(Api(url), "small@x.io", "5550700")
    without = with_background(
        url, "5550700", "s", lambda: unrelated_latencies(url, "a", UNRELATED, statuses), statuses
    )
    make_blob(settings)
    with_blob = with_background(
        url, BLOB_PHONE, "b", lambda: unrelated_latencies(url, "b", UNRELATED, statuses), statuses
    )
    before, after = statistics.median(without), statistics.median(with_blob)
    return after / before, before, after


@LIMITED
def test_a_blob_does_not_delay_other_customers(
    server: LiveServer, ready: Api, settings: dict[str, Any]
) -> None:
    statuses: list[int] = []
    ratio, before, after = delay_ratio(server.url, settings, statuses)
    assert set(statuses) == {200}, Counter(statuses)
    print(
        f"\nunrelated orders' median: {before * 1000:.1f} ms without the blob, {after * 1000:.1f} ms with it"
    )
    assert ratio < DELAY_RATIO, (
        f"unrelated orders {ratio:.1f}x slower beside the blob ({before:.4f}s -> {after:.4f}s)"
    )


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@LIMITED
def test_control_the_comparison_sees_a_customer_that_holds_the_writer(
    server: LiveServer, ready: Api, settings: dict[str, Any]
) -> None:
    """The test above can fail: when requests for one customer hold what every write needs
    (here, as the issue measured before merge protection: SQLite's one writer lock, held by
    the test in 100 ms transactions while the blob's orders run), the same comparison sees
    unrelated orders slowed past DELAY_RATIO (or answered 503, counted as never answered).

    A raised limit is no control: this service reads a customer before it takes SQLite's
    writer lock, so even a 3,000-row customer within the limit barely delays others there."""
    holding = threading.Event()
    holds: list[float] = []  # when each hold began: the control holds the writer, or it proves nothing

    def hold_the_writer() -> None:
        while not holding.is_set():
            try:
                conn = lock_customer(settings, 1)
            except sqlite3.OperationalError:  # the service held it past the connection's wait
                continue
            holds.append(time.monotonic())
            time.sleep(0.1)
            conn.rollback()
            conn.close()
            time.sleep(0.005)

    real_write_blob = write_blob
    holder = threading.Thread(target=hold_the_writer, daemon=True)

    def write_blob_and_hold(settings_: dict[str, Any]) -> int:
        primary = real_write_blob(settings_)
        holder.start()
        return primary

    statuses: list[int] = []
    try:
        ratio, before, after = delay_ratio(server.url, settings, statuses, write_blob_and_hold)
    finally:
        holding.set()
        holder.join(10)
    print(
        f"\ncontrol: {before * 1000:.1f} ms without the blob, {after * 1000:.1f} ms with it "
        f"and the writer held ({ratio:.1f}x); statuses {dict(Counter(statuses))}"
    )
    assert len(holds) > 5, f"the writer was held {len(holds)} times"
    assert ratio > DELAY_RATIO, f"only {ratio:.1f}x: the comparison could not see a delay"
