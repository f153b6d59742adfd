"""Erased means gone on SQLite (SPEC, "History and erasure"; issue 22; identity/scrub.py).

After an erasure, through the API or the console, no byte of the erased emails and phone
numbers remains in the SQLite database file or its WAL. 2,000 customers written in random
order, a quarter of them erased: enough page splits and merges that SQLite leaves stale
copies of moved cells in the unused gap of pages, which secure_delete does not reach. The
kept customers' identifiers are found by the same search, so the search can see.
Controls: before this (no checkpoint) every erased identifier was still in the WAL; with
secure_delete and a WAL checkpoint but no VACUUM, 3 of the 1,000 erased identifiers stayed
on disk (stale copies in leaf pages; REINDEX too left one, in a Contact leaf).
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest

from tests.console.test_console import SECRET_KEY, TOKEN, Console
from tests.harness.servers import LiveServer

SETTINGS = pytest.mark.parametrize(
    "settings", [{"FLUXKART_API_TOKEN": TOKEN, "FLUXKART_SECRET_KEY": SECRET_KEY}], indirect=True
)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CUSTOMERS = 2000


def customers(count: int) -> list[tuple[str, str]]:
    """(email, phone) of `count` customers, in random order: unique emails, 12-digit phones."""
    rng = random.Random(22)
    found: list[tuple[str, str]] = []
    while len(found) < count:
        phone = f"9{rng.randrange(10**10, 10**11)}"
        if re.search(r"(\d)\1{5,}", phone):  # nothing near a blocked placeholder
            continue
        email = f"customer-{len(found):04d}-{rng.randrange(10**12)}@erasure.example"
        found.append((email, phone))
    rng.shuffle(found)
    return found


def stored_bytes(settings: dict[str, Any]) -> bytes:
    """The database file and its WAL, as they are on disk now."""
    path = Path(settings["FLUXKART_SQLITE_PATH"])
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


@pytest.mark.parametrize("backend", ["sqlite"])
@SETTINGS
def test_no_byte_of_an_erased_customer_stays_in_the_file_or_wal(
    app: Any, server: LiveServer, settings: dict[str, Any]
) -> None:
    client = app.test_client()  # in-process for the 4,500 calls: the same app the server runs
    people = customers(CUSTOMERS)
    for email, phone in people:
        # Two rows per customer (a phone first, then both): more rows, and a link.
        for body in ({"phoneNumber": phone}, {"email": email, "phoneNumber": phone}):
            assert client.post("/identify", json=body, headers=AUTH).status_code == 200
    erased, kept = people[::4], [person for number, person in enumerate(people) if number % 4]
    for email, _ in erased[:-1]:
        response = client.delete("/customers", query_string={"email": email}, headers=AUTH)
        assert response.status_code == 200 and response.json["contacts"] == 2, response.text
    # The last one through the console, as support staff would.
    console = Console(server.url)
    console.sign_in()
    found = console.post("/console/search", {"kind": "email", "identifier": erased[-1][0]})
    primary_id = int(found.url.rsplit("/", 1)[-1])
    preview = console.get(f"/console/customers/{primary_id}/erase")
    fingerprint = re.search(r'name="fingerprint" value="([0-9a-f]{32})"', preview.text)
    assert fingerprint is not None
    done = console.post(f"/console/customers/{primary_id}/erase", {"fingerprint": fingerprint.group(1)})
    assert done.status_code == 200, done.text

    on_disk = stored_bytes(settings)
    left = [value for pair in erased for value in pair if value.encode() in on_disk]
    assert left == [], f"{len(left)} erased identifiers still on disk, e.g. {left[:3]}"
    assert all(email.encode() in on_disk and phone.encode() in on_disk for email, phone in kept)
