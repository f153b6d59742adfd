"""The console under merge protection (docs/merge-protection.md), without a browser, both backends.

A blob written behind the service's back opens on a bounded, paged page; a big customer
within the limit is erased from the console (the confirmation carries a digest, not its
ids); refused links and customers past the limit are listed and paged; a value blocked
from the console is stored and applied by the API, here and on another app instance.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from fluxkart import create_app
from tests.console.test_console import SECRET_KEY, TOKEN, Console, assert_console_headers
from tests.harness.database import read_contacts, run_sql
from tests.harness.servers import LiveServer

CONSOLE_SETTINGS = {"FLUXKART_API_TOKEN": TOKEN, "FLUXKART_SECRET_KEY": SECRET_KEY}
CONSOLE = pytest.mark.parametrize("settings", [CONSOLE_SETTINGS], indirect=True)
# A small limit, so a few orders reach it.
SMALL_LIMIT = pytest.mark.parametrize(
    "settings", [{**CONSOLE_SETTINGS, "FLUXKART_MAX_CUSTOMER_IDENTIFIERS": "3"}], indirect=True
)
ROW = re.compile(r'<tr data-id="(\d+)">')
BLOB_PHONE = "4155550100"  # not blocked by default: a shop's own number typed in for customers
STAMP = "2021-03-04 05:06:07.000000"
SHOP_PHONE = {"kind": "phone", "form": "value", "text": "+14155550199"}  # canonical, as stored


def identify(console: Console, email: str | None, phone: str | None, base_url: str | None = None) -> Any:
    body = {key: value for key, value in (("email", email), ("phoneNumber", phone)) if value is not None}
    response = requests.post(
        (base_url or console.base_url) + "/identify",
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


def write_blob(settings: dict[str, Any], first_id: int, count: int, primary_id: int) -> None:
    """`count` rows sharing BLOB_PHONE, each with its own email, written by SQL as a service
    without merge protection would have left them: secondaries of one primary."""
    rows = [
        (
            row_id,
            f"blob{row_id}@example.com",
            BLOB_PHONE,
            None if row_id == primary_id else primary_id,
            "primary" if row_id == primary_id else "secondary",
            STAMP,
            STAMP,
        )
        for row_id in range(first_id, first_id + count)
    ]
    run_sql(
        settings,
        "INSERT INTO Contact (id, email, phoneNumber, linkedId, linkPrecedence, createdAt, updatedAt) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)",
        rows,
        many=True,
    )


@pytest.fixture
def console(server: LiveServer) -> Iterator[Console]:
    client = Console(server.url)
    yield client
    client.session.close()


def stored_rule(settings: dict[str, Any]) -> list[dict[str, Any]]:
    sql = "SELECT kind, form, text FROM BlockedValue WHERE text = %s"
    return run_sql(settings, sql, (SHOP_PHONE["text"],))


def rows_read(page: requests.Response) -> int:
    found = re.search(r'id="rows-read">(\d+)<', page.text)
    assert found is not None, "the page does not say it is partial"
    return int(found.group(1))


@CONSOLE
def test_a_blob_written_behind_the_services_back_opens_on_a_bounded_paged_page(
    console: Console, settings: dict[str, Any]
) -> None:
    assert console.get("/health/ready").status_code == 200  # the schema exists
    write_blob(settings, 1, 3000, primary_id=1)
    console.sign_in()

    first = console.get("/console/customers/1")
    assert first.status_code == 200
    assert 'id="partial"' in first.text
    page_ids = [int(i) for i in ROW.findall(first.text)]
    assert len(page_ids) == 50 and page_ids[0] == 1 and page_ids == sorted(page_ids)  # oldest first
    read = rows_read(first)
    # Past the limit (50 identifiers), read no further than one step's bound: Protection.max_rows
    # (4 x 50) + 1 rows per value or id looked for, at most four of them.
    assert 50 < read <= 4 * (4 * 50 + 1) + 1
    assert first.text.count('<g class="node') <= 51  # the graph draws the page's rows, not the blob
    assert len(first.content) < 200_000

    # Paging: the next page holds the next rows; the last page exists and is short or full.
    second = console.get("/console/customers/1?page=2")
    second_ids = [int(i) for i in ROW.findall(second.text)]
    assert len(second_ids) == 50 and min(second_ids) > max(page_ids)
    pages = -(-read // 50)
    last = console.get(f"/console/customers/1?page={pages}")
    assert 0 < len(ROW.findall(last.text)) <= 50
    assert 'id="next-rows"' in first.text and 'id="next-rows"' not in last.text

    # Bounded whatever the table holds: twice the blob, the same amount read and shown.
    write_blob(settings, 3001, 3000, primary_id=1)
    again = console.get("/console/customers/1")
    assert rows_read(again) == read
    assert len(ROW.findall(again.text)) == 50
    assert abs(len(again.content) - len(first.content)) < 2_000

    # Any row of it opens where it was asked (a part, never a redirect that could go round),
    # and a search by one of its emails finds it.
    middle = console.get("/console/customers/4500", allow_redirects=False)
    assert middle.status_code == 200 and 'id="partial"' in middle.text
    found = console.post("/console/search", {"kind": "email", "identifier": "blob4500@example.com"})
    assert found.status_code == 200 and 'id="partial"' in found.text

    # Listed for an operator, and not erasable until it is split (the erasure's own 409).
    listed = console.get("/console/past-limit")
    assert listed.status_code == 200
    assert ROW.findall(listed.text) == ["1"]
    assert re.search(r'<tr data-id="1">.*?<td>6000</td>', listed.text, re.S)
    refused = console.get("/console/customers/1/erase")
    assert refused.status_code == 409
    assert "more than 50 identifiers" in refused.text and "run repair to split it" in refused.text
    assert len(read_contacts(settings)) == 6000


@CONSOLE
def test_a_big_customer_within_the_limit_is_erased_from_the_console(
    console: Console, settings: dict[str, Any]
) -> None:
    for n in range(45):
        identify(console, f"person{n}@example.com", "+14155550177")
    assert len(read_contacts(settings)) == 45
    console.sign_in()
    page = console.get("/console/customers/1")
    assert page.status_code == 200 and 'id="partial"' not in page.text
    assert re.search(r'id="row-count">45<', page.text)
    preview = console.get("/console/customers/1/erase")
    assert preview.status_code == 200
    assert re.search(r'id="preview-contacts">45<', preview.text)
    assert "@example.com" not in preview.text  # the customer by its id and counts, no identifier
    fingerprint = re.search(r'name="fingerprint" value="([0-9a-f]{32})"', preview.text)
    assert fingerprint is not None
    form = {"fingerprint": fingerprint.group(1), "csrf_token": console.csrf}
    body = urlencode(form)  # what the browser posts
    assert len(body) < 200  # was every contact id: over the 64 KiB limit for a big customer
    done = console.post("/console/customers/1/erase", {"fingerprint": fingerprint.group(1)})
    assert done.status_code == 200, done.text
    assert "Customer 1 erased" in done.text and "Erased 45 contact rows" in done.text
    assert read_contacts(settings) == []


@SMALL_LIMIT
def test_refused_links_and_customers_past_the_limit_are_listed_and_paged(
    console: Console, settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("identity.console.OPERATOR_PAGE", 2)
    identify(console, "ann@example.com", "+14155550101")
    identify(console, "ann.work@example.com", "+14155550101")  # 3 identifiers: at the limit
    for n in range(3):  # each would take the customer past it: the phone is left out
        answer = identify(console, f"other{n}@example.com", "+14155550101")
        assert answer["ignored"] == [{"field": "phoneNumber", "reason": "limit"}]
    console.sign_in()
    newest = console.get("/console/refused")
    assert newest.status_code == 200
    assert_console_headers(newest)
    first_ids = ROW.findall(newest.text)
    assert len(first_ids) == 2 and first_ids == sorted(first_ids, key=int, reverse=True)
    assert "phone number (limit)" in newest.text
    assert 'href="/console/customers/1"' in newest.text  # the customer it would have joined
    assert "+14155550101" not in newest.text and "other0" not in newest.text  # ids and kinds only
    older_link = re.search(r'id="older" rel="next" href="([^"]+)"', newest.text)
    assert older_link is not None
    older = console.get(older_link.group(1).replace("&amp;", "&"))
    assert len(ROW.findall(older.text)) == 1 and 'id="older"' not in older.text

    # Customers past the limit: three written by SQL (4 identifiers each), paged 2 at a time.
    for primary in (100, 200, 300):
        run_sql(
            settings,
            "INSERT INTO Contact (id, email, phoneNumber, linkedId, linkPrecedence, createdAt, updatedAt) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [
                (primary, f"p{primary}@x.com", f"{primary}1", None, "primary", STAMP, STAMP),
                (primary + 1, f"q{primary}@x.com", f"{primary}2", primary, "secondary", STAMP, STAMP),
            ],
            many=True,
        )
    listed = console.get("/console/past-limit")
    assert_console_headers(listed)
    assert ROW.findall(listed.text) == ["100", "200"]  # the customer at the limit is not listed
    more = re.search(r'id="more" rel="next" href="([^"]+)"', listed.text)
    assert more is not None
    rest = console.get(more.group(1))
    assert ROW.findall(rest.text) == ["300"] and 'id="more"' not in rest.text


@CONSOLE
def test_a_value_blocked_from_the_console_is_stored_and_applied_by_the_api(
    console: Console, settings: dict[str, Any]
) -> None:
    identify(console, "kim@example.com", "+14155550199")
    identify(console, "lou@example.com", "+14155550199")  # joined by the shop's number
    # Another app on the same database (another worker or host), its block list read already.
    other = LiveServer(create_app(settings))
    try:
        identify(console, "kim@example.com", None, base_url=other.url)
        console.sign_in()
        listing = console.get("/console/blocked")
        assert listing.status_code == 200
        assert_console_headers(listing)
        assert "0123456789" in listing.text and "shipped" in listing.text  # the defaults are listed

        preview = console.post("/console/blocked/preview", {**SHOP_PHONE, "text": "+1 415 555 0199"})
        assert preview.status_code == 200
        assert ROW.findall(preview.text) == ["1"]  # the customer it joins
        assert re.search(r'<tr data-id="1">.*?<td>2</td>', preview.text, re.S)
        assert stored_rule(settings) == []

        added = console.post("/console/blocked/add", SHOP_PHONE)
        assert added.status_code == 200
        assert 'id="block-added"' in added.text and "flask --app fluxkart repair" in added.text
        assert stored_rule(settings) == [SHOP_PHONE]

        # This app applies it at once; the other within seconds (its list is re-read).
        answer = identify(console, "max@example.com", "+14155550199")
        assert answer["ignored"] == [{"field": "phoneNumber", "reason": "blocked"}]
        assert answer["contact"]["emails"] == ["max@example.com"]
        deadline = time.monotonic() + 30
        while True:
            answer = identify(console, f"new{time.monotonic_ns()}@example.com", "+14155550199", other.url)
            if answer.get("ignored") == [{"field": "phoneNumber", "reason": "blocked"}]:
                break
            assert time.monotonic() < deadline, "the other app never applied the block"
            time.sleep(0.2)

        # Removed again: the value links again.
        removed = console.post("/console/blocked/remove", SHOP_PHONE)
        assert removed.status_code == 200 and 'id="block-removed"' in removed.text
        assert stored_rule(settings) == []
        assert "ignored" not in identify(console, "zed@example.com", "+14155550199")

        # What is not a value or a pattern is refused, nothing stored.
        for form in [
            {"kind": "phone", "form": "value", "text": "call me"},
            {"kind": "email", "form": "pattern", "text": "(unclosed"},
            {"kind": "name", "form": "value", "text": "x"},
        ]:
            refused = console.post("/console/blocked/add", form)
            assert refused.status_code == 400 and 'id="block-error"' in refused.text
        count = run_sql(settings, "SELECT COUNT(*) AS n FROM BlockedValue")[0]["n"]
        assert count == 6  # the shipped defaults only
    finally:
        other.close()


@CONSOLE
def test_a_search_for_a_blocked_value_says_it_identifies_nobody(
    console: Console, settings: dict[str, Any]
) -> None:
    identify(console, "sam@example.com", "0000000000")
    console.sign_in()
    response = console.post("/console/search", {"kind": "phone", "identifier": "000 000 0000"})
    assert response.status_code == 422
    assert "blocked" in response.text
    found = console.post("/console/search", {"kind": "email", "identifier": "sam@example.com"})
    assert found.status_code == 200 and found.url.endswith("/console/customers/1")
