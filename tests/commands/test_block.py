"""`block add|remove|list` and `repair` splitting what a blocked value joined, on both backends,
through the real commands (Flask's CLI runner) and the API over real HTTP (SPEC, "Merge
protection": blocked values, "Evidence, and splitting"; "Commands").

The checker's invariants are judged with blocked values taken out of rows and requests
alike: a blocked value connects nothing, so it is no identifier of anyone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import pytest

from fluxkart import create_app
from tests.harness.checker import check_invariants
from tests.harness.database import read_contacts, run_sql
from tests.harness.legacy import Seed, seed_rows
from tests.harness.servers import Api

# A phone number shared by people who are not one person, not blocked by default.
SHARED = "5550000"


def command(settings: dict[str, Any], *args: str, exit_code: int = 0) -> str:
    """Run `flask --app fluxkart <args>` on the test's database; returns its output."""
    result = create_app(settings).test_cli_runner().invoke(args=list(args))
    assert result.exit_code == exit_code, result.output + repr(result.exception)
    return str(result.output)


def live(settings: dict[str, Any]) -> list[dict[str, Any]]:
    return [row for row in read_contacts(settings) if row["deletedAt"] is None]


def links(settings: dict[str, Any]) -> dict[int, int | None]:
    """{id: linkedId} of the live rows."""
    return {row["id"]: row["linkedId"] for row in live(settings)}


def without(blocked: set[str], pairs: Iterable[tuple[str | None, str | None]]) -> list[tuple[Any, Any]]:
    """(email, phone) pairs with the blocked values taken out."""
    return [(None if e in blocked else e, None if p in blocked else p) for e, p in pairs]


def unblocked_rows(settings: dict[str, Any], blocked: set[str]) -> list[dict[str, Any]]:
    """The live rows as the checker should see them: blocked values are nobody's identifiers."""
    return [
        {
            **row,
            "email": None if row["email"] in blocked else row["email"],
            "phoneNumber": None if row["phoneNumber"] in blocked else row["phoneNumber"],
        }
        for row in live(settings)
    ]


def split_events(settings: dict[str, Any]) -> list[dict[str, Any]]:
    rows = run_sql(
        settings,
        "SELECT customerId, formerCustomerId, contactIds, detail FROM CustomerHistory"
        " WHERE kind = 'split' ORDER BY customerId",
    )
    return [
        {**row, "contactIds": json.loads(row["contactIds"]), "detail": json.loads(row["detail"])}
        for row in rows
    ]


def summary(output: str, start: str) -> str:
    """The rest of the report line that starts with `start`."""
    return next(line for line in output.splitlines() if line.startswith(start))[len(start) :]


# --------------------------------------------------------------------------
# block add | remove | list
# --------------------------------------------------------------------------


def test_block_list_add_remove(api: Api, settings: dict[str, Any]) -> None:
    assert api.get("/health/ready").status_code == 200
    listed = command(settings, "block", "list")
    assert "phone pattern  (\\d)\\1{6,}  (shipped default)" in listed
    assert "email value    test@test.com  (shipped default)" in listed

    # A value is validated and normalized like an identifier; its kind from '@'.
    added = command(settings, "block", "add", " (555) 0000 ")
    assert f"blocked: phone {SHARED}" in added
    assert "rows carrying it: 0, in 0 customers" in added
    assert "blocked: email shop@store.example" in command(settings, "block", "add", "Shop@Store.Example")
    assert "already blocked" in command(settings, "block", "add", "555-0000")
    assert "email pattern .+@mailinator\\.com" in command(
        settings, "block", "add", "--pattern", r".+@mailinator\.com", "--kind", "email"
    )
    # Refusals: one line each, nothing stored.
    refusals = {
        ("block", "add", "a@@b"): "Error: refused: 'a@@b' is not a valid email",
        ("block", "add", "12ab"): "Error: refused: '12ab' is not a valid phone",
        ("block", "add", "--kind", "phone", "x@y.io"): "is not a valid phone",
        ("block", "add", "--pattern", "((", "--kind", "phone"): "Error: refused: not a regular expression",
        ("block", "add", "--pattern", "0+"): "Error: a pattern needs --kind email or --kind phone",
        ("block", "add"): "Error: give one VALUE or --pattern REGEX",
        ("block", "remove", "5559999"): "Error: nothing matched: phone 5559999 is not blocked",
    }
    before = command(settings, "block", "list")
    for args, message in refusals.items():
        output = command(settings, *args, exit_code=1)
        assert message in output, (args, output)
        assert len([line for line in output.splitlines() if line.startswith("Error")]) == 1
    assert command(settings, "block", "list") == before
    listed = command(settings, "block", "list")
    assert f"phone value    {SHARED}\n" in listed and "email pattern  .+@mailinator\\.com\n" in listed

    # The running service applies the change within seconds (its cache: BLOCKS_TTL_S).
    assert ignored_within(api, {"email": "ann@x.io", "phoneNumber": "555 0000"}) == [
        {"field": "phoneNumber", "reason": "blocked"}
    ]
    # A shipped default removed stays removed; the service matches it again.
    removed = command(settings, "block", "remove", "--kind", "email", "test@test.com")
    assert "removed: email test@test.com" in removed
    assert "test@test.com" not in command(settings, "block", "list")
    assert ignored_within(api, {"email": "test@test.com"}) is None


def ignored_within(api: Api, body: dict[str, Any], seconds: float = 15) -> Any:
    """The answer's "ignored" once the change applies (polled: not a timed assertion)."""
    deadline = time.monotonic() + seconds
    while True:
        answer = api.post("/identify", json=body)
        settled = answer.status_code == 200 and (("ignored" in answer.json()) == ("phoneNumber" in body))
        if settled or time.monotonic() > deadline:
            assert answer.status_code == 200, answer.text
            return answer.json().get("ignored")
        time.sleep(0.2)


def test_block_commands_report_database_problems_in_one_line(settings: dict[str, Any], backend: str) -> None:
    missing = dict(settings)
    if backend == "mysql":
        missing["MYSQL_PORT"] = "1"
    else:
        missing["FLUXKART_SQLITE_PATH"] = "/nonexistent/dir/fluxkart.db"
    for args in (("block", "list"), ("block", "add", "5551212"), ("block", "remove", "5551212")):
        output = command(missing, *args, exit_code=1)
        errors = [line for line in output.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and errors[0].startswith("Error: block stopped: "), output
        assert "Traceback" not in output


# --------------------------------------------------------------------------
# repair splits what a blocked value joined
# --------------------------------------------------------------------------

# Orders sent before SHARED was blocked: four people who typed the shop's number.
ORDERS = [
    ("a@x.io", SHARED),  # row 1
    ("a@x.io", "111"),  # row 2: a's own number
    ("b@x.io", SHARED),  # row 3: joined to a only by the shared number
    ("b@x.io", "222"),  # row 4
    ("c@x.io", "333"),  # row 5: a customer of its own ...
    ("c@x.io", SHARED),  # ... merged by the shared number (evidence: email row 5, phone row 1)
    ("e@x.io", "777"),  # row 6
    ("f@x.io", "888"),  # row 7
    ("e@x.io", "888"),  # e and f are one person: a merge whose evidence holds no blocked value
    ("e@x.io", SHARED),  # merged into the blob by the shared number
]


def test_customers_joined_only_by_a_blocked_phone_are_split(api: Api, settings: dict[str, Any]) -> None:
    for email, phone in ORDERS:
        api.identify(email, phone)
    assert set(links(settings).values()) == {None, 1}  # one customer of 7 rows
    before = read_contacts(settings)

    added = command(settings, "block", "add", SHARED)
    assert "rows carrying it: 2, in 1 customers" in added
    assert "customers it joins: 1; `flask --app fluxkart repair` will split them into 4 parts" in added
    assert "customer 1: 7 rows -> 4 parts" in added
    dry = command(settings, "repair", "--dry-run")
    assert read_contacts(settings) == before
    assert "would be split because a blocked value joined them: 1 into 4 parts (5 rows" in dry

    output = command(settings, "repair")
    assert "customers that were split because a blocked value joined them: 1 into 4 parts (5 rows" in output
    assert summary(output, "links kept without recorded evidence (data the service did not write): ") == "0"
    # Each part keeps its own oldest row as primary, every other row pointing straight at it.
    assert links(settings) == {1: None, 2: 1, 3: None, 4: 3, 5: None, 6: None, 7: 6}
    assert split_events(settings) == [
        {"customerId": 3, "formerCustomerId": 1, "contactIds": [3, 4], "detail": DETAIL},
        {"customerId": 5, "formerCustomerId": 1, "contactIds": [5], "detail": DETAIL},
        {"customerId": 6, "formerCustomerId": 1, "contactIds": [6, 7], "detail": DETAIL},
    ]
    violations = check_invariants(unblocked_rows(settings, {SHARED}), without({SHARED}, ORDERS))
    assert not violations, "\n".join(violations)
    # The API answers the parts; the shared number is ignored, matching nobody.
    part = api.post("/identify", json={"email": "b@x.io", "phoneNumber": SHARED}).json()
    assert part["contact"]["primaryContactId"] == 3 and part["contact"]["secondaryContactIds"] == [4]
    assert part["ignored"] == [{"field": "phoneNumber", "reason": "blocked"}]
    history = api.get("/customers/6/history").json()["events"]
    split = [event for event in history if event["kind"] == "split" and event["customerId"] == 6]
    assert split and split[0]["contactIds"] == [6, 7] and split[0]["identifier"] == "phone"

    after = read_contacts(settings)
    again = command(settings, "repair")
    assert "nothing to repair" in again, again
    assert read_contacts(settings) == after
    assert len(split_events(settings)) == 3


DETAIL = {"identifier": "phone"}


def test_a_link_without_evidence_is_kept_and_reported(api: Api, settings: dict[str, Any]) -> None:
    """Rows written by something else: row 3 shares nothing with its primary and no merge explains
    the link, so it stays; row 2 is joined only by the blocked value, so it leaves."""
    assert api.get("/health/ready").status_code == 200
    rows: list[Seed] = [
        (1, "x@x.io", "0000000000", None, "primary", 1, False),
        (2, "y@x.io", "0000000000", 1, "secondary", 2, False),
        (3, "z@x.io", "999", 1, "secondary", 3, False),
    ]
    seed_rows(settings, rows)
    output = command(settings, "repair")
    assert "customers that were split because a blocked value joined them: 1 into 2 parts (1 rows" in output
    assert (
        "links kept without recorded evidence (data the service did not write): 1\n  row 3 -> row 1\n"
        in output
    )
    assert links(settings) == {1: None, 2: None, 3: 1}
    assert [event["contactIds"] for event in split_events(settings)] == [[2]]
    again = command(settings, "repair")
    assert "nothing to repair" in again and "row 3 -> row 1" in again  # still reported, never changed
    assert links(settings) == {1: None, 2: None, 3: 1}


def test_a_blob_written_behind_the_services_back_is_split(api: Api, settings: dict[str, Any]) -> None:
    """300 rows sharing a default-blocked phone, each with its own email, linked as one customer
    (past the limit): repair splits it into 300 customers; a second repair changes nothing."""
    assert api.get("/health/ready").status_code == 200
    blob = 300
    run_sql(
        settings,
        "INSERT INTO Contact (id, email, phoneNumber, linkedId, linkPrecedence, createdAt, updatedAt)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        [
            (
                i,
                f"user{i}@x.io",
                "0000000000",
                None if i == 1 else 1,
                "primary" if i == 1 else "secondary",
                f"2024-01-01 00:{i // 60:02d}:{i % 60:02d}",
                f"2024-01-01 00:{i // 60:02d}:{i % 60:02d}",
            )
            for i in range(1, blob + 1)
        ],
        many=True,
    )
    partial = api.post("/identify", json={"email": "user5@x.io"}).json()
    assert partial.get("partial") is True  # past the limit: answered in part, never grown
    dry = command(settings, "repair", "--dry-run")
    assert "listed for an operator: 0" in dry  # it can be split, so it is not listed
    output = command(settings, "repair")
    assert f"split because a blocked value joined them: 1 into {blob} parts ({blob - 1} rows" in output
    assert set(links(settings).values()) == {None}
    assert len(split_events(settings)) == blob - 1
    requests = [(f"user{i}@x.io", "0000000000") for i in range(1, blob + 1)]
    violations = check_invariants(unblocked_rows(settings, {"0000000000"}), without({"0000000000"}, requests))
    assert not violations, "\n".join(violations[:5])
    answer = api.post("/identify", json={"email": "user5@x.io", "phoneNumber": "0000000000"}).json()
    assert answer["contact"]["primaryContactId"] == 5 and "partial" not in answer
    after = read_contacts(settings)
    assert "nothing to repair" in command(settings, "repair")
    assert read_contacts(settings) == after


@pytest.mark.parametrize("settings", [{"FLUXKART_MAX_CUSTOMER_IDENTIFIERS": "3"}], indirect=True)
def test_customers_past_the_limit_that_nothing_splits_are_listed(api: Api, settings: dict[str, Any]) -> None:
    """Five emails sharing a phone that is not blocked: one customer of 6 identifiers, past a
    limit of 3, which no blocked value joins: listed for an operator, left as it is."""
    assert api.get("/health/ready").status_code == 200
    seed_rows(
        settings,
        [
            (
                i,
                f"p{i}@x.io",
                "5551111",
                None if i == 1 else 1,
                "primary" if i == 1 else "secondary",
                i,
                False,
            )
            for i in range(1, 6)
        ],
    )
    before = read_contacts(settings)
    output = command(settings, "repair")
    assert (
        "customers past the limit (FLUXKART_MAX_CUSTOMER_IDENTIFIERS=3) that repair could not split"
        " (no blocked value joins them), listed for an operator: 1\n  customer 1: 6 identifiers, 5 rows\n"
    ) in output
    assert read_contacts(settings) == before
